"""How the search went: the best value so far against trial number and wall-clock time, and
which parameters mattered (Optuna's parameter importances)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hpsearch.analysis._common import (
    MissingDataError,
    import_optuna,
    legend_outside,
    new_figure,
    note_empty,
    pretty,
    require,
)
from hpsearch.rundir import check_mode, metric_mode

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure

STATUS_COLORS = {"completed": "tab:blue", "stopped": "tab:orange"}


def _cumbest(values: pd.Series, mode: str) -> pd.Series:
    best = values.cummin() if mode == "min" else values.cummax()
    return best.ffill()


def _end_times(trials: pd.DataFrame, epochs: pd.DataFrame | None) -> tuple[pd.Series, float]:
    """Each trial's end (unix seconds) and the search's start, from the trials table or else
    from the epochs' timestamps; NaN where unknown."""
    end = pd.Series(np.nan, index=trials.index)
    start = np.nan
    if "end_timestamp" in trials:
        end = pd.to_numeric(trials["end_timestamp"], errors="coerce").astype(float)
    if "start_timestamp" in trials:
        start = pd.to_numeric(trials["start_timestamp"], errors="coerce").min()
    if end.isna().all() and epochs is not None and "timestamp" in epochs and not epochs.empty:
        last = epochs.groupby("trial_id")["timestamp"].max()
        end = trials["trial_id"].map(last).astype(float)
        first = epochs["timestamp"].astype(float)
        if "time_total_s" in epochs:
            first = first - pd.to_numeric(epochs["time_total_s"], errors="coerce").fillna(0)
        start = first.min()
    if np.isnan(start):
        start = end.min()
    return end, float(start)


def best_so_far(
    trials: pd.DataFrame,
    epochs: pd.DataFrame | None = None,
    *,
    metric: str = "val_accuracy",
    mode: str | None = None,
) -> pd.DataFrame:
    """One row per trial in the order they started: `trial_number` (1-based), `trial_id`,
    `status`, `value` (`best_<metric>`, NaN for trials without one), `best` (the best value
    up to this trial), `elapsed_s` (when the trial ended, since the search started) and
    `best_by_time` (the best value among the trials ended by then)."""
    col = f"best_{metric}"
    require(trials, "trials", ["trial_id", col], what="the search progress")
    mode = check_mode(mode or metric_mode(metric))
    df = trials.reset_index(drop=True)
    if "start_timestamp" in df:
        df = df.sort_values("start_timestamp", kind="stable", na_position="last")
    end, start = _end_times(df, epochs)
    out = pd.DataFrame(
        {
            "trial_number": np.arange(1, len(df) + 1),
            "trial_id": df["trial_id"].to_numpy(),
            "status": df["status"].to_numpy() if "status" in df else "completed",
            "value": pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float),
            "elapsed_s": (end - start).to_numpy(dtype=float),
        }
    )
    out["best"] = _cumbest(out["value"], mode)
    by_time = out.sort_values("elapsed_s", kind="stable", na_position="last")
    out["best_by_time"] = _cumbest(by_time["value"], mode).reindex(out.index)
    out.loc[out["elapsed_s"].isna(), "best_by_time"] = np.nan
    return out


def plot_search_progress(
    trials: pd.DataFrame,
    epochs: pd.DataFrame | None = None,
    *,
    metric: str = "val_accuracy",
    mode: str | None = None,
    title: str | None = None,
) -> Figure:
    """The best `metric` so far (a step line) and every trial's value (dots) against trial
    number (left) and wall-clock minutes since the search started (right). Respects `mode`
    (for losses the line goes down). Trials without a value are crosses at the bottom."""
    mode = mode or metric_mode(metric)
    df = best_so_far(trials, epochs, metric=metric, mode=mode)
    if df["value"].isna().all():
        raise MissingDataError("the search progress", f"no trial has a {metric} yet")
    fig, (ax_n, ax_t) = new_figure(2, width=14, height=4.6)
    handles: dict[str, Any] = {}
    for ax, x_col, best_col, xlabel in (
        (ax_n, "trial_number", "best", "trial number (in order of start)"),
        (ax_t, "elapsed_s", "best_by_time", "wall-clock minutes since the search started"),
    ):
        scale = 60.0 if x_col == "elapsed_s" else 1.0
        have = df[df[x_col].notna()].sort_values(x_col)
        if have.empty:
            note_empty(ax, "no timestamps in trials or epochs")
            ax.set_xlabel(xlabel)
            continue
        x = have[x_col] / scale
        (line,) = ax.step(x, have[best_col], where="post", color="black", linewidth=1.6)
        handles["best so far"] = line
        for status, g in have[have["value"].notna()].groupby("status"):
            color = STATUS_COLORS.get(str(status), "tab:gray")
            handles[str(status)] = ax.scatter(
                g[x_col] / scale, g["value"], s=28, color=color, zorder=3, alpha=0.85
            )
        none = have[have["value"].isna()]
        if not none.empty:
            # lazy: matplotlib, only when a figure is drawn (reading a run stays light)
            from matplotlib.transforms import blended_transform_factory

            bottom = blended_transform_factory(ax.transData, ax.transAxes)
            handles["no value (infeasible, diverged, error)"] = ax.scatter(
                none[x_col] / scale, np.full(len(none), 0.02), marker="x", color="tab:red",
                transform=bottom, clip_on=False, zorder=3,
            )  # fmt: skip
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{pretty(metric)} (best epoch of each trial)")
        ax.grid(alpha=0.3)
    # lazy: matplotlib, only when a figure is drawn (reading a run stays light)
    from matplotlib.ticker import MaxNLocator

    ax_n.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_n.set_title("by trial number")
    ax_t.set_title("by wall-clock time")
    direction = "lowest" if mode == "min" else "highest"
    fig.suptitle(title or f"Search progress: {direction} {pretty(metric)} so far")
    legend_outside(fig, list(handles.values()), list(handles))
    return fig


def param_importances(
    study: optuna.Study,
    *,
    min_trials: int = 5,
    seed: int = 0,
    params: Sequence[str] | None = None,
) -> pd.Series:
    """Optuna's parameter importances (fANOVA, seeded; they sum to 1), largest first.
    Needs at least `min_trials` completed trials with a value."""
    optuna = import_optuna()
    # lazy: optuna, only for the study's own views (reading a run stays light)
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    if len(study.directions) != 1:
        raise ValueError("parameter importances: the study has several objectives; expected one")
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    done = [t for t in done if t.value is not None and np.isfinite(t.value)]
    if len(done) < min_trials:
        raise MissingDataError(
            "parameter importances",
            f"they need at least {min_trials} completed trials in the Optuna study "
            f"{study.study_name!r}; it has {len(done)} (run more trials)",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small studies: Optuna warns about thin regimes
        try:
            result = get_param_importances(
                study, evaluator=FanovaImportanceEvaluator(seed=seed), params=params
            )
        except (ValueError, RuntimeError) as e:
            raise MissingDataError(
                "parameter importances", f"Optuna could not compute them: {e}"
            ) from e
    if not result:
        raise MissingDataError("parameter importances", "no parameter varied in the study")
    return pd.Series(result, name="importance", dtype=float).rename_axis("parameter")


def plot_param_importances(
    importances: pd.Series | Mapping[str, float],
    *,
    top: int | None = None,
    title: str | None = None,
) -> Figure:
    """A horizontal bar per parameter, most important on top, the value at the end of the bar."""
    s = pd.Series(importances, dtype=float).sort_values(ascending=False)
    if s.empty:
        raise MissingDataError("parameter importances", "nothing to plot")
    if top is not None:
        s = s.head(top)
    fig, (ax,) = new_figure(width=8, height=max(2.5, 0.35 * len(s) + 1.2))
    y = np.arange(len(s))[::-1]
    ax.barh(y, s.to_numpy(), color="tab:blue", alpha=0.8)
    ax.set_yticks(y, s.index.astype(str))
    for yi, v in zip(y, s.to_numpy(), strict=True):
        ax.text(v, yi, f" {v:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, max(float(s.max()), 1e-9) * 1.18)
    ax.set_xlabel("importance (fANOVA; all parameters sum to 1)")
    ax.set_title(title or "Parameter importances for the objective")
    ax.grid(axis="x", alpha=0.3)
    return fig
