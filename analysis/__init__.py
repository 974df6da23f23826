"""Analysis of a run directory: Parquet tables in, DataFrames and figures out."""
