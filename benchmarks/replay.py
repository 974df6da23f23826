"""Replaying searches against a recorded learning-curve table (NAS-Bench-201, LCBench, HPOBench,
Syne Tune's simulator): hpsearch's own searcher and Ray Tune's own schedulers, driven through
their public calls, against curves recorded once, on a simulated clock.

A table is a run directory (`trials.parquet`, `epochs.parquet`, `experiment.yaml`) of a grid
over a discrete space, every configuration trained to its last epoch with one or more training
seeds (`search.space.seed`). A replay:
- asks the searcher (`ResumableOptunaSearch` behind a `ConcurrencyLimiter`, as `tune_setup`
  builds it; its Optuna study in memory) for a configuration whenever one of W workers is free;
- draws one of that configuration's recorded seeds at random (the training noise);
- reports its recorded epochs at their recorded times (`time_total_s` after the trial's start)
  to the scheduler (`on_trial_result`: continue or stop) and the searcher, in time order across
  workers, as Ray Tune's controller does: a stopped trial frees its worker at once, a trial that
  trained its last epoch sends its last result again (Tune's `done`) and completes;
- logs every epoch spent: (time, trial, epoch, score).

Nothing trains: a replay of 36 trials takes about a second.
"""

from __future__ import annotations

import heapq
import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import optuna
import pandas as pd
from scipy import stats

from hpsearch.search.experiment.dimensions import DIMENSIONS
from hpsearch.search.experiment.schema import Experiment, load_experiment
from hpsearch.search.trial.report import RUNNING, worst_value

EXPERIMENT_FILE = "experiment.yaml"
NOISE_KEYS = ("seed",)  # config keys that are training noise, not a configuration


def _norm(value: Any) -> Any:
    """A config value in one comparable form (numpy scalars, floats to 12 digits)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return float(f"{value:.12g}")
    return value


def config_key(config: dict[str, Any], keys: Sequence[str]) -> tuple:
    return tuple((k, _norm(config.get(k))) for k in keys if _norm(config.get(k)) is not None)


@dataclass(frozen=True)
class Curve:
    """One recorded training of one configuration: the score and the time since the trial
    started at each epoch; `end` is how it ended (completed, infeasible, diverged, oom)."""

    scores: tuple[float, ...]
    times: tuple[float, ...]
    end: str = "completed"


@dataclass
class Table:
    """A recorded table: the experiment it was recorded with and every configuration's curves."""

    path: Path
    experiment: Experiment
    curves: dict[tuple, list[Curve]]
    keys: tuple[str, ...]  # the config keys that name a configuration
    metric: str = "val_accuracy"
    mode: str = "max"

    @classmethod
    def load(cls, path: str | Path) -> Table:
        path = Path(path)
        missing = [
            f
            for f in ("trials.parquet", "epochs.parquet", EXPERIMENT_FILE)
            if not (path / f).is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"{path}: not a learning-curve table (missing {', '.join(missing)}); record one "
                "with benchmarks/tables/record.yaml (docs: Recording a learning-curve table)"
            )
        exp = load_experiment(path / EXPERIMENT_FILE)
        trials = pd.read_parquet(path / "trials.parquet")
        epochs = pd.read_parquet(path / "epochs.parquet")
        return cls.from_frames(path, exp, trials, epochs)

    @classmethod
    def from_frames(
        cls, path: Path, exp: Experiment, trials: pd.DataFrame, epochs: pd.DataFrame
    ) -> Table:
        metric, mode = exp.search.metric, exp.search.mode
        keys = tuple(
            sorted({d.key for d in DIMENSIONS.values()} & set(trials.columns) - set(NOISE_KEYS))
        )
        by_trial = {tid: g.sort_values("epoch") for tid, g in epochs.groupby("trial_id")}
        curves: dict[tuple, list[Curve]] = defaultdict(list)
        for row in trials.to_dict("records"):
            status = row.get("status")
            g = by_trial.get(row["trial_id"])
            if status not in ("completed", "infeasible", "diverged", "oom"):
                continue  # errored or unfinished: not a recorded outcome
            scores = tuple(float(v) for v in g[metric]) if g is not None else ()
            times = tuple(float(v) for v in g["time_total_s"]) if g is not None else ()
            curves[config_key(row, keys)].append(Curve(scores, times, str(status)))
        if not curves:
            raise ValueError(f"{path}: no finished trial in the table")
        return cls(path, exp, dict(curves), keys, metric, mode)

    @property
    def epochs(self) -> int:
        return int(self.experiment.train.epochs)

    def best(self) -> float:
        """The best score any recorded curve reaches (regret is measured against it)."""
        scores = [s for cs in self.curves.values() for c in cs for s in c.scores]
        return max(scores) if self.mode == "max" else min(scores)

    def draw(self, config: dict[str, Any], rng: np.random.Generator) -> Curve:
        recorded = self.curves.get(config_key(config, self.keys))
        if not recorded:
            raise KeyError(
                f"the searcher proposed a configuration the table does not hold: "
                f"{config_key(config, self.keys)}; replay with the table's own space"
            )
        return recorded[int(rng.integers(len(recorded)))]

    def search_experiment(self, **search: Any) -> Experiment:
        """The table's experiment as a search over its space (the noise keys left out)."""
        exp = self.experiment
        space = exp.search.space
        if getattr(space, "seed", None) is not None:
            space = space.model_copy(update={"seed": None})
        return exp.model_copy(
            update={"search": exp.search.model_copy(update={"space": space, **search})}
        )


@dataclass(frozen=True)
class Strategy:
    """A searcher and a scheduler: `sampler` tpe (hpsearch's settings), random, gp (Optuna's
    GPSampler) or tpe-univariate (Optuna's TPESampler defaults); `scheduler` none, asha or
    hyperband (ASHA over `brackets` brackets)."""

    name: str
    sampler: str = "tpe"
    scheduler: str = "asha"
    grace: int = 1
    reduction: float = 3.0
    brackets: int = 1
    startup: int | None = None  # TPE's n_startup_trials (None: hpsearch's rule)
    trials_factor: int = 3  # trials, as a multiple of random search's


@dataclass
class Replay:
    """What one replay spent: every epoch in the order it finished, with its time and score."""

    strategy: str
    seed: int
    workers: int
    times: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    trials: list[tuple[dict[str, Any], int]] = field(default_factory=list)  # config, epochs

    def best(self, mode: str = "max") -> float:
        if not self.scores:
            return math.nan
        return max(self.scores) if mode == "max" else min(self.scores)


def _experiment(table: Table, strategy: Strategy, seed: int, trials: int) -> Experiment:
    exp = table.search_experiment(
        algorithm="random" if strategy.sampler == "random" else "tpe",
        seed=seed,
        num_trials=trials,
        max_concurrent=1,
    )
    sched = exp.scheduler.model_copy(
        update={
            "type": "none" if strategy.scheduler == "none" else "asha",
            "grace_period": strategy.grace,
            "reduction_factor": strategy.reduction,
            "brackets": strategy.brackets,
        }
    )
    return exp.model_copy(update={"scheduler": sched})


def _sampler(strategy: Strategy, exp: Experiment, seed: int):
    """None: hpsearch's own (`tune_setup.sampler`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if strategy.sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed)
        if strategy.sampler == "tpe-univariate":
            return optuna.samplers.TPESampler(seed=seed)
        if strategy.sampler == "tpe" and strategy.startup is not None:
            return optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=strategy.startup,
                multivariate=True,
                group=True,
                constant_liar=True,
            )
    return None


def replay(
    table: Table, strategy: Strategy, *, seed: int, workers: int, trials: int
) -> tuple[Replay, Any]:
    """One search of `trials` trials on `workers` workers; returns what it spent and the
    searcher (whose Optuna study the pinning test compares with a real run's)."""
    # lazy: Ray Tune's schedulers and searchers (~1 s); the table loads without them
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import Searcher

    from hpsearch.search.driver import tune_setup

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    exp = _experiment(table, strategy, seed, trials)
    metric, mode = exp.search.metric, exp.search.mode
    searcher = tune_setup.searcher(
        exp, None, max_concurrent_trials=workers, optuna_sampler=_sampler(strategy, exp, seed)
    )
    scheduler = tune_setup.scheduler(exp)
    scheduler.set_search_properties(metric, mode)
    np.random.seed(seed)  # Ray's Hyperband draws each trial's bracket from numpy's global RNG
    noise = np.random.default_rng([seed, 1])
    out = Replay(strategy.name, seed, workers)
    events: list[tuple[float, int, str]] = []  # (time, order, trial id)
    running: dict[str, dict[str, Any]] = {}
    now, started, order = 0.0, 0, 0

    def finish(tid: str, result: dict[str, Any]) -> None:
        state = running.pop(tid)
        scheduler.on_trial_complete(None, state["trial"], result)
        searcher.on_trial_complete(tid, result=result)
        out.trials.append((state["config"], state["spent"]))

    def returned(tid: str, result: dict[str, Any]) -> None:
        """The trial's last report, after which its function returns: Tune passes it on, then
        sends it again marked done, then completes the trial (TuneController)."""
        trial = running[tid]["trial"]
        for _ in range(2):
            if scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP:
                break
            searcher.on_trial_result(tid, result)
        finish(tid, result)

    while True:
        while len(running) < workers and started < trials:
            tid = f"trial_{started:05d}"
            config = searcher.suggest(tid)
            if config is None or config == Searcher.FINISHED:
                break
            started += 1
            trial = SimpleNamespace(trial_id=tid, config=config)
            scheduler.on_trial_add(None, trial)
            curve = table.draw(config, noise)
            running[tid] = {
                "trial": trial,
                "config": config,
                "curve": curve,
                "next": 0,
                "spent": 0,
                "start": now,
            }
            first = curve.times[0] if curve.scores else 0.0
            heapq.heappush(events, (now + first, order, tid))
            order += 1
        if not events:
            break
        now, _, tid = heapq.heappop(events)
        state = running[tid]
        curve, k = state["curve"], state["next"]
        if k >= len(curve.scores):  # ended by the trainable: infeasible, diverged, out of memory
            epoch = k if curve.end == "infeasible" else k + 1
            result = {metric: worst_value(mode), "status": curve.end, "epoch": epoch}
            returned(tid, {**result, "training_iteration": k + 1})
            continue
        epoch = k + 1
        result = {
            metric: curve.scores[k],
            "status": RUNNING,
            "epoch": epoch,
            "training_iteration": epoch,
            "time_total_s": curve.times[k],
        }
        state["next"], state["spent"] = epoch, epoch
        out.times.append(now)
        out.scores.append(curve.scores[k])
        if epoch == len(curve.scores) and curve.end == "completed":
            returned(tid, result)
            continue
        if scheduler.on_trial_result(None, state["trial"], result) == TrialScheduler.STOP:
            finish(tid, result)
            continue
        searcher.on_trial_result(tid, result)
        nxt = curve.times[epoch] if epoch < len(curve.scores) else curve.times[k]
        heapq.heappush(events, (state["start"] + nxt, order, tid))
        order += 1
    return out, searcher


def epochs_to_reach(rep: Replay, bar: float, mode: str = "max") -> int | None:
    """Epochs spent, in the order they finished, until one first scored at least `bar`."""
    for i, s in enumerate(rep.scores):
        if (s >= bar - 1e-9) if mode == "max" else (s <= bar + 1e-9):
            return i + 1
    return None


def seed_counts(baseline: Replay, other: Replay, mode: str = "max") -> dict[str, Any]:
    """One seed's count: the bar is the baseline's best; the epochs each side spent to reach it
    (a side that never does counts every epoch it spent, and is flagged)."""
    bar = baseline.best(mode)
    reached = epochs_to_reach(other, bar, mode)
    return {
        "bar": bar,
        "baseline": epochs_to_reach(baseline, bar, mode),
        "other": reached if reached is not None else len(other.scores),
        "reached": reached is not None,
    }


def pooled_ratio(counts: Sequence[dict[str, Any]]) -> float:
    """bench_efficiency's ratio: the other side's epochs to the bar, summed over seeds, over the
    baseline's."""
    return sum(c["other"] for c in counts) / sum(c["baseline"] for c in counts)


def ratio_interval(
    counts: Sequence[dict[str, Any]], *, resamples: int = 4000, seed: int = 0
) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the pooled ratio, resampling seeds (pairs)."""
    if len(counts) < 2:
        r = pooled_ratio(counts)
        return r, r
    other = np.array([c["other"] for c in counts], dtype=float)
    base = np.array([c["baseline"] for c in counts], dtype=float)
    with warnings.catch_warnings():  # (a sample of identical pairs: "degenerate", still right)
        warnings.simplefilter("ignore")
        ci = stats.bootstrap(
            (other, base),
            lambda o, b, axis=-1: o.sum(axis=axis) / b.sum(axis=axis),
            paired=True,
            vectorized=True,
            n_resamples=resamples,
            method="percentile",
            rng=np.random.default_rng(seed),
        ).confidence_interval
    return float(ci.low), float(ci.high)


def anytime(
    reps: Sequence[Replay], grid: np.ndarray, *, by: str = "epochs", mode: str = "max"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best score so far at each point of `grid` (epochs spent, or simulated seconds), mean and
    95 % interval (normal approximation) over the replays."""
    rows = []
    for r in reps:
        best = (np.maximum if mode == "max" else np.minimum).accumulate(np.asarray(r.scores))
        if by == "epochs":
            at = np.searchsorted(np.arange(1, len(best) + 1), grid, side="right") - 1
        else:
            at = np.searchsorted(np.asarray(r.times), grid, side="right") - 1
        vals = np.where(at >= 0, best[np.clip(at, 0, len(best) - 1)], np.nan)
        rows.append(vals)
    m = np.vstack(rows)
    mean = np.nanmean(m, axis=0)
    half = 1.96 * np.nanstd(m, axis=0, ddof=1) / np.sqrt(np.sum(~np.isnan(m), axis=0).clip(1))
    return mean, mean - half, mean + half
