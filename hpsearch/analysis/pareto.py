"""Accuracy against cost: each trial's best score against its MACs per image and its
parameters, and the Pareto front, the trials no other trial beats on both (for "the best CNN
under 300 M MACs", read the front at 300 M). After `hpsearch kfold`, the compared configs'
mean held-out score and its 95 % t interval stand beside their trials.

A trial is on the front when no other trial costs at most as much and scores at least as well,
and is strictly better in one of the two; trials identical in both are on it together. Trials
without a best value or a cost (infeasible, pending, a cost never reported) are not on it.
`search.export` writes the fronts into trials.parquet (`rundir.PARETO_COLUMNS`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hpsearch.analysis._common import (
    MissingDataError,
    colors,
    group_label,
    legend_outside,
    new_figure,
    note_empty,
    pretty,
    require,
    trial_label,
)
from hpsearch.rundir import PARETO_COLUMNS, best_column, check_mode, metric_mode

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COSTS = {"macs": "MACs per image", "params": "parameters"}  # models.cost's names, in words
WHAT = "accuracy against cost"


def pareto_front(
    trials: pd.DataFrame,
    *,
    metric: str = "val_accuracy",
    mode: str | None = None,
    cost: str = "macs",
) -> pd.Series:
    """Whether each trial is on the Pareto front of `best_<metric>` (better by `mode`) against
    `cost` (a column, lower is better): a boolean Series on `trials`' index, False for a trial
    without a finite value or cost. Ties: trials with the same cost and value are all on it or
    all off; one with the same value as a cheaper one is off it."""
    mode = check_mode(mode or metric_mode(metric))
    col = best_column(metric)
    name = PARETO_COLUMNS.get(cost, f"pareto_{cost}")
    on = np.zeros(len(trials), dtype=bool)
    if col in trials and cost in trials and len(trials):
        score = pd.to_numeric(trials[col], errors="coerce").to_numpy(dtype=float)
        price = pd.to_numeric(trials[cost], errors="coerce").to_numpy(dtype=float)
        score = -score if mode == "min" else score
        rows = np.flatnonzero(np.isfinite(score) & np.isfinite(price))
        best = -np.inf  # the best score of every cheaper trial
        for value in np.unique(price[rows]):  # ascending
            same = rows[price[rows] == value]
            top = score[same].max()
            if top > best:
                on[same[score[same] == top]] = True
                best = top
    return pd.Series(on, index=trials.index, name=name)


def front_table(
    trials: pd.DataFrame, *, metric: str = "val_accuracy", mode: str | None = None
) -> pd.DataFrame:
    """The trials on either front (by MACs, by parameters), cheapest first: `trial_id`,
    `label` (its architecture and optimizer), `status`, `best_<metric>`, `macs`, `params`
    and the two flags."""
    require(trials, "trials", ["trial_id", best_column(metric)], what=WHAT)
    flags = {c: pareto_front(trials, metric=metric, mode=mode, cost=c) for c in COSTS}
    df = trials.assign(**{PARETO_COLUMNS[c]: f for c, f in flags.items()})
    df = df[np.logical_or.reduce([f.to_numpy() for f in flags.values()])]
    df = df.assign(label=[trial_label(trials, t).partition(" ")[2] for t in df["trial_id"]])
    shown = ["trial_id", "label", "status", best_column(metric), *COSTS, *PARETO_COLUMNS.values()]
    sort = [c for c in COSTS if c in df]
    df = df.sort_values(sort, kind="stable") if sort else df
    return df[[c for c in shown if c in df]].reset_index(drop=True)


def _kfold_points(
    comparison: pd.DataFrame | None, trials: pd.DataFrame, metric: str
) -> pd.DataFrame:
    """The compared configs with a cost: config_id, mean, ci_low, ci_high, macs, params, from
    the k-fold comparison's held-out rows of the metric that matches `metric` (val_accuracy:
    accuracy). A k-fold config_id is the id of the search trial it re-trains."""
    columns = ["config_id", "mean", "ci_low", "ci_high", *COSTS]
    if comparison is None or comparison.empty or "metric" not in comparison:
        return pd.DataFrame(columns=columns)
    kfold_metric = metric.removeprefix("val_").removeprefix("train_")
    rows = comparison[comparison["metric"] == kfold_metric]
    if "split" in rows:
        rows = rows[rows["split"] == "test"]
    costs = trials.assign(config_id=trials["trial_id"].astype(str))
    costs = costs[["config_id", *(c for c in COSTS if c in costs)]].drop_duplicates("config_id")
    points = rows.assign(config_id=rows["config_id"].astype(str)).merge(costs, on="config_id")
    for c in COSTS:
        points[c] = pd.to_numeric(points[c], errors="coerce") if c in points else np.nan
    return points[columns]


def plot_pareto(
    trials: pd.DataFrame,
    comparison: pd.DataFrame | None = None,
    *,
    metric: str = "val_accuracy",
    mode: str | None = None,
    annotate: int = 12,
    title: str | None = None,
) -> Figure:
    """Every trial's best `metric` against its MACs per image (left) and its parameters
    (right), log x axes, coloured by architecture. The Pareto front is a step line through its
    trials, each named (trial id, architecture, optimizer; the cheapest `annotate` of them).
    With `comparison` (`analysis.stats.compare_configs`, after k-fold): each compared config's
    mean held-out score with its 95 % t interval, at its trial's cost."""
    mode = check_mode(mode or metric_mode(metric))
    col = best_column(metric)
    require(trials, "trials", ["trial_id", col], what=WHAT)
    trials = trials.reset_index(drop=True)  # (any index the caller's table had)
    score = pd.to_numeric(trials[col], errors="coerce")
    priced = [
        c for c in COSTS if c in trials and pd.to_numeric(trials[c], errors="coerce").gt(0).any()
    ]
    have = {
        c: trials[score.notna() & pd.to_numeric(trials[c], errors="coerce").gt(0)] for c in priced
    }
    if not any(len(df) for df in have.values()):
        raise MissingDataError(
            WHAT,
            f"no trial has both a {col} and its cost (macs, params in trials.parquet, "
            "written by `hpsearch run` for every trial that trained)",
        )
    arch = trials["arch"].astype(str) if "arch" in trials else pd.Series("trial", trials.index)
    groups = sorted(arch[score.notna()].unique())
    color_of = dict(zip(groups, colors(len(groups)), strict=True))
    kfold = _kfold_points(comparison, trials, metric)
    fig, axes = new_figure(2, width=15, height=5.2)
    handles: dict[str, object] = {}
    for ax, cost in zip(axes, COSTS, strict=True):
        df = have.get(cost)
        if df is None or df.empty:
            note_empty(ax, f"no trial has its {COSTS[cost]} (trials.parquet: {cost})")
            ax.set_xlabel(COSTS[cost])
            continue
        x = pd.to_numeric(df[cost], errors="coerce")
        y = pd.to_numeric(df[col], errors="coerce")
        on = pareto_front(df, metric=metric, mode=mode, cost=cost)
        for group in groups:
            mine = (arch.loc[df.index] == group).to_numpy()
            if mine.any():
                handles[group_label(group)] = ax.scatter(
                    x[mine], y[mine], s=24, color=color_of[group], alpha=0.6, zorder=2
                )
        front = df[on.to_numpy()].assign(at_x=x[on], at_y=y[on]).sort_values(["at_x", "at_y"])
        (line,) = ax.step(
            front["at_x"], front["at_y"], where="post", color="black", lw=1.4, zorder=3
        )
        handles["Pareto front"] = line
        ax.scatter(
            front["at_x"],
            front["at_y"],
            s=60,
            facecolors="none",
            edgecolors="black",
            lw=1.4,
            zorder=4,
        )
        _name_front(ax, front, trials, annotate)
        _draw_kfold(ax, kfold, cost, handles)
        ax.set_xscale("log")
        ax.margins(x=0.12, y=0.08)  # room for the names at both ends
        ax.set_xlabel(f"{COSTS[cost]} (log scale)")
        ax.set_ylabel(f"{pretty(metric)} (best epoch of each trial)")
        ax.set_title(f"against {COSTS[cost]}")
        ax.grid(alpha=0.3, which="both")
    direction = "lower" if mode == "min" else "higher"
    fig.suptitle(title or f"{pretty(metric).capitalize()} against cost ({direction} is better)")
    legend_outside(fig, list(handles.values()), list(handles))
    return fig


def _name_front(ax: Axes, front: pd.DataFrame, trials: pd.DataFrame, most: int) -> None:
    """Name the front's trials beside their points (the cheapest `most` of them)."""
    for i, row in enumerate(front.head(most).itertuples(index=False)):
        ax.annotate(
            trial_label(trials, str(row.trial_id)),
            (row.at_x, row.at_y),
            xytext=(6, 6 if i % 2 == 0 else -12),
            textcoords="offset points",
            fontsize=7,
            zorder=5,
        )


def _draw_kfold(ax: Axes, kfold: pd.DataFrame, cost: str, handles: dict[str, object]) -> None:
    points = kfold[np.isfinite(kfold[cost].astype(float)) & (kfold[cost].astype(float) > 0)]
    if points.empty:
        return
    mean = points["mean"].astype(float).to_numpy()
    low = np.nan_to_num(mean - points["ci_low"].astype(float).to_numpy(), nan=0.0)
    high = np.nan_to_num(points["ci_high"].astype(float).to_numpy() - mean, nan=0.0)
    bars = ax.errorbar(
        points[cost].astype(float), mean, yerr=[low, high], fmt="D", ms=6, color="tab:red",
        ecolor="tab:red", elinewidth=1.4, capsize=4, zorder=6,
    )  # fmt: skip
    handles["k-fold: mean held-out score, 95 % interval"] = bars
    for x, y, config in zip(points[cost], mean, points["config_id"], strict=True):
        ax.annotate(
            f"{config} (k-fold)", (float(x), float(y)), xytext=(-6, -4), ha="right",
            textcoords="offset points", fontsize=7, color="tab:red", zorder=6,
        )  # fmt: skip
