"""A final evaluation's test-part metrics with their intervals, as the exported model's card
states them (`hpsearch export`).

final.parquet holds one accuracy and one macro precision per evaluation; the test part is a
sample, so each gets a 95 % interval over its images: Wilson's score interval for the accuracy
(a proportion), a percentile bootstrap that resamples the test images for the macro precision
(`scipy.stats.bootstrap`, paired: each image keeps its true and predicted class), both from
final_confusion.parquet's matrix of that evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as st

from hpsearch.analysis.stats import CONFIDENCE, reuse_warning
from hpsearch.rundir import FINAL_CLASSES_FILE, FINAL_CONFUSION_FILE, FINAL_FILE

BOOTSTRAP_RESAMPLES = 2000


def macro_precision(true: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """Mean over the classes of tp / predicted; a class never predicted counts 0, as in
    final.parquet (torchmetrics' zero_division)."""
    tp = np.bincount(true[true == pred], minlength=num_classes)
    predicted = np.bincount(pred, minlength=num_classes)
    return float(np.divide(tp, predicted, out=np.zeros(num_classes), where=predicted > 0).mean())


def confusion_matrix(run_dir: str | Path, evaluation: int) -> np.ndarray:
    """int64 [C, C] of one evaluation (rows: true class) from final_confusion.parquet."""
    conf = pd.read_parquet(Path(run_dir) / FINAL_CONFUSION_FILE)
    conf = conf[conf["evaluation"] == evaluation]
    c = int(max(conf["true_label"].max(), conf["pred_label"].max())) + 1 if len(conf) else 0
    matrix = np.zeros((c, c), dtype=np.int64)
    np.add.at(matrix, (conf["true_label"].to_numpy(), conf["pred_label"].to_numpy()), conf["count"])
    return matrix


def accuracy_interval(confusion: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's score interval of the accuracy."""
    n = int(confusion.sum())
    if n == 0:
        return float("nan"), float("nan")
    ci = st.binomtest(int(np.trace(confusion)), n).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def macro_precision_interval(
    confusion: np.ndarray, confidence: float = CONFIDENCE, *, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the macro precision, resampling the test images."""
    c = confusion.shape[0]
    if confusion.sum() < 2:
        return float("nan"), float("nan")
    cells = confusion.ravel()
    true = np.repeat(np.arange(c * c) // c, cells)
    pred = np.repeat(np.arange(c * c) % c, cells)
    if (true == true[0]).all() and (pred == pred[0]).all():  # one cell: every resample equal
        value = macro_precision(true, pred, c)
        return value, value
    result = st.bootstrap(
        (true, pred),
        lambda t, p: macro_precision(t, p, c),
        paired=True,
        vectorized=False,
        n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def final_metrics(run_dir: str | Path, evaluation: int) -> dict[str, Any]:
    """Evaluation `evaluation` of final.parquet: accuracy and macro precision with their
    intervals, the loss, the reuse warning and the per-class table, as JSON-ready values."""
    run_dir = Path(run_dir)
    row = pd.read_parquet(run_dir / FINAL_FILE).set_index("evaluation").loc[evaluation]
    matrix = confusion_matrix(run_dir, evaluation)
    acc_low, acc_high = accuracy_interval(matrix)
    mp_low, mp_high = macro_precision_interval(matrix)
    classes = pd.read_parquet(run_dir / FINAL_CLASSES_FILE)
    classes = classes[classes["evaluation"] == evaluation]
    pct = f"{CONFIDENCE * 100:.0f} %"
    return {
        "evaluation": int(evaluation),
        "images": int(row["test_images"]),
        "trial_id": str(row["trial_id"]),
        "epochs": int(row["epochs"]),
        "evaluated_at": str(row["evaluated_at"]),
        "accuracy": {
            "value": float(row["accuracy"]),
            "ci_low": acc_low,
            "ci_high": acc_high,
            "interval": f"{pct}, Wilson score interval",
        },
        "macro_precision": {
            "value": float(row["macro_precision"]),
            "ci_low": mp_low,
            "ci_high": mp_high,
            "interval": f"{pct}, percentile bootstrap over the test images "
            f"({BOOTSTRAP_RESAMPLES} resamples)",
        },
        "loss": float(row["loss"]),
        "warning": reuse_warning(int(evaluation)),
        "per_class": [
            {
                "class": str(r.class_name),
                "precision": float(r.precision),
                "recall": float(r.recall),
                "images": int(r.support),
            }
            for r in classes.itertuples(index=False)
        ],
    }
