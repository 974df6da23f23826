"""Search efficiency, replayed on recorded learning curves: how many epochs each strategy spends
to first reach random search's best, over random search's epochs for that, with hundreds of
seeds (`benchmarks/replay.py`: hpsearch's own searcher and Ray Tune's own schedulers against
tables of curves recorded once, on a simulated clock; nothing trains).

What is compared, on each table (`benchmarks/tables/*`, or `--table DIR`):
- `random`: random search without early stopping, `--trials` trials (default 12), the baseline;
- every other strategy is allowed 3 times as many trials (early stopping exists to spend the
  epochs it saves on more configurations), as `bench_efficiency` does with real training.
The count, per seed: random search's best validation score is the bar; each side's epochs are
taken in the order they finished on the simulated clock (W workers), and the epochs spent until
one first reached the bar are counted (a side that never does counts all it spent, and is
flagged). The ratio pools the seeds: a strategy's total over random's total, with a 95 %
percentile bootstrap interval over the seeds. Regret: the table's best recorded score minus
the best a side found, at the end of its budget (mean over seeds).

Run: `python -m benchmarks bench_replay` (the headline: hpsearch's default against random search
at W = 4, 200 seeds, on the shipped tables), `-- --full` (every strategy, W in 1, 4, 16, 50
seeds; writes the comparison table and the anytime plot), `-- --table RUN_DIR` for a table of
your own, `--smoke` (tiny: checks it runs).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks._common import header
from benchmarks.replay import (
    Replay,
    Strategy,
    Table,
    anytime,
    pooled_ratio,
    ratio_interval,
    replay,
    seed_counts,
)

TABLES = Path(__file__).parent / "tables"
TARGET = 1 / 3
RANDOM = Strategy("random", sampler="random", scheduler="none", trials_factor=1)
# hpsearch's default (the schema's search and scheduler defaults) comes first.
DEFAULT = Strategy("TPE+ASHA (default)", sampler="tpe", scheduler="asha", grace=1, reduction=3)
STRATEGIES = [
    DEFAULT,
    Strategy("TPE", sampler="tpe", scheduler="none"),
    Strategy("TPE+ASHA g1 r2", grace=1, reduction=2),
    Strategy("TPE+ASHA g2 r2", grace=2, reduction=2),
    Strategy("TPE+ASHA g2 r3", grace=2, reduction=3),
    Strategy("TPE+ASHA g1 r4", grace=1, reduction=4),
    Strategy("TPE+Hyperband", grace=1, reduction=3, brackets=3),
    Strategy("TPE(5 startup)+ASHA", startup=5),
    Strategy("TPE(20 startup)+ASHA", startup=20),
    Strategy("TPE univariate+ASHA", sampler="tpe-univariate"),
    Strategy("GP", sampler="gp", scheduler="none"),
    Strategy("GP+ASHA", sampler="gp"),
    Strategy("random+ASHA", sampler="random", scheduler="asha"),
]
BY_NAME = {s.name: s for s in [RANDOM, *STRATEGIES]}

_TABLES: dict[str, Table] = {}


def _table(path: str) -> Table:
    if path not in _TABLES:
        _TABLES[path] = Table.load(path)
    return _TABLES[path]


def _one(job: tuple[str, str, int, int, int]) -> Replay:
    path, name, seed, workers, trials = job
    if BY_NAME[name].sampler == "gp":
        # lazy: only the GP sampler computes with torch; one thread per process, as many
        # processes as cores (its default of every core per process oversubscribes them)
        import torch

        torch.set_num_threads(1)
    rep, _ = replay(_table(path), BY_NAME[name], seed=seed, workers=workers, trials=trials)
    rep.trials = [({}, n) for _, n in rep.trials]  # (what crosses the process boundary)
    return rep


def run_jobs(jobs: Sequence[tuple], processes: int) -> list[Replay]:
    if processes <= 1:
        return [_one(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=processes) as pool:
        return list(pool.map(_one, jobs, chunksize=4))


def compare(
    path: str,
    strategies: Sequence[Strategy],
    *,
    workers: int,
    seeds: int,
    trials: int,
    processes: int,
) -> tuple[dict[str, dict], dict[str, list[Replay]]]:
    """Each strategy against random search on one table at W workers: its ratio, interval,
    seeds that reached the bar, regret; and the replays (for the anytime curves)."""
    names = [RANDOM.name, *(s.name for s in strategies)]
    jobs = [
        (path, name, seed, workers, trials * BY_NAME[name].trials_factor)
        for name in names
        for seed in range(seeds)
    ]
    reps = run_jobs(jobs, processes)
    by = {name: reps[i * seeds : (i + 1) * seeds] for i, name in enumerate(names)}
    table = _table(path)
    best = table.best()
    rows = {}
    for s in strategies:
        counts = [
            seed_counts(b, o, table.mode) for b, o in zip(by[RANDOM.name], by[s.name], strict=True)
        ]
        ratio = pooled_ratio(counts)
        lo, hi = ratio_interval(counts)
        regrets = [abs(best - r.best(table.mode)) for r in by[s.name]]
        rows[s.name] = {
            "ratio": ratio,
            "ci": (lo, hi),
            "reached": sum(c["reached"] for c in counts),
            "seeds": seeds,
            "epochs": float(np.mean([len(r.scores) for r in by[s.name]])),
            "regret": float(np.mean(regrets)),
            "regret_ci": float(1.96 * np.std(regrets, ddof=1) / np.sqrt(len(regrets))),
        }
    base_regrets = [abs(best - r.best(table.mode)) for r in by[RANDOM.name]]
    rows[RANDOM.name] = {
        "ratio": 1.0,
        "ci": (1.0, 1.0),
        "reached": seeds,
        "seeds": seeds,
        "epochs": float(np.mean([len(r.scores) for r in by[RANDOM.name]])),
        "regret": float(np.mean(base_regrets)),
        "regret_ci": float(1.96 * np.std(base_regrets, ddof=1) / np.sqrt(len(base_regrets))),
    }
    return rows, by


def format_row(name: str, row: dict) -> str:
    lo, hi = row["ci"]
    return (
        f"{name:<24} ratio {row['ratio']:.2f} (95 % CI {lo:.2f}-{hi:.2f}), reached the bar in "
        f"{row['reached']}/{row['seeds']} seeds, {row['epochs']:.0f} epochs spent, regret "
        f"{row['regret']:.4f} ± {row['regret_ci']:.4f}"
    )


def plot(curves: dict[str, dict[str, list[Replay]]], out: Path, *, workers: int) -> None:
    """Best score so far against epochs spent (top) and against the simulated clock with
    `workers` workers (bottom), per table: mean and 95 % band over the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(curves), figsize=(6.5 * len(curves), 8.4), squeeze=False)
    for col, (path, by) in enumerate(curves.items()):
        mode = _table(path).mode
        longest = max(len(r.scores) for reps in by.values() for r in reps)
        latest = max(r.times[-1] for reps in by.values() for r in reps if r.times)
        axes_grids = (
            (axes[0][col], np.arange(1, longest + 1), "epochs", "epochs spent"),
            (axes[1][col], np.linspace(0, latest, 200), "time", "simulated seconds"),
        )
        for ax, grid, by_what, label in axes_grids:
            for name, reps in by.items():
                mean, lo, hi = anytime(reps, grid, by=by_what, mode=mode)
                main_line = name in (RANDOM.name, DEFAULT.name)
                (line,) = ax.plot(grid, mean, label=name, lw=2.2 if main_line else 0.9)
                ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.12)
            ax.set_title(f"{Path(path).name}, {workers} workers")
            ax.set_xlabel(label)
            ax.set_ylabel("best validation accuracy so far")
            ax.grid(alpha=0.3)
            if by_what == "epochs":
                ax.set_xscale("log")
            top = max(np.nanmax(anytime(r, grid, by=by_what, mode=mode)[0]) for r in by.values())
            ax.set_ylim(top - 0.15, top + 0.01)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def shipped_tables() -> list[str]:
    return (
        sorted(str(p) for p in TABLES.iterdir() if (p / "trials.parquet").is_file())
        if TABLES.is_dir()
        else []
    )


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(
        prog="bench_replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--smoke", action="store_true", help="tiny: checks the benchmark runs")
    p.add_argument("--table", action="append", help="a recorded table (run directory); repeatable")
    p.add_argument(
        "--seeds", type=int, default=None, help="seeds per strategy (headline 200, --full 50)"
    )
    p.add_argument(
        "--workers", type=int, nargs="+", default=None, help="W (headline 4; --full 1 4 16)"
    )
    p.add_argument("--strategies", nargs="+", choices=[s.name for s in STRATEGIES], default=None)
    p.add_argument("--trials", type=int, default=12, help="random search's trials (default 12)")
    p.add_argument("--full", action="store_true", help="every strategy, W 1 4 16, 50 seeds")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    p.add_argument("--plot", type=Path, default=None, help="write the anytime plot (PNG) here")
    args = p.parse_args(argv)
    tables = args.table or shipped_tables()
    if not tables:
        p.error(
            "no table: record one (docs: Recording a learning-curve table) and pass --table DIR"
        )
    if args.full:
        strategies = [BY_NAME[n] for n in args.strategies] if args.strategies else STRATEGIES
        seeds, workers = args.seeds or 50, args.workers or [1, 4, 16]
    else:
        strategies = [BY_NAME[n] for n in args.strategies] if args.strategies else [DEFAULT]
        seeds, workers = args.seeds or 200, args.workers or [4]
    if args.smoke:
        strategies, seeds, workers, tables = strategies[:1], 3, [2], tables[:1]
    header(
        f"{len(strategies)} strategies x {len(tables)} tables x W {workers}, {seeds} seeds each; "
        f"random search {args.trials} trials, the others {3 * args.trials}",
        smoke=args.smoke,
    )
    results: dict = {}
    curves: dict[str, dict[str, list[Replay]]] = {}
    started = time.perf_counter()
    for path in tables:
        for w in workers:
            t0 = time.perf_counter()
            rows, by = compare(
                path,
                strategies,
                workers=w,
                seeds=seeds,
                trials=args.trials,
                processes=args.processes,
            )
            results[f"{Path(path).name} W={w}"] = rows
            if w == (4 if 4 in workers else workers[0]):
                curves[path] = by
            print(f"--- {Path(path).name}, W = {w} ({time.perf_counter() - t0:.0f} s)")
            for name, row in sorted(rows.items(), key=lambda kv: kv[1]["ratio"]):
                print("  " + format_row(name, row))
    if args.out:
        args.out.write_text(
            json.dumps(
                {"strategies": [asdict(s) for s in strategies], "results": results}, indent=1
            )
        )
    if args.plot:
        plot(curves, args.plot, workers=4 if 4 in workers else workers[0])
    first = f"{Path(tables[0]).name} W={4 if 4 in workers else workers[0]}"
    head = results[first][strategies[0].name]
    lo, hi = head["ci"]
    met = head["ratio"] <= TARGET and hi < 0.5
    print(
        f"{strategies[0].name} on {first}: ratio {head['ratio']:.2f} (95 % CI {lo:.2f}-{hi:.2f}) "
        f"of random search's epochs to reach its best, {seeds} seeds; target <= 1/3 with the "
        f"interval's upper end < 0.5: {'met' if met else 'NOT met'} ({time.perf_counter() - started:.0f} s)"
    )
