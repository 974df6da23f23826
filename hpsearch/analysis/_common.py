"""Shared helpers: checks that turn missing data into a message, figure and label helpers."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from hpsearch.rundir import TABLE_SOURCES, best_column, rank_trials

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


class MissingDataError(ValueError):
    """The data a plot or table needs is missing or too thin. `what` names the plot or table,
    `reason` says what is missing and how to get it; the message is "what: reason"."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


def require(
    df: pd.DataFrame | None, table: str, columns: Iterable[str] = (), *, what: str
) -> pd.DataFrame:
    """Return `df` if it has rows and `columns`, else raise MissingDataError naming them."""
    source = TABLE_SOURCES.get(table, table)
    if df is None:
        raise MissingDataError(what, f"the {table} table is missing ({source})")
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what}: expected the {table} table as a pandas DataFrame, got {df!r}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MissingDataError(
            what,
            f"the {table} table has no column {', '.join(missing)} ({source}); "
            f"it has {', '.join(map(str, df.columns)) or 'no columns'}",
        )
    if df.empty:
        raise MissingDataError(what, f"the {table} table is empty ({source})")
    return df


def import_optuna():
    """Optuna, imported without tqdm's notebook warning (Optuna imports tqdm.auto)."""

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        # lazy: optuna, only for the study's own views (reading a run stays light)
        import optuna
    return optuna


def pretty(name: str) -> str:
    """'val_macro_precision' -> 'validation macro precision'."""
    words = name.replace("_", " ").split()
    return " ".join("validation" if w == "val" else w for w in words)


def top_trials(
    trials: pd.DataFrame, *, metric: str = "val_accuracy", mode: str | None = None, k: int = 10
) -> pd.DataFrame:
    """The `k` trials with the best `best_<metric>` (the best epoch of each trial), best first.
    Trials without a value (infeasible, diverged, pending) are left out."""
    require(trials, "trials", ["trial_id", best_column(metric)], what=f"ranking trials by {metric}")
    return rank_trials(trials, metric, mode).head(k).reset_index(drop=True)


def group_label(value: Any) -> str:
    """A group value as a legend label: '' (no MLP) reads '(none)', floats are short."""
    if isinstance(value, str):
        return value or "(none)"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def trial_label(trials: pd.DataFrame | None, trial_id: str) -> str:
    """'4e19728c NarrowAlexNet rmsprop' when the trials table is at hand."""
    if trials is None or "trial_id" not in trials:
        return str(trial_id)
    row = trials.loc[trials["trial_id"] == trial_id]
    if row.empty:
        return str(trial_id)
    parts = [str(trial_id)]
    for col in ("arch", "optimizer"):
        if col in row and pd.notna(row[col].iloc[0]):
            parts.append(str(row[col].iloc[0]))
    return " ".join(parts)


def colors(n: int) -> list[Any]:
    """Distinct colours: tab10 up to 10 lines, tab20 up to 20, then a sampled viridis."""
    # lazy: matplotlib, only when a figure is drawn (reading a run stays light)
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["viridis"](i / max(1, n - 1)) for i in range(n)]


def new_figure(ncols: int = 1, *, width: float | None = None, height: float = 4.5):
    """A pyplot-free Figure (nothing global to close, any backend) with `ncols` axes."""
    # lazy: matplotlib, only when a figure is drawn (reading a run stays light)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width or 7.5 * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def legend_outside(fig: Figure, handles: Sequence[Any], labels: Sequence[str], **kw) -> None:
    """One legend right of the axes, so it never covers a curve."""
    if handles:
        ncol = 1 if len(handles) <= 18 else 2
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, ncol=ncol, **kw)


def note_empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
