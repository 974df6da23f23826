"""Search efficiency on the demo digits: TPE + ASHA vs random search without early stopping.

Measured 2026-12-02 02:15-02:25 UTC, `python -m benchmarks bench_efficiency -- --sides TPE+ASHA
TPE+Hyperband`, on a 2-core Intel Xeon VM with AMX (bf16; load average 1.0-1.6), with the
three-part split (half of the digits validate, 5 % held out unused, 45 % train), 12 random
trials x 9 epochs, 36 trials per TPE side, 16 px, seeds 0, 1, 2:
  seed 0  random's best 0.9900 after 105 epochs; TPE + ASHA 75; TPE + async Hyperband 83
  seed 1  random's best 0.9922 after 93 epochs;  TPE + ASHA 69; TPE + async Hyperband 84
  seed 2  random's best 0.9933 after 20 epochs;  TPE + ASHA 17; TPE + async Hyperband 17
  ratio   TPE + ASHA 0.74 (161 vs 218), TPE + asynchronous Hyperband (3 brackets) 0.84 (184
          vs 218); target <= 1/3: NOT met, by 0.4
The multi-fidelity alternative, asynchronous Hyperband (`scheduler.brackets: 3`: ASHA over 3
brackets, the later ones judging a trial first at 3 and 9 epochs), was less efficient than plain
ASHA in 2 seeds and equal in one, so ASHA (1 bracket) stays the default. BOHB (Ray's TuneBOHB
with HyperBandForBOHB) is not compared yet: it needs hpbandster and ConfigSpace (both install
from PyPI) and the conditional per-optimizer space written again as a ConfigSpace, since it
cannot use hpsearch's define-by-run Optuna space.

Measured 2026-12-02, `python -m benchmarks bench_efficiency`, on a 2-core Intel Xeon VM with AMX
(bf16; load average 3.5-3.8 from other jobs; epoch counts do not depend on load), 12 random
trials x 9 epochs, 36 trials per TPE side, 16 px, seeds 0, 1, 2:
  seed 0  random's best 0.9956 after 88 epochs; TPE + ASHA (pruned) 52; stock 52
  seed 1  random's best 0.9911 after 33 epochs; TPE + ASHA (pruned) 22; stock 20
  seed 2  random's best 0.9911 after 17 epochs; TPE + ASHA (pruned) 14; stock 14
  ratio   pruned 0.64 (88 vs 138), stock 0.62 (86 vs 138); target <= 1/3: NOT met, by 0.3
Telling Optuna that ASHA-stopped trials are PRUNED (with their intermediate values) instead of
COMPLETE with an early score made no measurable difference here (2 epochs of 138): the default
is the pruned form because the study then records what happened (optuna-dashboard shows the
stopped trials as pruned, with their curves). Random search's luck dominates the count (seed 2
reached its best after 17 of 108 epochs), so three seeds are still a noisy estimate.

Measured 2026-11-26, `python -m benchmarks bench_efficiency`, on a 2-core AMD EPYC VM (no GPU;
epoch counts do not depend on load), 12 random trials x 9 epochs, 36 TPE + ASHA trials, 16 px,
seeds 0 and 1, in `make bench`:
  seed 0  random best 0.9944, first reached after 89 epochs (108 spent); TPE + ASHA best
          0.9956, reached 0.9944 after 45 epochs (184 spent)
  seed 1  random best 0.9933, after 36 epochs (108 spent); TPE + ASHA best 0.9956, reached
          0.9933 after 22 epochs (174 spent)
  ratio 0.54 (67 vs 125 epochs; target <= 1/3: NOT met, by 0.2)
An earlier run (before channels-last fp32, which changes the rounding and so the trials) gave
the same 0.54 (94 vs 175: 46 vs 84 and 48 vs 91 epochs).
Why not a third: TPE samples its first 10 configs at random (hpsearch's `n_startup_trials`
is a third of the trials, at most 10, Optuna's default), and those are trained to ASHA's first
rungs before TPE models anything; ASHA then promotes most of TPE's proposals (asynchronous
rungs compare a trial with those that reached the rung before it, and TPE's later proposals
are better than the early random ones), so TPE + ASHA spent about 5 epochs per trial, where
synchronous halving with these rungs would spend 1 + 2/3 + 6/9 = 2.3. TPE + ASHA reached
random's best in about half of random's epochs in every seed of both runs, and went on to
beat it (0.9956 vs 0.9944 and 0.9933). With the demo's own settings (32 px, 8 epochs) the
digits saturate at 100 % of the 180 validation images and the count measures luck, which is
why this benchmark makes the task harder. Two seeds: the ratio is still noisy.

What is compared: `experiments/demo.yaml`'s search space (three AlexNet-family presets, width,
MLP, dropout, batch norm, batch size, three optimizers with their learning rates) on the demo
digits, for several search seeds:
- random search without early stopping (`search.algorithm=random`, `scheduler.type=none`),
  `--trials` trials (default 12): every trial trains every epoch;
- TPE + ASHA as hpsearch runs it, allowed 3 times as many trials: early stopping exists to
  spend the epochs it saves on more configs. Its total epochs are printed beside the count.
The task is harder than the demo's so that it does not saturate: 16 px instead of 32 (the
digits are 8x8 scans), half of the images held out for validation (898, so one image is 0.1
%), at most 9 epochs per trial. ASHA uses grace 1 and reduction factor 3 (rungs at 1, 3 and 9
epochs).

The count: for each seed, the best validation accuracy random search reached is the bar;
each side's epochs are ordered by the time Ray recorded their results, and the epochs spent
until a trial first reached the bar are counted. The ratio is TPE + ASHA's total over all
seeds divided by random's (a seed where TPE + ASHA never reaches the bar counts all its epochs
and the target is reported as not met). Target: <= 1/3.

Run: `python -m benchmarks bench_efficiency` (full size) or with `--smoke` (tiny).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks._common import header, load_average, local_ray, verdict
from benchmarks.bench_data import generate
from hpsearch.data_pipeline import default_cache_root

TARGET = 1 / 3
SIDES = {
    "random": ["search.algorithm=random", "scheduler.type=none"],
    "TPE+ASHA": [],  # hpsearch's default: ASHA-stopped trials are PRUNED in the Optuna study
    "TPE+ASHA stock": [],  # the same, but told COMPLETE with their early score (Ray's OptunaSearch)
    # Multi-fidelity alternative: asynchronous Hyperband (ASHA over 3 brackets, so some trials
    # get their first rung only at 3 or 9 epochs: a less greedy stop than ASHA's).
    "TPE+Hyperband": ["scheduler.brackets=3"],
}
TPE_SIDES = [side for side in SIDES if side != "random"]
MORE_TRIALS = 3  # TPE + ASHA may try this many times as many configs: ASHA frees the epochs


@contextlib.contextmanager
def stock_completion(on: bool):
    """Ray's stock OptunaSearch behaviour for one side: no trial is told PRUNED."""
    from hpsearch.search.driver.searcher import ResumableOptunaSearch

    if not on:
        yield
        return
    original = ResumableOptunaSearch._stopped_early
    ResumableOptunaSearch._stopped_early = lambda self, result, error: False
    try:
        yield
    finally:
        ResumableOptunaSearch._stopped_early = original


def epochs_to_reach(epochs: pd.DataFrame, threshold: float) -> int | None:
    """Epochs spent, in the order their results arrived, until val_accuracy >= threshold."""
    ordered = epochs.sort_values(["timestamp", "time_total_s"]).reset_index(drop=True)
    hit = ordered.index[ordered["val_accuracy"] >= threshold - 1e-9]
    return int(hit[0]) + 1 if len(hit) else None


def compare(rand: pd.DataFrame, tpe: pd.DataFrame) -> dict:
    """One seed's count for one TPE side: the bar is random search's best validation accuracy."""
    best = float(rand["val_accuracy"].max())
    n_tpe = epochs_to_reach(tpe, best)
    return {
        "bar": best,
        "random": epochs_to_reach(rand, best),
        "random_spent": len(rand),
        "tpe": n_tpe if n_tpe is not None else len(tpe),
        "tpe_reached": n_tpe is not None,
        "tpe_best": float(tpe["val_accuracy"].max()),
        "tpe_spent": len(tpe),
    }


def summarize(rows: list[dict]) -> tuple[float, bool]:
    """Pooled ratio over the seeds, and whether TPE + ASHA reached the bar in every seed."""
    ratio = sum(r["tpe"] for r in rows) / sum(r["random"] for r in rows)
    return ratio, all(r["tpe_reached"] for r in rows)


def main(argv: list[str]) -> None:
    from hpsearch.search.driver.demo import DEMO_EXPERIMENT, write_digits
    from hpsearch.search.driver.tuner import run
    from hpsearch.search.experiment.schema import load_experiment

    p = argparse.ArgumentParser(
        prog="bench_efficiency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs")
    p.add_argument("--trials", type=int, default=None, help="random search's trials (default 12)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default 9)")
    p.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="search seeds (default 0 1 2)"
    )
    p.add_argument(
        "--sides",
        nargs="+",
        choices=TPE_SIDES,
        default=None,
        help=f"which TPE sides to run against random search (default all: {', '.join(TPE_SIDES)})",
    )
    args = p.parse_args(argv)
    # Smoke: one TPE side checks the code path; the others differ only in their settings.
    default_sides = TPE_SIDES[:1] if args.smoke else TPE_SIDES
    sides = ["random", *(args.sides or default_sides)]
    trials = args.trials or (2 if args.smoke else 12)
    epochs = args.epochs or (2 if args.smoke else 9)
    seeds = args.seeds or ([0] if args.smoke else [0, 1, 2])
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
            "data.image_size=16",
            # Half of the images validate (what trials report on); a few are held out unused.
            f"data.test_fraction={0.25 if args.smoke else 0.05}",
            "data.val_fraction=0.5",
            f"storage={work / 'runs'}",
            f"train.epochs={epochs}",
            "scheduler.grace_period=1",
            "scheduler.reduction_factor=3",
        ]
        if args.smoke:
            common += [
                "search.space.arch=FlatAlexNet",
                "search.space.width=0.25",
            ]
        header(
            f"experiments/demo.yaml's space on the demo digits at 16 px: {trials} trials x "
            f"{epochs} epochs per side, seeds {seeds}, 2 at a time, 1 CPU each",
            smoke=args.smoke,
        )
        rows: dict[str, list[dict]] = {side: [] for side in sides[1:]}
        with local_ray():
            for seed in seeds:
                tables = {}
                for side in sides:
                    overrides = SIDES[side]
                    n = trials if side == "random" else MORE_TRIALS * trials
                    exp = load_experiment(
                        DEMO_EXPERIMENT,
                        [*common, f"search.num_trials={n}", f"search.seed={seed}", *overrides],
                    )
                    start = time.perf_counter()
                    name = f"{side.replace('+', '-').replace(' ', '-')}-{seed}"
                    with stock_completion(side.endswith("stock")):
                        _, t, _ = run(exp, name=name, progress=False)
                    wall = time.perf_counter() - start
                    tables[side] = t["epochs"].dropna(subset=["val_accuracy"])
                    print(
                        f"seed {seed}   {side}: wall {wall:.0f} s, training "
                        f"{tables[side]['seconds'].sum() / 2:.0f} s per slot",
                        flush=True,
                    )
                for side in sides[1:]:
                    r = compare(tables["random"], tables[side])
                    rows[side].append(r)
                    print(
                        f"seed {seed}   random best val_accuracy {r['bar']:.4f}, first reached "
                        f"after {r['random']} epochs ({r['random_spent']} spent); {side} best "
                        f"{r['tpe_best']:.4f}, "
                        + (
                            f"reached {r['bar']:.4f} after {r['tpe']} epochs"
                            if r["tpe_reached"]
                            else f"never reached {r['bar']:.4f}"
                        )
                        + f" ({r['tpe_spent']} spent)",
                        flush=True,
                    )
        for side in sides[1:]:
            ratio, reached = summarize(rows[side])
            met = (
                verdict(ratio, TARGET, at_most=True) if reached else "NOT met: a seed never reached"
            )
            print(
                f"ratio    {side}: {ratio:.2f} of random's epochs over {len(rows[side])} seed(s) "
                f"({sum(r['tpe'] for r in rows[side])} vs "
                f"{sum(r['random'] for r in rows[side])}; {met})"
            )
        print(f"         {load_average()} at the end")
