"""`hpsearch kfold` writes comparison.parquet next to folds.parquet (no Ray: the tables only)."""

from __future__ import annotations

import pandas as pd

from hpsearch.rundir import COMPARISON_FILE, TABLE_COLUMNS
from hpsearch.search.driver.kfold import write_comparison


def _folds(configs: dict[str, float], k: int = 4) -> pd.DataFrame:
    rows = [
        {"config_id": c, "trial_id": f"{c}{f}", "fold": f, "split": split,
         "accuracy": base + 0.01 * f + (0.1 if split == "train" else 0.0),
         "macro_precision": base, "loss": 1 - base, "arch": "AlexNet", "label": c, "epochs": 2}
        for c, base in configs.items() for f in range(k) for split in ("train", "test")
    ]  # fmt: skip
    return pd.DataFrame(rows)


def test_comparison_is_written_with_the_costs_and_removed_without_folds(tmp_path):
    pd.DataFrame({"trial_id": ["a", "b"], "params": [10, 20], "macs": [200, 100]}).to_parquet(
        tmp_path / "trials.parquet"
    )
    folds = _folds({"a": 0.8, "b": 0.8})  # a tie: fewer MACs makes b the best
    written = write_comparison(tmp_path, folds)
    table = pd.read_parquet(tmp_path / COMPARISON_FILE)
    assert tuple(table.columns) == TABLE_COLUMNS["comparison"]
    pd.testing.assert_frame_equal(table, written)
    assert (table["best_config_id"] == "b").all() and len(table) == 2 * 2
    assert write_comparison(tmp_path, folds.iloc[:0]) is None
    assert not (tmp_path / COMPARISON_FILE).exists()  # never older than folds.parquet
