"""Performance benchmarks. Each module measures hpsearch against a named baseline in one run
and prints the ratio; `python -m benchmarks` (make bench) runs them all."""
