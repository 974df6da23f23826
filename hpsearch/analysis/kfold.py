"""K-fold error estimates (the seed's error_estimation plots): the spread of each config's
scores over the folds, on the training folds and on the held-out fold."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hpsearch.analysis._common import (
    MissingDataError,
    colors,
    legend_outside,
    new_figure,
    pretty,
    require,
)
from hpsearch.analysis.stats import mean_interval

if TYPE_CHECKING:
    from matplotlib.figure import Figure

WHIS = 1.5  # Tukey's fences, matplotlib's boxplot default
SPLITS = ("train", "test")


def _require_folds(folds: pd.DataFrame | None, metrics: Sequence[str], what: str) -> pd.DataFrame:
    if folds is None:
        raise MissingDataError(what, "no folds.parquet yet; run `hpsearch kfold RUN_DIR`")
    return require(folds, "folds", ["config_id", "fold", "split", *metrics], what=what)


def box_stats(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Median, quartiles and Tukey whisker ends exactly as matplotlib's boxplot draws them."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return dict.fromkeys(("median", "q1", "q3", "iqr", "whisker_low", "whisker_high"), np.nan)
    q1, median, q3 = np.percentile(x, [25, 50, 75])
    iqr = q3 - q1
    above = x[x <= q3 + WHIS * iqr]
    below = x[x >= q1 - WHIS * iqr]
    high = q3 if above.size == 0 or above.max() < q3 else above.max()
    low = q1 if below.size == 0 or below.min() > q1 else below.min()
    return {
        "median": float(median),
        "q1": float(q1),
        "q3": float(q3),
        "iqr": float(iqr),
        "whisker_low": float(low),
        "whisker_high": float(high),
    }


def _config_names(df: pd.DataFrame) -> dict[str, str]:
    """config_id -> tick label: the id, and the readable `label` column when there is one."""
    names = {}
    for config, g in df.groupby(df["config_id"].astype(str), sort=True):
        label = g["label"].dropna().astype(str) if "label" in g else pd.Series(dtype=str)
        names[config] = (
            f"{config}\n{label.iloc[0]}" if len(label) and label.iloc[0] != config else config
        )
    return names


def kfold_summary(
    folds: pd.DataFrame | None, *, metrics: Sequence[str] = ("accuracy", "macro_precision")
) -> pd.DataFrame:
    """One row per config × split × metric: `folds` (n), `mean`, `std` (ddof 1), `sem`, the
    95 % t interval of the mean (`ci_low`, `ci_high`; `analysis.stats.mean_interval`),
    `median`, `q1`, `q3`, `iqr`, `whisker_low`, `whisker_high` (Tukey 1.5 IQR) and `outliers`
    (how many folds lie beyond the whiskers)."""
    df = _require_folds(folds, metrics, "the k-fold summary")
    rows = []
    for (config, split), g in df.groupby(["config_id", "split"], sort=True):
        for metric in metrics:
            x = pd.to_numeric(g[metric], errors="coerce").dropna()
            stats = box_stats(x)
            interval = mean_interval(x)
            outside = (x < stats["whisker_low"]) | (x > stats["whisker_high"])
            rows.append(
                {
                    "config_id": config,
                    "split": split,
                    "metric": metric,
                    "folds": int(x.size),
                    "mean": float(x.mean()) if x.size else np.nan,
                    "std": float(x.std()) if x.size > 1 else np.nan,
                    **{key: interval[key] for key in ("sem", "ci_low", "ci_high")},
                    **stats,
                    "outliers": int(outside.sum()),
                }
            )
    return pd.DataFrame(rows)


def plot_kfold(
    folds: pd.DataFrame | None,
    *,
    metrics: Sequence[str] = ("accuracy", "macro_precision"),
    annotate: bool | None = None,
    title: str | None = None,
) -> Figure:
    """Box plots over the folds: train (left) and test (right), one box per config and metric,
    the median and IQR written above each box (`annotate`, default up to 16 boxes a panel)."""
    df = _require_folds(folds, metrics, "the k-fold error estimates")
    splits = [s for s in SPLITS if (df["split"] == s).any()]
    splits += sorted(set(df["split"].astype(str)) - set(SPLITS))
    if not splits:
        raise MissingDataError("the k-fold error estimates", "the folds table has no split")
    names = _config_names(df)
    configs = list(names)
    metric_color = dict(zip(metrics, colors(len(metrics)), strict=True))
    fig, axes = new_figure(len(splits), width=6.5 * len(splits) + 1.5, height=5.0)
    boxes_per_panel = len(configs) * len(metrics)
    annotate = boxes_per_panel <= 16 if annotate is None else annotate
    for ax, split in zip(axes, splits, strict=True):
        part = df[df["split"] == split]
        lows, highs = [], []
        for i, config in enumerate(configs):
            g = part[part["config_id"].astype(str) == config]
            for j, metric in enumerate(metrics):
                x = pd.to_numeric(g[metric], errors="coerce").dropna().to_numpy()
                if x.size == 0:
                    continue
                pos = i * (len(metrics) + 1) + j
                bp = ax.boxplot(
                    [x], positions=[pos], widths=0.7, patch_artist=True, whis=WHIS,
                    medianprops={"color": "black"}, flierprops={"markersize": 4},
                )  # fmt: skip
                bp["boxes"][0].set_facecolor((*metric_color[metric][:3], 0.55))
                lows.append(x.min())
                highs.append(x.max())
                if annotate:
                    s = box_stats(x)
                    ax.annotate(
                        f"med {s['median']:.3f}\nIQR {s['iqr']:.3f}",
                        (pos, x.max()), xytext=(0, 5), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7,
                    )  # fmt: skip
        centers = [i * (len(metrics) + 1) + (len(metrics) - 1) / 2 for i in range(len(configs))]
        ax.set_xticks(centers, list(names.values()), rotation=20 if len(configs) > 4 else 0)
        ax.set_xlim(-0.8, len(configs) * (len(metrics) + 1) - 1.2)
        if lows:
            lo, hi = min(lows), max(highs)
            span = (hi - lo) or max(abs(hi) * 0.02, 0.01)
            ax.set_ylim(lo - 0.08 * span, hi + (0.3 if annotate else 0.08) * span)
        n = part.groupby("config_id")["fold"].nunique()
        folds_text = f"{n.max()} folds" if n.min() == n.max() else f"{n.min()}-{n.max()} folds"
        ax.set_title(f"{split} ({folds_text})")
        ax.set_xlabel("config")
        ax.set_ylabel("score")
        ax.grid(axis="y", alpha=0.3)
    # lazy: matplotlib, only when a figure is drawn (reading a run stays light)
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=(*metric_color[m][:3], 0.55), edgecolor="black") for m in metrics]
    legend_outside(fig, handles, [pretty(m) for m in metrics], title="metric")
    fig.suptitle(title or "K-fold error estimates: score spread over the folds")
    return fig


SUMMARY_SHOWN = (
    "config_id", "split", "metric", "folds", "mean", "std", "ci_low", "ci_high", "median", "iqr",
    "whisker_low", "whisker_high",
)  # fmt: skip


def format_kfold_summary(summary: pd.DataFrame) -> str:
    """`kfold_summary`'s table as the console prints it (4 decimals)."""
    shown = [c for c in SUMMARY_SHOWN if c in summary]
    return summary[shown].to_string(index=False, float_format=lambda v: f"{v:.4f}")
