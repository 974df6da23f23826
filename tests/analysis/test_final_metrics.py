"""The test part's metrics with their intervals, as the exported model's card states them:
macro precision as torchmetrics / scikit-learn define it, Wilson's interval by its formula, a
bootstrap interval that holds the estimate and narrows with more images."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import precision_score

from hpsearch.analysis.final_metrics import (
    accuracy_interval,
    final_metrics,
    macro_precision,
    macro_precision_interval,
)
from hpsearch.rundir import FINAL_CLASSES_FILE, FINAL_CONFUSION_FILE, FINAL_FILE


def _pairs(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = confusion.shape[0]
    cells = confusion.ravel()
    return np.repeat(np.arange(c * c) // c, cells), np.repeat(np.arange(c * c) % c, cells)


@pytest.mark.parametrize("seed", range(5))
def test_macro_precision_is_scikit_learns_with_zero_for_unpredicted_classes(seed):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 5, 40)
    pred = np.where(rng.random(40) < 0.6, true, rng.integers(0, 4, 40))  # class 4: rarely
    expected = precision_score(true, pred, labels=range(5), average="macro", zero_division=0)
    assert macro_precision(true, pred, 5) == pytest.approx(expected)


def test_the_accuracy_interval_is_wilsons():
    confusion = np.array([[8, 2], [3, 7]])
    k, n, z = 15, 20, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert accuracy_interval(confusion) == pytest.approx((centre - half, centre + half))
    assert all(math.isnan(v) for v in accuracy_interval(np.zeros((2, 2), dtype=int)))


def test_the_bootstrap_interval_holds_the_estimate_and_narrows_with_more_images():
    confusion = np.array([[6, 1, 1], [1, 5, 2], [0, 2, 6]])
    value = macro_precision(*_pairs(confusion), 3)
    low, high = macro_precision_interval(confusion)
    assert low < value < high
    low16, high16 = macro_precision_interval(confusion * 16)
    assert low < low16 < value < high16 < high
    assert macro_precision_interval(confusion) == (low, high)  # seeded
    assert macro_precision_interval(np.array([[4, 0], [0, 0]])) == (0.5, 0.5)  # one cell


def test_final_metrics_reads_one_evaluation_of_the_final_tables(tmp_path):
    confusion = {1: np.array([[3, 1], [0, 4]]), 2: np.array([[4, 0], [1, 3]])}
    final_rows, conf_rows, class_rows = [], [], []
    for ev, m in confusion.items():
        true, pred = _pairs(m)
        final_rows.append(
            dict(
                evaluation=ev,
                config_id="t1",
                trial_id="t1",
                accuracy=np.trace(m) / m.sum(),
                macro_precision=macro_precision(true, pred, 2),
                loss=0.5,
                epochs=3,
                test_images=int(m.sum()),
                evaluated_at="2026-01-01T00:00:00+00:00",
            )
        )
        for i in range(2):
            for j in range(2):
                conf_rows.append(dict(evaluation=ev, true_label=i, pred_label=j, count=m[i, j]))
            class_rows.append(
                dict(evaluation=ev, class_name=f"c{i}", precision=0.5, recall=0.5, support=4)
            )
    pd.DataFrame(final_rows).to_parquet(tmp_path / FINAL_FILE)
    pd.DataFrame(conf_rows).to_parquet(tmp_path / FINAL_CONFUSION_FILE)
    pd.DataFrame(class_rows).to_parquet(tmp_path / FINAL_CLASSES_FILE)
    test = final_metrics(tmp_path, 2)
    assert test["evaluation"] == 2 and test["images"] == 8 and test["epochs"] == 3
    assert test["accuracy"]["value"] == pytest.approx(7 / 8)
    assert (test["accuracy"]["ci_low"], test["accuracy"]["ci_high"]) == pytest.approx(
        accuracy_interval(confusion[2])
    )
    assert test["macro_precision"]["ci_low"] <= test["macro_precision"]["value"]
    assert [c["class"] for c in test["per_class"]] == ["c0", "c1"]
    assert "used 2 times" in test["warning"]
