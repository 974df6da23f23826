"""Confusion matrices: the matrix of one trial, the most-confused class pairs, and classes that
are confused both ways often enough to merge (the seed's Celebrities / People)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hpsearch.analysis._common import MissingDataError, require

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLUMNS = ["trial_id", "true_label", "pred_label", "true_class", "pred_class", "count"]


def _trial_rows(confusion: pd.DataFrame, trial_id: str | None, what: str) -> pd.DataFrame:
    require(confusion, "confusion", COLUMNS, what=what)
    ids = list(dict.fromkeys(confusion["trial_id"].astype(str)))
    if trial_id is None:
        if len(ids) != 1:
            raise ValueError(
                f"{what}: the confusion table holds {len(ids)} trials; pass trial_id "
                "(e.g. run.best_trial_id)"
            )
        trial_id = ids[0]
    rows = confusion[confusion["trial_id"].astype(str) == str(trial_id)]
    if rows.empty:
        raise MissingDataError(
            what,
            f"trial {trial_id} has no confusion matrix (it never finished an evaluation); "
            f"trials with one: {', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''}",
        )
    if "epoch" in rows and rows["epoch"].nunique() > 1:
        rows = rows[rows["epoch"] == rows["epoch"].max()]
    return rows


def confusion_matrix(
    confusion: pd.DataFrame, trial_id: str | None = None, *, normalize: bool = True
) -> pd.DataFrame:
    """The square matrix of one trial: rows are true classes, columns predicted classes, in
    label order. `normalize`: each row divided by its total (rows sum to 1; an empty row is 0)."""
    rows = _trial_rows(confusion, trial_id, "the confusion matrix")
    names = (
        pd.concat(
            [
                rows[["true_label", "true_class"]].set_axis(["label", "name"], axis=1),
                rows[["pred_label", "pred_class"]].set_axis(["label", "name"], axis=1),
            ]
        )
        .drop_duplicates("label")
        .sort_values("label")
    )
    order = names["name"].astype(str).tolist()
    counts = rows.pivot_table(
        index="true_class", columns="pred_class", values="count", aggfunc="sum", fill_value=0
    )
    matrix = counts.reindex(index=order, columns=order, fill_value=0).astype(float)
    matrix.index.name, matrix.columns.name = "true class", "predicted class"
    if normalize:
        totals = matrix.sum(axis=1)
        matrix = matrix.div(totals.where(totals > 0), axis=0).fillna(0.0)
    return matrix


def plot_confusion_matrix(
    confusion: pd.DataFrame,
    trial_id: str | None = None,
    *,
    normalize: bool = True,
    annotate: bool | None = None,
    title: str | None = None,
) -> Figure:
    """The confusion matrix of one trial as a heat map with class names on both axes; rows
    normalised to 1 by default. `annotate` writes each cell's value (default: up to 15 classes)."""
    # lazy: matplotlib, only when a figure is drawn (reading a run stays light)
    from matplotlib.figure import Figure

    matrix = confusion_matrix(confusion, trial_id, normalize=normalize)
    rows = _trial_rows(confusion, trial_id, "the confusion matrix")
    n = len(matrix)
    side = max(5.0, 0.42 * n + 2.5)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    vmax = float(matrix.to_numpy().max()) or 1.0  # the darkest cell is the largest
    im = ax.imshow(matrix.to_numpy(), cmap="Blues", vmin=0, vmax=vmax)
    ax.set_xticks(range(n), matrix.columns, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), matrix.index)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if annotate if annotate is not None else n <= 15:
        for (i, j), v in np.ndenumerate(matrix.to_numpy()):
            if v == 0:
                continue
            text = f"{v:.2f}" if normalize else f"{int(v)}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if v > 0.6 * vmax else "black")  # fmt: skip
    fig.colorbar(
        im, ax=ax, shrink=0.8, label="fraction of the true class" if normalize else "count"
    )
    tid = str(rows["trial_id"].iloc[0])
    epoch = f", epoch {int(rows['epoch'].iloc[0])}" if "epoch" in rows else ""
    total = int(rows["count"].sum())
    norm = ", rows sum to 1" if normalize else ""
    ax.set_title(title or f"Confusion matrix of trial {tid}{epoch} ({total} images{norm})")
    return fig


def confused_pairs(
    confusion: pd.DataFrame, trial_id: str | None = None, *, top: int = 10
) -> pd.DataFrame:
    """The `top` off-diagonal cells by rate: `true_class`, `pred_class`, `count` and `rate`
    (the fraction of `true_class` predicted as `pred_class`)."""
    counts = confusion_matrix(confusion, trial_id, normalize=False)
    rates = confusion_matrix(confusion, trial_id, normalize=True)
    out = pd.DataFrame(
        {
            "true_class": np.repeat(counts.index.to_numpy(), len(counts)),
            "pred_class": np.tile(counts.columns.to_numpy(), len(counts)),
            "count": counts.to_numpy().ravel().astype(int),
            "rate": rates.to_numpy().ravel(),
        }
    )
    out = out[(out["true_class"] != out["pred_class"]) & (out["count"] > 0)]
    return out.sort_values(["rate", "count"], ascending=False).head(top).reset_index(drop=True)


def merge_suggestions(
    confusion: pd.DataFrame, trial_id: str | None = None, *, threshold: float = 0.1
) -> pd.DataFrame:
    """Class pairs confused both ways, each direction at a rate of at least `threshold`: the
    candidates for one merged class. Columns `class_a`, `class_b`, `rate_a_as_b`,
    `rate_b_as_a`, `count` (both directions) and `merge` (the `hpsearch prepare --merge`
    value), strongest pair first."""
    counts = confusion_matrix(confusion, trial_id, normalize=False)
    rates = confusion_matrix(confusion, trial_id, normalize=True).to_numpy()
    names = counts.index.tolist()
    rows = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if rates[i, j] >= threshold and rates[j, i] >= threshold:
                rows.append(
                    {
                        "class_a": names[i],
                        "class_b": names[j],
                        "rate_a_as_b": rates[i, j],
                        "rate_b_as_a": rates[j, i],
                        "count": int(counts.iat[i, j] + counts.iat[j, i]),
                        "merge": f"{names[i]}={names[j]}",
                    }
                )
    out = pd.DataFrame(
        rows, columns=["class_a", "class_b", "rate_a_as_b", "rate_b_as_a", "count", "merge"]
    )
    strength = out["rate_a_as_b"] + out["rate_b_as_a"]
    return out.loc[strength.sort_values(ascending=False).index].reset_index(drop=True)
