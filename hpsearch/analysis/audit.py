"""The data audit (`hpsearch audit`): likely wrong labels, near-duplicates across the parts and
classes, and look-alike classes, as one findings table (audit.parquet), with its views.

Label issues follow confident learning (Northcutt, Jiang & Chuang, "Confident Learning:
Estimating Uncertainty in Dataset Labels", JAIR 2021) over out-of-sample class probabilities:
each class's threshold is the mean probability the model gives that class over the images filed
under it; an image counts as confidently of class j when its probability of j reaches j's
threshold (the most probable such class when several do); an image filed under i but
confidently of another class j is a label issue (an off-diagonal entry of the confident joint),
unless the model's own top class is the given one. This is the rule of
`cleanlab.filter.find_label_issues(..., filter_by="confident_learning")` (tests check that the
two agree); cleanlab itself is AGPL-3.0 and not a dependency. Issues are ranked by
self-confidence: score = 1 - the probability of the given class.

The probabilities come from `hpsearch kfold` (predictions.parquet): each train and validation
image from the fold model that did not train on it, each test image from the mean of the fold
models (none trained on it). Reads tables only: numpy and pandas, never torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hpsearch.analysis._common import MissingDataError, require
from hpsearch.analysis.confusion import merge_suggestions
from hpsearch.rundir import coerce, empty_frame

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LABEL, DUPLICATE, LEAK, CONFLICT, LOOKALIKE = "label", "duplicate", "leak", "conflict", "lookalike"
ISSUES = (LABEL, CONFLICT, LEAK, DUPLICATE, LOOKALIKE)  # the table's order
_PREDICTION_COLUMNS = ["config_id", "fold", "path", "part", "label", "class_name", "probs"]
_FLOAT_TOLERANCE = 1e-6  # cleanlab's FLOATING_POINT_COMPARISON


def out_of_sample(
    predictions: pd.DataFrame, config_id: str | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per image (path, part, label, class_name) and its out-of-sample class
    probabilities, float [n, C] in the same order: of config `config_id` (default: the config
    with the most predicted images, the first on a tie). A test image's probabilities are the
    mean over the fold models that predicted it."""
    what = "the out-of-sample predictions"
    require(predictions, "predictions", _PREDICTION_COLUMNS, what=what)
    configs = predictions["config_id"].astype(str)
    if config_id is None:
        config_id = configs.value_counts(sort=True).index[0]
    rows = predictions[configs == str(config_id)]
    if rows.empty:
        raise MissingDataError(
            what,
            f"config {config_id} has no predictions; configs with some: "
            f"{', '.join(sorted(set(configs)))}",
        )
    probs = np.stack(rows["probs"].to_numpy()).astype(np.float64)
    codes, paths = pd.factorize(rows["path"], sort=True)
    summed = np.zeros((len(paths), probs.shape[1]))
    np.add.at(summed, codes, probs)
    counts = np.bincount(codes, minlength=len(paths))
    images = (
        rows.assign(_code=codes)
        .drop_duplicates("_code")
        .sort_values("_code")[["path", "part", "label", "class_name"]]
        .reset_index(drop=True)
    )
    return images, summed / counts[:, None]


def confident_learning(labels: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """Per image: `issue` (the label is likely wrong), `suggested` (the class the image is
    confidently of, else the model's top class) and `score` (1 - the probability of the
    given label: higher is surer), by confident learning's rule (module docstring)."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(
            f"probs must be [n, classes] with one row per label; got {probs.shape} for "
            f"{len(labels)} labels"
        )
    n, k = probs.shape
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must lie in 0..{k - 1} (one column of probs per class)")
    # Per-class thresholds: the mean self-confidence of the images filed under the class (a
    # class with no image gets an unreachable one).
    sums = np.zeros(k)
    np.add.at(sums, labels, probs[np.arange(n), labels])
    counts = np.bincount(labels, minlength=k)
    thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), 2.0)
    thresholds = np.maximum(thresholds, 2 * _FLOAT_TOLERANCE)
    confident = probs >= thresholds - _FLOAT_TOLERANCE
    n_confident = confident.sum(axis=1)
    top = probs.argmax(axis=1)
    guess = np.where(n_confident > 1, top, confident.argmax(axis=1))
    issue = (n_confident > 0) & (guess != labels)
    # Not an issue where the model's top class is the given one (cleanlab's _reduce_issues).
    boosted = probs.copy()
    boosted[np.arange(n), labels] += _FLOAT_TOLERANCE
    issue &= boosted.argmax(axis=1) != labels
    suggested = np.where(n_confident > 0, guess, top)
    return pd.DataFrame(
        {"issue": issue, "suggested": suggested, "score": 1.0 - probs[np.arange(n), labels]}
    )


def label_findings(images: pd.DataFrame, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """The audit rows of the likely wrong labels among `images` (out_of_sample's), surest
    first."""
    found = confident_learning(images["label"].to_numpy(), probs)
    names = np.asarray(classes, dtype=object)
    hits = images[found["issue"].to_numpy()]
    out = pd.DataFrame(
        {
            "path": hits["path"].to_numpy(),
            "issue": LABEL,
            "score": found.loc[found["issue"], "score"].to_numpy(),
            "given": hits["class_name"].to_numpy(),
            "suggested": names[found.loc[found["issue"], "suggested"].to_numpy()],
            "part": hits["part"].to_numpy(),
        }
    )
    return out.sort_values(["score", "path"], ascending=[False, True], ignore_index=True)


def lookalike_findings(
    images: pd.DataFrame, probs: np.ndarray, classes: list[str], *, threshold: float = 0.1
) -> pd.DataFrame:
    """Class pairs whose out-of-sample confusion is at least `threshold` in both directions
    (analysis.merge_suggestions over the out-of-sample predictions): `given` and `suggested`
    are the two classes, `score` the smaller of the two rates, `merge` the value of
    `hpsearch prepare --merge` that would join them."""
    labels = images["label"].to_numpy()
    predicted = probs.argmax(axis=1)
    k = len(classes)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (labels, predicted), 1)
    true, pred = np.divmod(np.arange(k * k), k)
    table = pd.DataFrame(
        {
            "trial_id": "out-of-sample",
            "true_label": true,
            "pred_label": pred,
            "true_class": np.asarray(classes, dtype=object)[true],
            "pred_class": np.asarray(classes, dtype=object)[pred],
            "count": counts.ravel(),
        }
    )
    pairs = merge_suggestions(table, "out-of-sample", threshold=threshold)
    return pd.DataFrame(
        {
            "issue": LOOKALIKE,
            "score": np.minimum(pairs["rate_a_as_b"], pairs["rate_b_as_a"]).to_numpy(),
            "given": pairs["class_a"].to_numpy(),
            "suggested": pairs["class_b"].to_numpy(),
            "merge": pairs["merge"].to_numpy(),
        }
    )


def duplicate_findings(pairs: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """The audit rows of near-duplicate images. `pairs`: columns a, b (row positions in
    `images`) and similarity; `images`: path, class_name, part per row, and optionally
    `confidence` (the out-of-sample probability of the image's given class). Of each pair,
    the image to keep is the one whose label the models believe more (`confidence`: of two
    copies filed under different classes, the likely wrong one goes), else the one in the
    train part, else the first path; the other is reported against it, once (against the
    partner it is most alike): `conflict` when it is filed under another class, else `leak`
    when it is in another part, else `duplicate`. An image kept in every pair it is in is
    never reported, so leaving out every reported image keeps at least one of each set.
    score: the pair's similarity."""
    if pairs.empty:
        return _frame([])
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    order = images.assign(_not_train=images["part"] != "train", _pos=np.arange(len(images)))
    order = order.sort_values(["_not_train", "path"], kind="stable")
    rank = np.empty(len(images), dtype=np.int64)
    rank[order["_pos"].to_numpy()] = np.arange(len(images))
    a_goes = rank[a] > rank[b]
    if "confidence" in images:
        conf = images["confidence"].to_numpy(dtype=np.float64)
        classes = images["class_name"].to_numpy()
        known = (classes[a] != classes[b]) & ~np.isnan(conf[a]) & ~np.isnan(conf[b])
        a_goes = np.where(known & (conf[a] != conf[b]), conf[a] < conf[b], a_goes)
    copy, kept = np.where(a_goes, a, b), np.where(a_goes, b, a)
    best = (
        pd.DataFrame({"copy": copy, "kept": kept, "score": pairs["similarity"].to_numpy()})
        .sort_values(["score", "kept"], ascending=[False, True], kind="stable")
        .drop_duplicates("copy")
    )
    one, other = images.iloc[best["copy"]], images.iloc[best["kept"]]
    same_class = one["class_name"].to_numpy() == other["class_name"].to_numpy()
    same_part = one["part"].to_numpy() == other["part"].to_numpy()
    issue = np.where(~same_class, CONFLICT, np.where(~same_part, LEAK, DUPLICATE))
    return _frame(
        pd.DataFrame(
            {
                "path": one["path"].to_numpy(),
                "issue": issue,
                "score": best["score"].to_numpy(),
                "given": one["class_name"].to_numpy(),
                "suggested": other["class_name"].to_numpy(),
                "duplicate_of": other["path"].to_numpy(),
                "part": one["part"].to_numpy(),
                "duplicate_part": other["part"].to_numpy(),
            }
        )
    )


def _frame(rows: list[dict] | pd.DataFrame) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if df.empty:
        return empty_frame("audit")
    for col in empty_frame("audit").columns:
        if col not in df:
            df[col] = None
    return coerce(df, "audit")


def audit_table(*findings: pd.DataFrame) -> pd.DataFrame:
    """The findings in one table (audit.parquet's columns, plus `merge` for look-alike
    classes), by issue (label, conflict, leak, duplicate, lookalike), surest first."""
    parts = [f for f in findings if f is not None and not f.empty]
    if not parts:
        return empty_frame("audit")
    out = _frame(pd.concat(parts, ignore_index=True))
    order = out["issue"].map({issue: i for i, issue in enumerate(ISSUES)})
    out = out.assign(_order=order).sort_values(
        ["_order", "score", "path"], ascending=[True, False, True], na_position="last"
    )
    columns = [*empty_frame("audit").columns, *(c for c in out if c == "merge")]
    return out[columns].reset_index(drop=True)


def format_audit(audit: pd.DataFrame, *, top: int = 5) -> str:
    """The console summary of an audit table: counts per issue, the surest findings of each."""
    if audit.empty:
        return "audit: no findings"
    lines = []
    counts = audit["issue"].value_counts()
    lines.append(
        "audit: " + ", ".join(f"{int(counts.get(i, 0))} {_NOUNS[i]}" for i in ISSUES if i in counts)
    )
    for issue in ISSUES:
        rows = audit[audit["issue"] == issue].head(top)
        if rows.empty:
            continue
        lines.append(f"  {_NOUNS[issue]} (surest first):")
        for r in rows.itertuples(index=False):
            if issue == LABEL:
                text = f"{r.path}  filed as {r.given}, looks like {r.suggested}"
            elif issue == LOOKALIKE:
                merge = getattr(r, "merge", None) or f"{r.given}={r.suggested}"
                text = f"{r.given} <-> {r.suggested}  (--merge {merge})"
            else:
                text = (
                    f"{r.path} ({r.given}, {r.part})  ~  {r.duplicate_of} "
                    f"({r.suggested}, {r.duplicate_part})"
                )
            lines.append(f"    {r.score:5.2f}  {text}")
    return "\n".join(lines)


_NOUNS = {
    LABEL: "likely wrong labels",
    CONFLICT: "near-copies filed under another class",
    LEAK: "near-copies in another part (leaks)",
    DUPLICATE: "near-copies in the same class and part",
    LOOKALIKE: "look-alike class pairs",
}


def plot_audit_images(
    audit: pd.DataFrame,
    thumbnails: dict[str, np.ndarray],
    *,
    issue: str = LABEL,
    top: int = 24,
) -> Figure:
    """The surest findings of `issue` as pictures (`thumbnails`: path -> uint8 [H, W, 3]):
    a mislabel with its given and suggested class and score; a near-copy side by side with
    the image it copies."""
    # lazy: matplotlib, only when a figure is drawn (reading a run stays light)
    from matplotlib.figure import Figure

    rows = audit[audit["issue"] == issue].head(top) if not audit.empty else audit
    what = f"the audit's {_NOUNS.get(issue, issue)}"
    if rows.empty:
        raise MissingDataError(what, f"the audit found no {_NOUNS.get(issue, issue)}")
    rows = rows[rows["path"].isin(thumbnails)]
    if issue != LABEL:
        rows = rows[rows["duplicate_of"].isin(thumbnails)]
    if rows.empty:
        raise MissingDataError(what, "no thumbnails were kept (run `hpsearch audit` again)")
    per_cell = 1 if issue == LABEL else 2
    cols = 6 if issue == LABEL else 3
    n_rows = -(-len(rows) // cols)
    fig = Figure(figsize=(1.9 * cols * per_cell, 2.2 * n_rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(n_rows, cols * per_cell, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for i, r in enumerate(rows.itertuples(index=False)):
        if issue == LABEL:
            ax = axes[i]
            ax.imshow(thumbnails[r.path])
            ax.set_title(f"{r.given} → {r.suggested}\n{r.score:.2f}", fontsize=8)
        else:
            left, right = axes[2 * i], axes[2 * i + 1]
            left.imshow(thumbnails[r.path])
            left.set_title(f"{r.issue} {r.score:.2f}\n{r.given}, {r.part}", fontsize=8)
            right.imshow(thumbnails[r.duplicate_of])
            right.set_title(f"copy of\n{r.suggested}, {r.duplicate_part}", fontsize=8)
    return fig
