"""Comparisons of groups of trials, as in the seed study: architectures (and their stride and
kernel variants), optimizers, dropout p."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hpsearch.analysis._common import (
    MissingDataError,
    colors,
    group_label,
    legend_outside,
    new_figure,
    pretty,
    require,
)
from hpsearch.analysis.curves import (
    QUANTITIES,
    draw_rolling,
    plot_loss_curves,
    rolling_loss,
    with_style_legend,
)
from hpsearch.rundir import best_column, rank_trials

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SELECTIONS = ("mean", "best")


def group_trials(
    trials: pd.DataFrame,
    by: str,
    *,
    select: str = "mean",
    metric: str = "val_accuracy",
    mode: str | None = None,
    exclude_status: Sequence[str] = ("diverged",),
    what: str = "the comparison",
) -> pd.DataFrame:
    """`trial_id` and `by` of the trials that make up each group: all of them
    (`select="mean"`), or the best one by `best_<metric>` (`select="best"`). Trials whose
    status is in `exclude_status` are left out (a diverged trial's exploding loss would swamp
    its group's mean). Needs two groups."""
    if select not in SELECTIONS:
        raise ValueError(f"select must be 'mean' or 'best', got {select!r}")
    require(trials, "trials", ["trial_id"], what=what)
    if by not in trials:
        raise MissingDataError(
            what, f"the trials table has no {by!r} column (the experiment did not search it)"
        )
    df = trials[trials[by].notna()]
    if "status" in df and exclude_status:
        df = df[~df["status"].isin(list(exclude_status))]
    if select == "best":
        require(trials, "trials", [best_column(metric)], what=what)
        df = rank_trials(df, metric, mode).drop_duplicates(by)
    values = sorted(df[by].unique(), key=str)
    if len(values) < 2:
        only = f"only one {by} in this run ({group_label(values[0])})" if values else f"no {by}"
        raise MissingDataError(what, f"{only}; nothing to compare")
    return df[["trial_id", by]].sort_values(by, key=lambda s: s.astype(str))


def _with_steps(steps: pd.DataFrame | None, ids: pd.Series, what: str) -> list[str] | None:
    """The trials among `ids` that have training steps (an infeasible trial has none)."""
    if steps is None or "trial_id" not in steps or steps.empty:
        return None  # rolling_loss says what is missing
    have = set(steps["trial_id"])
    found = [t for t in ids if t in have]
    if not found:
        raise MissingDataError(what, "none of the compared trials has training steps")
    return found


def plot_architecture_comparison(
    steps: pd.DataFrame,
    epochs: pd.DataFrame,
    trials: pd.DataFrame,
    *,
    by: str = "arch",
    window: int = 50,
    select: str = "mean",
    metric: str = "val_accuracy",
    mode: str | None = None,
    quantity: str = "accuracy",
    min_periods: int | None = None,
    title: str | None = None,
) -> Figure:
    """One line per value of `by` (a preset with "arch"; "model_strides" or "model_kernels"
    for the stride and kernel studies): the rolling training loss over steps (left) and the
    train (solid) and validation (dashed) `quantity` per epoch (right). Each group is the mean
    over its trials (`select="mean"`; later epochs and steps average only the trials ASHA
    let run that far) or its best trial by `metric` (`select="best"`)."""
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity must be one of {', '.join(QUANTITIES)}, got {quantity!r}")
    what = f"the comparison by {by}"
    members = group_trials(trials, by, select=select, metric=metric, mode=mode, what=what)
    cols = [f"train_{quantity}", f"val_{quantity}"]
    require(epochs, "epochs", ["trial_id", "epoch", *cols], what=what)
    keys = list(dict.fromkeys(members[by]))
    color_of = dict(zip(keys, colors(len(keys)), strict=True))
    fig, (ax_loss, ax_acc) = new_figure(2, width=14, height=4.8)

    curves = rolling_loss(
        steps,
        members,
        window=window,
        by=by,
        min_periods=min_periods,
        trial_ids=_with_steps(steps, members["trial_id"], what),
    )
    draw_rolling(ax_loss, curves, trials=trials, color_of=color_of, window=window)
    ax_loss.set_title(f"Training loss (rolling mean, {window} steps)")

    ep = epochs.merge(members, on="trial_id")
    per_epoch = ep.groupby([by, "epoch"], sort=True)[cols].mean().reset_index()
    handles, labels = [], []
    for value in keys:
        g = per_epoch[per_epoch[by] == value]
        n = int((members[by] == value).sum())
        (h,) = ax_acc.plot(g["epoch"], g[cols[0]], color=color_of[value], marker="o", ms=3)
        ax_acc.plot(g["epoch"], g[cols[1]], color=color_of[value], marker="s", ms=3, ls="--")
        handles.append(h)
        labels.append(f"{group_label(value)} ({n} trial{'s' if n != 1 else ''})")
    # lazy: matplotlib, only when a figure is drawn (reading a run stays light)
    from matplotlib.ticker import MaxNLocator

    ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel(pretty(quantity))
    ax_acc.set_title(f"Train vs validation {pretty(quantity)} per epoch")
    ax_acc.grid(alpha=0.3)
    how = "mean over the trials of each" if select == "mean" else "best trial of each"
    fig.suptitle(title or f"Compared by {by} ({how} {by})")
    legend_outside(fig, *with_style_legend(handles, labels), title=by)
    return fig


def plot_optimizer_comparison(
    steps: pd.DataFrame,
    trials: pd.DataFrame,
    *,
    by: str = "optimizer",
    window: int = 50,
    select: str = "mean",
    metric: str = "val_accuracy",
    mode: str | None = None,
    min_periods: int | None = None,
    title: str | None = None,
) -> Figure:
    """Rolling training loss over steps, one line per optimizer (the mean over its trials, or
    its best trial with `select="best"`)."""
    what = "the optimizer comparison"
    members = group_trials(trials, by, select=select, metric=metric, mode=mode, what=what)
    curves = rolling_loss(
        steps,
        members,
        window=window,
        by=by,
        min_periods=min_periods,
        trial_ids=_with_steps(steps, members["trial_id"], what),
    )
    fig, (ax,) = new_figure(width=10)
    handles, labels = draw_rolling(ax, curves, trials=trials, window=window)
    how = "mean over the trials of each" if select == "mean" else "best trial of each"
    ax.set_title(title or f"Optimizers compared: training loss ({how})")
    legend_outside(fig, handles, labels, title=by)
    return fig


def _dropout_column(trials: pd.DataFrame, column: str | None) -> str:
    if column is not None:
        return column
    for col in ("dropout", "model_dropout"):
        if col in trials and trials[col].notna().any():
            return col
    return "dropout"


def plot_dropout_comparison(
    steps: pd.DataFrame,
    trials: pd.DataFrame,
    *,
    column: str | None = None,
    y: str = "final_val_accuracy",
    window: int = 50,
    min_periods: int | None = None,
    max_groups: int = 6,
    exclude_status: Sequence[str] = ("diverged",),
    title: str | None = None,
) -> Figure:
    """Left: rolling training loss coloured by dropout p (grouped by p when there are at most
    `max_groups` values, one line per trial otherwise). Right: `y` of each trial against p;
    trials stopped early (ASHA) are drawn hollow. Trials whose status is in `exclude_status`
    are left out."""
    what = "the dropout comparison"
    col = _dropout_column(trials, column)
    require(trials, "trials", ["trial_id", col, y], what=what)
    df = trials[trials[col].notna()]
    if "status" in df and exclude_status:
        df = df[~df["status"].isin(list(exclude_status))]
    values = np.sort(pd.to_numeric(df[col]).unique())
    if len(values) < 2:
        only = f"only one dropout p in this run ({values[0]:.3g})" if len(values) else "no p"
        raise MissingDataError(what, f"{only}; nothing to compare")
    # lazy: matplotlib, only when a figure is drawn (reading a run stays light)
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    norm = Normalize(float(values.min()), float(values.max()))
    cmap = colormaps["viridis"]
    fig, (ax_loss, ax_y) = new_figure(2, width=14, height=4.8)
    grouped = len(values) <= max_groups
    curves = rolling_loss(
        steps,
        df,
        window=window,
        by=col if grouped else None,
        min_periods=min_periods,
        trial_ids=_with_steps(steps, df["trial_id"], what),
    )
    p_of = df.set_index("trial_id")[col]
    keys = list(dict.fromkeys(curves[curves.columns[0]]))
    color_of = {k: cmap(norm(float(k if grouped else p_of[k]))) for k in keys}
    handles, labels = draw_rolling(ax_loss, curves, trials=trials, color_of=color_of, window=window)
    ax_loss.set_title(f"Training loss (rolling mean, {window} steps) by dropout p")
    if grouped:
        labels = [f"p = {lab}" for lab in labels]
        ax_loss.legend(handles, labels, fontsize=8, title=col, loc="upper right")
    else:
        # lazy: matplotlib, only when a figure is drawn (reading a run stays light)
        from matplotlib.cm import ScalarMappable

        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax_loss, label=f"{col} p")

    finished = df["status"].eq("completed") if "status" in df else pd.Series(True, df.index)
    handles = {}
    for done, label in ((True, "completed"), (False, "stopped early")):
        part = df[(finished == done) & df[y].notna()]
        if part.empty:
            continue
        c = [cmap(norm(float(p))) for p in part[col]]
        kw: dict[str, Any] = {"c": c} if done else {"facecolors": "none", "edgecolors": c}
        ax_y.scatter(part[col], part[y], s=40, linewidths=1.2, **kw)
        handles[label] = Line2D([], [], ls="", marker="o", color="0.4",
                                markerfacecolor="0.4" if done else "none")  # fmt: skip
    ax_y.set_xlabel(f"dropout p ({col})")
    ax_y.set_ylabel(pretty(y))
    ax_y.set_title(f"{pretty(y).capitalize()} by dropout p")
    ax_y.grid(alpha=0.3)
    ax_y.legend(list(handles.values()), list(handles), fontsize=8, loc="best")
    fig.suptitle(title or "Dropout compared")
    return fig


REGULARIZERS = (("l1", "L1"), ("weight_decay", "L2"), ("dropout", "dropout"))


def regularization_labels(trials: pd.DataFrame) -> pd.Series:
    """Each trial's penalties as a label: "L1 1e-05", "L2 0.0005, dropout 0.5", "none"."""
    parts = pd.Series([[] for _ in range(len(trials))], index=trials.index, dtype=object)
    for col, name in REGULARIZERS:
        if col not in trials:
            continue
        values = pd.to_numeric(trials[col], errors="coerce").fillna(0.0)
        for i, v in values.items():
            if v > 0:
                parts[i] = [*parts[i], f"{name} {v:.3g}"]
    return parts.map(lambda p: ", ".join(p) or "none")


def plot_regularization_comparison(
    steps: pd.DataFrame,
    trials: pd.DataFrame,
    *,
    window: int = 50,
    min_periods: int | None = None,
    exclude_status: Sequence[str] = ("diverged",),
    title: str | None = None,
) -> Figure:
    """The seed's regularisation figure: rolling training loss, one line per setting of the
    penalties (`l1`, the optimizer's `weight_decay` = L2, `dropout`), the mean over its trials."""
    what = "the regularization comparison"
    require(trials, "trials", ["trial_id"], what=what)
    if not any(c in trials for c in ("l1", "weight_decay")):
        raise MissingDataError(
            what,
            "the trials have no l1 or weight_decay: search `l1` or an optimizer's `weight_decay`",
        )
    labelled = trials.assign(regularization=regularization_labels(trials))
    if labelled["regularization"].nunique() < 2:
        raise MissingDataError(what, "every trial ran with the same penalties; nothing to compare")
    return plot_loss_curves(
        steps,
        labelled,
        by="regularization",
        window=window,
        min_periods=min_periods,
        exclude_status=exclude_status,
        title=title or f"Regularization compared: training loss ({window}-step rolling mean)",
    )
