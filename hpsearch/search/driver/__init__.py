"""The driver's side of a search: Ray's lifecycle (`session`), Tune's set-up (`tune_setup`,
`searcher`, `grid_sampler`), running, resuming and chaining searches (`tuner`, `resume`,
`study`), k-fold, final, the Parquet export, validation and the demo. Imports every room below
it; only the CLI imports it."""
