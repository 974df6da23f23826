"""Which CNN to train: the statistics of the k-fold comparison and the recommendation.

Each config's held-out scores over the folds give a mean and its 95 % t interval. Every config
is compared with the best one fold by fold with the corrected resampled t-test (Nadeau &
Bengio 2003): the folds' training sets overlap, so the plain paired t-test is too confident.
The recommendation follows the one-standard-error rule: the cheapest config (fewest MACs) whose
mean lies within one standard error of the best's, since a difference smaller than the noise
of the estimate is no reason to pay for a bigger net.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats as st

from hpsearch.analysis._common import MissingDataError, pretty, require
from hpsearch.analysis.run import Run, load_run
from hpsearch.rundir import FINAL_FILE, TABLE_COLUMNS, coerce

if TYPE_CHECKING:
    from hpsearch.analysis.run import Run

CONFIDENCE = 0.95
_PERCENT = f"{CONFIDENCE * 100:.0f} %"
METRICS = ("accuracy", "macro_precision")
FINAL_COLUMNS = ("evaluation", "config_id", "trial_id", "accuracy", "macro_precision")
COST_COLUMNS = ("params", "macs", "images_per_s")
_NAN = float("nan")


def mean_interval(
    values: Sequence[float] | np.ndarray | pd.Series, *, confidence: float = CONFIDENCE
) -> dict[str, float]:
    """`folds` (finite values), `mean`, `std` (ddof 1), `sem` and the t interval of the mean
    (`ci_low`, `ci_high`; df = folds - 1). Fewer than 2 values: std, sem and the interval are
    NaN. The interval takes the folds as independent; their training sets overlap, so read it
    as the spread of the estimate, and compare configs with `corrected_ttest`."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    out = {"folds": n, "mean": float(x.mean()) if n else _NAN}
    if n < 2:
        return {**out, **dict.fromkeys(("std", "sem", "ci_low", "ci_high"), _NAN)}
    std = float(x.std(ddof=1))
    sem = std / math.sqrt(n)
    half = float(st.t.ppf((1 + confidence) / 2, n - 1)) * sem
    return {
        **out,
        "std": std,
        "sem": sem,
        "ci_low": out["mean"] - half,
        "ci_high": out["mean"] + half,
    }


def _pairs(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Series pair by their index (the fold), anything else by position; non-finite pairs out."""
    if isinstance(a, pd.Series) and isinstance(b, pd.Series):
        a, b = a.align(b, join="inner")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(
            f"corrected_ttest: a and b must be 1-d and paired by fold, got shapes {x.shape} and "
            f"{y.shape}; pass pandas Series indexed by fold to pair them by index"
        )
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def corrected_ttest(
    a: Any,
    b: Any,
    *,
    test_train_ratio: float | None = None,
    confidence: float = CONFIDENCE,
) -> dict[str, float]:
    """The corrected resampled t-test of paired per-fold scores, a - b (Nadeau & Bengio 2003;
    for k-fold cross-validation as in Bouckaert & Frank 2004).

    With d the k per-fold differences and s² their variance (ddof 1), the variance of the mean
    difference is (1/k + n_test/n_train) * s² instead of the plain s²/k: the training sets of
    the folds overlap, so the differences are correlated. `test_train_ratio` (n_test/n_train)
    defaults to 1/(k-1), the ratio of k-fold cross-validation; df = k - 1.

    Returns `mean_diff`, its interval (`ci_low`, `ci_high`), `t`, the two-sided `p` and `folds`
    (the pairs used). Series are paired by their index, other sequences by position; a pair with
    a non-finite value is dropped. Fewer than 2 pairs: all NaN but `folds`. All differences
    equal (s² = 0): the interval is the point, and p = 1.0 when the difference is 0, else 0.0
    (t = 0 or ±inf)."""
    x, y = _pairs(a, b)
    k = int(x.size)
    if test_train_ratio is not None and not test_train_ratio > 0:
        raise ValueError(f"test_train_ratio must be > 0 (n_test/n_train), got {test_train_ratio}")
    if k < 2:
        return {**dict.fromkeys(("mean_diff", "ci_low", "ci_high", "t", "p"), _NAN), "folds": k}
    d = x - y
    mean = float(d.mean())
    ratio = 1 / (k - 1) if test_train_ratio is None else float(test_train_ratio)
    se = math.sqrt((1 / k + ratio) * float(d.var(ddof=1)))
    if se == 0:
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        return {"mean_diff": mean, "ci_low": mean, "ci_high": mean, "t": t,
                "p": 1.0 if mean == 0 else 0.0, "folds": k}  # fmt: skip
    t = mean / se
    half = float(st.t.ppf((1 + confidence) / 2, k - 1)) * se
    p = float(2 * st.t.sf(abs(t), k - 1))
    return {"mean_diff": mean, "ci_low": mean - half, "ci_high": mean + half, "t": t, "p": p,
            "folds": k}  # fmt: skip


def _by_config(df: pd.DataFrame, column: str) -> dict[str, float]:
    """config_id -> the first finite value of `column` (NaN when there is none)."""
    if column not in df:
        return {}
    values = pd.to_numeric(df[column], errors="coerce")
    return values.groupby(df["config_id"].astype(str)).first().to_dict()


def compare_configs(
    folds: pd.DataFrame | None,
    *,
    metric: str = "accuracy",
    split: str = "test",
    metrics: Sequence[str] = METRICS,
    costs: pd.DataFrame | None = None,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """The comparison table (comparison.parquet): one row per config × metric on `split` (the
    held-out fold), best config first. Each row has the mean over the folds with its t
    interval, and the difference to the best config (config - best) on the same folds with the
    corrected resampled t-test: `mean_diff`, `diff_ci_low`, `diff_ci_high`, `p_value`.

    The best config has the highest mean `metric`; ties go to fewer MACs (from `costs`, else a
    `macs` column of `folds`), then to the config_id. `rank` is a config's place by that order
    (1 = best), the same on each of its rows. The best's own rows have mean_diff 0 and no
    interval or p-value (NaN): it is not tested against itself."""
    metrics = list(dict.fromkeys([metric, *metrics]))
    what = "the k-fold comparison"
    if folds is None:
        raise MissingDataError(what, "no folds.parquet yet; run `hpsearch kfold RUN_DIR`")
    df = require(folds, "folds", ["config_id", "fold", "split", *metrics], what=what)
    part = df[df["split"].astype(str) == split].assign(
        config_id=lambda d: d["config_id"].astype(str)
    )
    if part.empty:
        have = ", ".join(sorted(df["split"].astype(str).unique()))
        raise MissingDataError(what, f"the folds table has no {split!r} rows (it has {have})")
    dup = part[part.duplicated(["config_id", "fold"], keep=False)]
    if not dup.empty:
        row = dup.iloc[0]
        raise ValueError(
            f"{what}: config {row['config_id']} has more than one row for fold {row['fold']} of "
            f"the {split} split; expected one per config, fold and split, as `hpsearch kfold` "
            "writes them"
        )
    scores = {
        (config, m): pd.to_numeric(g.set_index("fold")[m], errors="coerce")
        for config, g in part.groupby("config_id", sort=True)
        for m in metrics
    }
    configs = sorted(part["config_id"].unique())
    labels = part.groupby("config_id")["label"].first().to_dict() if "label" in part else {}
    macs = _by_config(part if costs is None else _costs(costs), "macs")
    summary = {
        (c, m): mean_interval(scores[c, m], confidence=confidence) for c in configs for m in metrics
    }

    def order(config: str) -> tuple:
        mean, cost = summary[config, metric]["mean"], macs.get(config, _NAN)
        return (
            -mean if np.isfinite(mean) else math.inf,
            cost if np.isfinite(cost) else math.inf,
            config,
        )

    ranked = sorted(configs, key=order)
    best = ranked[0]
    # The table's k, not the pairs': a fold missing from one config does not change n_test/n_train.
    k = int(part["fold"].nunique())
    ratio = 1 / (k - 1) if k > 1 else None
    rows = []
    for rank, config in enumerate(ranked, start=1):
        for m in metrics:
            if config == best:
                test = {"mean_diff": 0.0, "ci_low": _NAN, "ci_high": _NAN, "p": _NAN}
            else:
                test = corrected_ttest(
                    scores[config, m],
                    scores[best, m],
                    test_train_ratio=ratio,
                    confidence=confidence,
                )
            label = labels.get(config)
            rows.append(
                {
                    "config_id": config,
                    "label": str(label) if pd.notna(label) and str(label) else config,
                    "metric": m,
                    "split": split,
                    **summary[config, m],
                    "best_config_id": best,
                    "mean_diff": test["mean_diff"],
                    "diff_ci_low": test["ci_low"],
                    "diff_ci_high": test["ci_high"],
                    "p_value": test["p"],
                    "rank": rank,
                }
            )
    return coerce(pd.DataFrame(rows, columns=TABLE_COLUMNS["comparison"]), "comparison")


def _costs(costs: pd.DataFrame) -> pd.DataFrame:
    """`costs` with config_id as text and each cost column numeric (NaN where unknown)."""
    require(costs, "costs", ["config_id"], what="the cost of each config")
    out = costs.assign(config_id=costs["config_id"].astype(str))
    for col in COST_COLUMNS:
        out[col] = pd.to_numeric(out[col], errors="coerce") if col in out else _NAN
    return out.drop_duplicates("config_id")


def config_costs(trials: pd.DataFrame, epochs: pd.DataFrame | None = None) -> pd.DataFrame:
    """config_id, params, macs, images_per_s of every trial: a k-fold config_id is the id of
    the search trial it came from. images_per_s is the median training throughput over the
    trial's epochs (the first epoch's warm-up does not move it); NaN what the run lacks."""
    require(trials, "trials", ["trial_id"], what="the cost of each config")
    out = pd.DataFrame({"config_id": trials["trial_id"].astype(str)})
    for col in ("params", "macs"):
        out[col] = pd.to_numeric(trials[col], errors="coerce").to_numpy() if col in trials else _NAN
    speed = _NAN
    if epochs is not None and {"trial_id", "images_per_s"} <= set(epochs.columns):
        per_trial = pd.to_numeric(epochs["images_per_s"], errors="coerce")
        speed = out["config_id"].map(per_trial.groupby(epochs["trial_id"].astype(str)).median())
    out["images_per_s"] = speed
    return out.drop_duplicates("config_id", ignore_index=True)


@dataclass(frozen=True)
class Recommendation:
    """The config to train by the one-standard-error rule, with its k-fold mean and interval
    of `metric` on the held-out folds, its cost (NaN where unknown) and the reason in words.
    `sem` is the best config's standard error, `candidates` the configs within it."""

    config_id: str
    label: str
    metric: str
    mean: float
    ci_low: float
    ci_high: float
    folds: int
    params: float
    macs: float
    images_per_s: float
    best_config_id: str
    best_mean: float
    sem: float
    candidates: tuple[str, ...]
    reason: str

    @property
    def name(self) -> str:
        """'t1 (AlexNet adam lr=0.01)', or the id alone when it is its own label."""
        return (
            self.config_id if self.label == self.config_id else f"{self.config_id} ({self.label})"
        )


def recommend(
    comparison: pd.DataFrame, costs: pd.DataFrame | None = None, *, metric: str = "accuracy"
) -> Recommendation:
    """The one-standard-error rule on `compare_configs`' table: among the configs whose mean
    `metric` is at least the best's mean minus the best's standard error, the one with the
    fewest MACs (ties: fewer parameters, then the higher mean). Configs without a known cost
    come last; without a standard error (one fold) only the best's mean qualifies."""
    what = "the recommendation"
    cols = ["config_id", "metric", "mean", "sem", "ci_low", "ci_high", "folds", "best_config_id"]
    table = require(comparison, "comparison", cols, what=what)
    rows = table[table["metric"] == metric].assign(config_id=lambda d: d["config_id"].astype(str))
    if rows.empty:
        raise MissingDataError(what, f"the comparison table has no {metric!r} rows")
    best_id = str(rows["best_config_id"].iloc[0])
    best = rows[rows["config_id"] == best_id]
    if best.empty or not np.isfinite(best["mean"].iloc[0]):
        raise MissingDataError(what, f"no config has a {pretty(metric)} on the held-out folds")
    best_mean, sem = float(best["mean"].iloc[0]), float(best["sem"].iloc[0])
    threshold = best_mean - (sem if np.isfinite(sem) else 0.0)
    # a hair below the threshold still qualifies: the best itself must never drop out by rounding
    within = rows[rows["mean"] >= threshold - 1e-12]
    within = within.drop(columns=[c for c in COST_COLUMNS if c in within])
    if costs is None:
        within = within.assign(**dict.fromkeys(COST_COLUMNS, _NAN))
    else:
        known = _costs(costs)[["config_id", *COST_COLUMNS]]
        within = within.merge(known, on="config_id", how="left")
    within = within.sort_values(
        ["macs", "params", "mean", "config_id"], ascending=[True, True, False, True],
        na_position="last", kind="stable",
    )  # fmt: skip
    pick = within.iloc[0]
    name, n = pretty(metric), len(within)
    if not np.isfinite(sem):
        reason = f"the best mean {name} {best_mean:.3f} (one fold: no standard error to widen it)"
    elif n == 1:
        reason = (
            f"the best mean {name} {best_mean:.3f}; no other config is within one standard "
            f"error ({sem:.3f}) of it"
        )
    else:
        basis = (
            "fewest MACs" if np.isfinite(pick["macs"])
            else "fewest parameters (MACs unknown)" if np.isfinite(pick["params"])
            else "the highest mean (costs unknown)"
        )  # fmt: skip
        reason = (
            f"{basis} among the {n} configs within one standard error ({sem:.3f}) of the "
            f"best's mean {name} {best_mean:.3f}"
        )
    label = pick.get("label")
    return Recommendation(
        config_id=str(pick["config_id"]),
        label=str(label) if pd.notna(label) else str(pick["config_id"]),
        metric=metric,
        mean=float(pick["mean"]),
        ci_low=float(pick["ci_low"]),
        ci_high=float(pick["ci_high"]),
        folds=int(pick["folds"]),
        params=float(pick["params"]),
        macs=float(pick["macs"]),
        images_per_s=float(pick["images_per_s"]),
        best_config_id=best_id,
        best_mean=best_mean,
        sem=sem,
        candidates=tuple(within["config_id"]),
        reason=reason,
    )


@dataclass(frozen=True)
class FinalEvaluation:
    """The latest evaluation on the test part (`hpsearch final`). `evaluation` counts the uses
    of the test part: after the first, the figure has been seen while choosing, so it is no
    longer an unbiased estimate."""

    evaluation: int
    config_id: str
    trial_id: str
    accuracy: float
    macro_precision: float

    @property
    def warning(self) -> str | None:
        return reuse_warning(self.evaluation)


def reuse_warning(evaluation: int) -> str | None:
    """None for the first use of the test part, else why its figure is no longer unbiased."""
    if evaluation <= 1:
        return None
    return (
        f"the test part has been used {evaluation} times: this figure is no longer an unbiased "
        "estimate (choosing among evaluations on it turns it into a validation part)"
    )


def read_final(run_dir: str | Path) -> FinalEvaluation | None:
    """The latest row (highest `evaluation`) of RUN_DIR/final.parquet; None before the first
    `hpsearch final`."""
    path = Path(run_dir) / FINAL_FILE
    if not path.is_file():
        return None
    df = pd.read_parquet(path)
    missing = [c for c in FINAL_COLUMNS if c not in df]
    if missing:
        raise MissingDataError(
            "the final evaluation",
            f"{path} has no column {', '.join(missing)}; write it again with `hpsearch final`",
        )
    df = df.assign(evaluation=pd.to_numeric(df["evaluation"], errors="coerce")).dropna(
        subset=["evaluation"]
    )
    if df.empty:
        return None
    row = df.sort_values("evaluation", kind="stable").iloc[-1]
    return FinalEvaluation(
        evaluation=int(row["evaluation"]),
        config_id=str(row["config_id"]),
        trial_id=str(row["trial_id"]),
        accuracy=float(row["accuracy"]),
        macro_precision=float(row["macro_precision"]),
    )


@dataclass(frozen=True)
class Answer:
    """The answer to "which CNN to train" for one run: the comparison table, each config's
    cost, the recommendation and the latest evaluation on the test part (None before
    `hpsearch final`)."""

    recommendation: Recommendation
    comparison: pd.DataFrame
    costs: pd.DataFrame
    final: FinalEvaluation | None


def recommend_run(run: Run | str | Path) -> Answer:
    """The answer for a run directory (or a loaded `Run`) from its folds, trials and epochs;
    the same table `hpsearch kfold` writes to comparison.parquet."""

    run = run if isinstance(run, Run) else load_run(run)
    costs = config_costs(run.trials, run.epochs)
    comparison = compare_configs(run.folds, costs=costs)
    return Answer(recommend(comparison, costs), comparison, costs, read_final(run.path))


def _count(n: float, unit: str) -> str | None:
    """1.23e6 -> '1.23 M parameters'; None when unknown."""
    if not np.isfinite(n):
        return None
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {prefix} {unit}"
    return f"{n:.0f} {unit}"


def cost_text(rec: Recommendation) -> str:
    """'1.23 M parameters, 714 M MACs per image, 1,234 training images/s'."""
    parts = [
        _count(rec.params, "parameters"),
        _count(rec.macs, "MACs per image"),
        f"{rec.images_per_s:,.0f} training images/s" if np.isfinite(rec.images_per_s) else None,
    ]
    return (
        ", ".join(p for p in parts if p) or "unknown (trials.parquet has no params or macs for it)"
    )


def interval_text(rec: Recommendation) -> str:
    """'mean held-out accuracy 0.871 over 10 folds, 95 % interval 0.850 to 0.892'."""
    head = f"mean held-out {pretty(rec.metric)} {rec.mean:.3f} over {rec.folds} folds"
    if not np.isfinite(rec.ci_low):
        return f"{head} (no interval from fewer than 2 folds)"
    return f"{head}, {_PERCENT} interval {rec.ci_low:.3f} to {rec.ci_high:.3f}"


def final_text(final: FinalEvaluation | None) -> str:
    """The test part's figure, or how to get it."""
    if final is None:
        return "not used yet: `hpsearch final RUN_DIR` evaluates the recommendation on it once"
    return (
        f"accuracy {final.accuracy:.3f}, macro precision {final.macro_precision:.3f} "
        f"(config {final.config_id}, evaluation {final.evaluation})"
    )


TOP_SHOWN = (
    "rank", "config_id", "label", "folds", "mean", "ci_low", "ci_high", "mean_diff",
    "diff_ci_low", "diff_ci_high", "p_value",
)  # fmt: skip


def top_comparison(
    comparison: pd.DataFrame, *, metric: str = "accuracy", top: int = 10
) -> pd.DataFrame:
    """The `top` configs' rows of `metric`, best first, with the columns worth reading."""
    rows = comparison[comparison["metric"] == metric].sort_values("rank", kind="stable")
    return rows[[c for c in TOP_SHOWN if c in rows]].head(top)


def format_recommendation(
    rec: Recommendation,
    comparison: pd.DataFrame,
    *,
    final: FinalEvaluation | None = None,
    top: int = 10,
) -> str:
    """The console's "Which CNN to train": the recommendation, why, its interval and cost, the
    test part's figure once `hpsearch final` has run, and the top configs' table."""
    lines = [
        "Which CNN to train",
        f"  train {rec.name}",
        f"  {interval_text(rec)}",
        f"  why: {rec.reason}",
        f"  cost: {cost_text(rec)}",
        f"  test part: {final_text(final)}",
    ]
    if final is not None and final.warning:
        lines.append(f"  WARNING: {final.warning}")
    table = top_comparison(comparison, metric=rec.metric, top=top)
    lines += [
        "",
        f"Top configs by mean held-out {pretty(rec.metric)} ({_PERCENT} intervals; "
        f"difference to the best, {rec.best_config_id}, by the corrected resampled t-test):",
        table.to_string(
            index=False,
            na_rep="-",
            float_format=lambda v: f"{v:.4f}",
            formatters={"p_value": lambda v: f"{v:.2g}" if np.isfinite(v) else "-"},
        ),
    ]
    return "\n".join(lines)
