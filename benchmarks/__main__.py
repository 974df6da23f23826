"""Run every benchmark module (`bench_*.py`) in this folder, one after another.

`python -m benchmarks` runs them at full size; `python -m benchmarks --smoke` at tiny sizes
(what the test suite does so that none rots); `python -m benchmarks NAME...` runs a subset;
`python -m benchmarks NAME -- OPTIONS` passes options to one (`-- --help` lists them).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time

import benchmarks


def available() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {available()})")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes: checks the benchmark runs, measures nothing",
    )
    argv = sys.argv[1:] if argv is None else argv
    passed = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    names = args.names or available()
    if passed and len(names) != 1:
        p.error("options after -- go to one benchmark: name exactly one")
    unknown = sorted(set(names) - set(available()))
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; available: {available()}")
    for name in names:
        print(f"=== {name}", flush=True)
        t0 = time.perf_counter()
        mod = importlib.import_module(f"benchmarks.{name}")
        mod.main((["--smoke"] if args.smoke else []) + passed)
        print(f"=== {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
