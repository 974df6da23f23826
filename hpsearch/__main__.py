"""`python -m hpsearch ...`: the same as the `hpsearch` command."""

from hpsearch.search.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
