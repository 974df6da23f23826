"""Search efficiency on the demo digits: TPE + ASHA vs random search without early stopping.

Measured 2026-11-26, `python -m benchmarks bench_efficiency`, on a 2-core AMD EPYC VM (no GPU;
shared, 1-minute load average 1.5 to 4.2; epoch counts do not depend on load), 12 trials x 6
epochs per side, seed 0:
  random, no early stopping  best val_accuracy 1.000, first reached after 48 epochs; 72 spent
  TPE + ASHA                 best val_accuracy 1.000, reached after 38 epochs; 64 spent
  ratio 0.79 (target <= 1/3: NOT met)
Why: the digits are too easy for this comparison. Random search's best trial classifies all
180 validation images correctly, the ceiling; with that as the bar, the first config that
gets there ends the count on either side, and a third of the epochs needs a task where the
best configs are rare. ASHA (grace 2, reduction 2, max 6 epochs) stopped few trials: asynchronous rungs promote
the first trials to arrive, and with 12 trials only 8 of 72 epochs were saved. One seed per
side: the ratio is a single noisy sample.

What is compared: `experiments/demo.yaml` (the demo's space: three AlexNet-family presets,
width, MLP, dropout, batch norm, batch size, three optimizers; 32 px) run twice on the demo
digits with the same budget (12 trials x 6 epochs rather than the demo's 16 x 8, so that
`make bench` fits in 20 minutes on 2 cores): once as written (TPE + ASHA), once with
`search.algorithm=random` and `scheduler.type=none` (every trial trains every epoch). The
epochs each side spends (ordered by the time Ray recorded each epoch's result) until a trial
first reaches the best validation accuracy random search ever reached. Target: TPE + ASHA
needs <= 1/3 of the epochs random search needed. One seed each: a single pair of searches is
noisy, and the note says so.

Run: `python -m benchmarks bench_efficiency` (full size) or with `--smoke` (tiny).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from benchmarks._common import header, load_average, local_ray, verdict
from benchmarks.bench_data import generate
from data_pipeline import default_cache_root

TARGET = 1 / 3


def epochs_to_reach(epochs: pd.DataFrame, threshold: float) -> int | None:
    """Epochs spent, in the order their results arrived, until val_accuracy >= threshold."""
    ordered = epochs.sort_values(["timestamp", "time_total_s"]).reset_index(drop=True)
    hit = ordered.index[ordered["val_accuracy"] >= threshold - 1e-9]
    return int(hit[0]) + 1 if len(hit) else None


def main(argv: list[str]) -> None:
    from search.demo import DEMO_EXPERIMENT, write_digits
    from search.schema import load_experiment
    from search.tuner import run

    p = argparse.ArgumentParser(
        prog="bench_efficiency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs")
    p.add_argument("--trials", type=int, default=None, help="trials per side (default 12)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default 6)")
    p.add_argument("--seed", type=int, default=0, help="search seed of both sides")
    args = p.parse_args(argv)
    trials = args.trials or (2 if args.smoke else 12)
    epochs = args.epochs or (2 if args.smoke else 6)
    with tempfile.TemporaryDirectory(prefix="bench_efficiency-") as tmp:
        work = Path(tmp)
        root = work if args.smoke else default_cache_root() / "bench_efficiency"
        # Smoke: 40 small generated photos instead of the 1,797 digits.
        digits = (
            generate(work / "photos", images=40, classes=10, width=48, height=48, workers=1)
            if args.smoke
            else write_digits(root / "digits")
        )
        common = [
            f"data.folder={digits}",
            f"data.cache={root / 'cache'}",
            f"storage={work / 'runs'}",
            f"search.num_trials={trials}",
            f"search.seed={args.seed}",
            f"train.epochs={epochs}",
        ]
        if args.smoke:
            common += [
                "search.space.arch=FlatAlexNet",
                "search.space.width=0.25",
                "scheduler.grace_period=1",
                "data.test_fraction=0.25",
            ]
        header(
            f"experiments/demo.yaml on the demo digits (32 px): {trials} trials x {epochs} epochs "
            "per side, 2 at a time, 1 CPU each",
            smoke=args.smoke,
        )
        sides = {
            "random, no early stopping": ["search.algorithm=random", "scheduler.type=none"],
            "TPE + ASHA": [],
        }
        tables = {}
        with local_ray():
            for label, overrides in sides.items():
                exp = load_experiment(DEMO_EXPERIMENT, [*common, *overrides])
                _, t, _ = run(exp, name=label.split(",")[0].replace(" + ", "-"), progress=False)
                tables[label] = t["epochs"].dropna(subset=["val_accuracy"])
        rand, tpe = tables["random, no early stopping"], tables["TPE + ASHA"]
        best = float(rand["val_accuracy"].max())
        n_rand = epochs_to_reach(rand, best)
        n_tpe = epochs_to_reach(tpe, best)
        print(
            f"random   best val_accuracy {best:.4f}, first reached after {n_rand} epochs; "
            f"{len(rand)} epochs spent in all"
        )
        print(
            f"TPE+ASHA best val_accuracy {tpe['val_accuracy'].max():.4f}; "
            + (f"reached {best:.4f} after {n_tpe} epochs" if n_tpe else f"never reached {best:.4f}")
            + f"; {len(tpe)} epochs spent in all"
        )
        if n_tpe and n_rand:
            ratio = n_tpe / n_rand
            print(
                f"ratio    {ratio:.2f} of random's epochs ({verdict(ratio, TARGET, at_most=True)})"
            )
        else:
            print(
                f"ratio    undefined: TPE + ASHA never reached it (target <= {TARGET:.2f}: NOT met)"
            )
        print(f"         {load_average()} at the end")
