"""Training curves: the rolling training loss over steps (per trial or per group of trials)
and train vs validation metrics per epoch."""

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
    top_trials,
    trial_label,
)
from hpsearch.rundir import metric_mode

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

QUANTITIES = ("accuracy", "macro_precision", "loss")


def _select_ids(df: pd.DataFrame, trial_ids: Sequence[str] | None, what: str) -> pd.DataFrame:
    if trial_ids is None:
        return df
    ids = [str(t) for t in trial_ids]
    unknown = sorted(set(ids) - set(df["trial_id"].astype(str)))
    if unknown:
        raise MissingDataError(what, f"no rows for trial(s) {', '.join(unknown)}")
    return df[df["trial_id"].astype(str).isin(ids)]


def rolling_loss(
    steps: pd.DataFrame,
    trials: pd.DataFrame | None = None,
    *,
    window: int = 50,
    by: str | None = None,
    min_periods: int | None = None,
    trial_ids: Sequence[str] | None = None,
    exclude_status: Sequence[str] = ("diverged",),
) -> pd.DataFrame:
    """The training loss per step and its rolling mean and standard deviation.

    Without `by`, one curve per trial. With `by` (a column of `trials`, e.g. "arch"), the
    trials of a group are averaged at each step first, then the group's curve is rolled.
    Later steps of a group average only the trials still running there (ASHA stops some).
    Non-finite losses count as missing. Unless `trial_ids` names them, trials whose status
    (in `trials`) is in `exclude_status` are left out: a diverged trial's loss explodes before
    it turns NaN. `min_periods` defaults to `window` (pandas' default): a curve starts at
    step `window`.

    Returns one row per group and step: the group column (`trial_id` or `by`), `step`,
    `loss` (the mean over the group's trials), `trials` (how many had a finite loss there),
    `mean` and `std` (rolling over `window` steps of `loss`).
    """
    what = "the training-loss curves"
    require(steps, "steps", ["trial_id", "step", "loss"], what=what)
    if window < 1:
        raise ValueError(f"window must be at least 1 step, got {window}")
    periods = window if min_periods is None else min_periods
    df = _select_ids(steps[["trial_id", "step", "loss"]], trial_ids, what)
    if trial_ids is None and trials is not None and "status" in trials and exclude_status:
        dropped = trials.loc[trials["status"].isin(list(exclude_status)), "trial_id"]
        df = df[~df["trial_id"].isin(dropped)]
    loss = pd.to_numeric(df["loss"], errors="coerce").astype(float)
    df = df.assign(loss=loss.where(np.isfinite(loss)))
    key = "trial_id"
    if by is not None and by != "trial_id":
        require(trials, "trials", ["trial_id", by], what=f"grouping the loss curves by {by!r}")
        groups = trials.drop_duplicates("trial_id").set_index("trial_id")[by]
        df = df.assign(**{by: df["trial_id"].map(groups)})
        df = df[df[by].notna()]
        key = by
    if df.empty:
        raise MissingDataError(what, "no steps left for the chosen trials")
    per_step = (
        df.groupby([key, "step"], sort=True)
        .agg(loss=("loss", "mean"), trials=("loss", "count"))
        .reset_index()
    )
    rolled = per_step.groupby(key, sort=False)["loss"]
    per_step["mean"] = rolled.transform(lambda s: s.rolling(window, min_periods=periods).mean())
    per_step["std"] = rolled.transform(lambda s: s.rolling(window, min_periods=periods).std())
    return per_step


def draw_rolling(
    ax: Axes,
    curves: pd.DataFrame,
    *,
    stat: str = "mean",
    trials: pd.DataFrame | None = None,
    color_of: dict[Any, Any] | None = None,
    window: int = 50,
) -> tuple[list[Any], list[str]]:
    """Draw the curves of `rolling_loss`; return legend handles and labels."""
    key = curves.columns[0]
    keys = list(dict.fromkeys(curves[key]))
    color_of = color_of or dict(zip(keys, colors(len(keys)), strict=True))
    handles, labels = [], []
    for value in keys:
        c = curves[curves[key] == value]
        (line,) = ax.plot(c["step"], c[stat], color=color_of[value], linewidth=1.4)
        if key == "trial_id":
            label = trial_label(trials, value)
        else:
            n = int(c["trials"].max())
            label = f"{group_label(value)} ({n} trial{'s' if n != 1 else ''})"
        if c[stat].isna().all():
            label += f" (< {window} steps)"
        handles.append(line)
        labels.append(label)
    ax.set_xlabel("training step (mini-batch)")
    ax.set_ylabel(f"training loss, rolling {stat} ({window} steps)")
    ax.grid(alpha=0.3)
    _clip_spikes(ax, curves[stat])
    return handles, labels


def _clip_spikes(ax: Axes, values: pd.Series) -> None:
    """Keep a few exploding values (a trial on its way to diverging) from flattening the rest."""
    v = values.dropna()
    if len(v) < 10:
        return
    fence = 5 * float(np.nanpercentile(v, 90))
    if float(v.max()) > fence > 0:
        ax.set_ylim(bottom=min(0.0, float(v.min())), top=1.1 * float(v[v <= fence].max()))
        ax.text(0.99, 0.99, "y axis clipped", transform=ax.transAxes, ha="right", va="top",
                fontsize=7, color="0.4")  # fmt: skip


def plot_loss_curves(
    steps: pd.DataFrame,
    trials: pd.DataFrame | None = None,
    *,
    window: int = 50,
    by: str | None = None,
    stat: str = "mean",
    trial_ids: Sequence[str] | None = None,
    min_periods: int | None = None,
    exclude_status: Sequence[str] = ("diverged",),
    title: str | None = None,
) -> Figure:
    """Training loss over steps, rolling mean (`stat="mean"`) or rolling standard deviation
    (`stat="std"`), one line per trial or per group of trials (`by`, e.g. "arch"); see
    `rolling_loss` for the options."""
    if stat not in ("mean", "std"):
        raise ValueError(f"stat must be 'mean' or 'std', got {stat!r}")
    curves = rolling_loss(
        steps,
        trials,
        window=window,
        by=by,
        min_periods=min_periods,
        trial_ids=trial_ids,
        exclude_status=exclude_status,
    )
    fig, (ax,) = new_figure(width=10)
    handles, labels = draw_rolling(ax, curves, stat=stat, trials=trials, window=window)
    if title is None:
        what = "spread (rolling std)" if stat == "std" else "(rolling mean)"
        title = f"Training loss {what} {f'by {by}' if by else 'per trial'}, {window}-step window"
    ax.set_title(title)
    legend_outside(fig, handles, labels, title=by or "trial")
    return fig


def plot_accuracy_curves(
    epochs: pd.DataFrame,
    trials: pd.DataFrame | None = None,
    *,
    trial_ids: Sequence[str] | None = None,
    top: int = 5,
    metric: str = "val_accuracy",
    mode: str | None = None,
    quantity: str = "accuracy",
    title: str | None = None,
) -> Figure:
    """Train (solid) vs validation (dashed) `quantity` per epoch, one colour per trial.
    Without `trial_ids`, the `top` trials by `metric` (from `trials`, else from `epochs`)."""
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity must be one of {', '.join(QUANTITIES)}, got {quantity!r}")
    cols = [f"train_{quantity}", f"val_{quantity}"]
    what = f"the train vs validation {pretty(quantity)} curves"
    require(epochs, "epochs", ["trial_id", "epoch", *cols], what=what)
    mode = mode or metric_mode(metric)
    if trial_ids is None:
        if trials is not None and f"best_{metric}" in trials:
            ids = top_trials(trials, metric=metric, mode=mode, k=top)["trial_id"].tolist()
        else:
            require(epochs, "epochs", [metric], what=what)
            best = epochs.groupby("trial_id")[metric].agg(mode)
            ids = best.dropna().sort_values(ascending=mode == "min").head(top).index.tolist()
        ids = [i for i in ids if i in set(epochs["trial_id"])]
        if not ids:
            raise MissingDataError(what, "no trial has finished an epoch")
        chosen = f"top {len(ids)} trials by {metric}"
    else:
        ids = [str(t) for t in trial_ids]
        chosen = "selected trials"
    df = _select_ids(epochs, ids, what)
    fig, (ax,) = new_figure(width=10)
    handles, labels = [], []
    for tid, color in zip(ids, colors(len(ids)), strict=True):
        t = df[df["trial_id"] == tid].sort_values("epoch")
        (h,) = ax.plot(t["epoch"], t[cols[0]], color=color, marker="o", markersize=3)
        ax.plot(t["epoch"], t[cols[1]], color=color, marker="s", markersize=3, linestyle="--")
        handles.append(h)
        labels.append(trial_label(trials, tid))
    handles, labels = with_style_legend(handles, labels)
    # lazy: matplotlib, only when a figure is drawn (reading a run stays light)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(pretty(quantity))
    ax.grid(alpha=0.3)
    ax.set_title(title or f"Train vs validation {pretty(quantity)}: {chosen}")
    legend_outside(fig, handles, labels)
    return fig


def with_style_legend(handles: list[Any], labels: list[str]) -> tuple[list[Any], list[str]]:
    """Append 'train' (solid) and 'validation' (dashed) entries to a colour legend."""
    # lazy: matplotlib, only when a figure is drawn (reading a run stays light)
    from matplotlib.lines import Line2D

    style = [
        Line2D([], [], color="0.3", marker="o", markersize=3, label="train"),
        Line2D([], [], color="0.3", marker="s", markersize=3, linestyle="--", label="validation"),
    ]
    return [*handles, *style], [*labels, "train", "validation"]
