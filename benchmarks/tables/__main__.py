"""`python -m benchmarks.tables RUN_DIR DEST`: copy a recorded learning-curve table out of its run
directory (trials.parquet, epochs.parquet, experiment.yaml, plus meta.json and README.md), and
print its figures. See `benchmarks/tables/__init__.py`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.tables import README_FILE, TableError, copy_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tables", description=__doc__)
    p.add_argument("run_dir", type=Path, help="the recording's run directory, e.g. runs/NAME")
    p.add_argument("dest", type=Path, help="the table's folder, e.g. benchmarks/tables/NAME")
    p.add_argument(
        "--description",
        help="what the images are, for the table's README (e.g. where they come from)",
    )
    p.add_argument(
        "--command",
        help="the command that recorded it, for the README (default: rebuilt from the run)",
    )
    args = p.parse_args(argv)
    try:
        copy_table(args.run_dir, args.dest, description=args.description, command=args.command)
    except TableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((args.dest / README_FILE).read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
