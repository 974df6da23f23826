"""The run-directory format's rules: which way each metric is better, ranking, typed tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from hpsearch import rundir
from hpsearch.rundir import (
    METRICS,
    TABLE_COLUMNS,
    TABLE_DTYPES,
    best_column,
    best_value,
    coerce,
    empty_frame,
    metric_mode,
    rank_trials,
)


def test_losses_are_minimised_the_rest_maximised():
    assert {m: metric_mode(m) for m in METRICS} == {
        "val_accuracy": "max",
        "val_macro_precision": "max",
        "val_loss": "min",
        "train_loss": "min",
        "train_accuracy": "max",
    }
    assert best_value([0.5, 0.2, float("nan"), None, 0.9], "val_loss") == 0.2
    assert best_value([0.5, 0.2, math.inf, 0.9], "val_accuracy") == 0.9
    assert best_value([None, float("nan")], "val_accuracy") is None
    assert best_column("val_loss") == "best_val_loss"


def test_ranking_by_the_best_epoch():
    trials = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d"],
            "best_val_accuracy": [0.5, None, 0.9, 0.5],
            "best_val_loss": [0.3, 0.1, None, 0.2],
        }
    )
    assert rank_trials(trials, "val_accuracy")["trial_id"].tolist() == ["c", "a", "d"]
    assert rank_trials(trials, "val_loss")["trial_id"].tolist() == ["b", "d", "a"]
    assert rank_trials(trials, "val_accuracy", "min")["trial_id"].tolist() == ["a", "d", "c"]
    with pytest.raises(ValueError, match="mode must be"):
        rank_trials(trials, "val_loss", "lowest")


@pytest.mark.parametrize("table", rundir.TABLES)
def test_empty_tables_have_their_columns_and_dtypes(table: str):
    df = empty_frame(table)
    assert df.empty and tuple(df.columns) == TABLE_COLUMNS[table]
    assert df.dtypes.to_dict() == {
        c: pd.Series(dtype=t).dtype for c, t in TABLE_DTYPES[table].items()
    }


def test_fixed_columns():
    assert TABLE_COLUMNS["trials"] == ("trial_id", "status", "error")
    assert TABLE_COLUMNS["steps"] == ("trial_id", "step", "epoch", "loss")
    assert set(rundir.METRIC_COLUMNS) <= set(TABLE_COLUMNS["epochs"])
    assert set(rundir.TABLE_SOURCES) == set(rundir.TABLES)
    assert rundir.table_file("folds") == rundir.FOLDS_FILE == "folds.parquet"


def test_coerce_types_numbers_and_leaves_text_alone():
    df = pd.DataFrame(
        {
            "trial_id": ["a", "b"],
            "status": ["pending", "completed"],
            "error": [None, None],
            "best_val_accuracy": [None, None],  # no epoch yet: object -> float NaN
            "params": [10, None],
            "epochs": [0, 2],
            "start_timestamp": [1.0, 2.5],  # not integral: float, never truncated
            "arch": ["AlexNet", None],  # a config column: left as is
        }
    )
    out = coerce(df, "trials")
    assert list(out.columns) == list(df.columns)
    assert out["error"].tolist() == [None, None] and out["arch"].equals(df["arch"])
    assert (
        str(out["best_val_accuracy"].dtype) == "float64" and out["best_val_accuracy"].isna().all()
    )
    assert str(out["params"].dtype) == "float64" and str(out["epochs"].dtype) == "int64"
    assert out["start_timestamp"].tolist() == [1.0, 2.5]
    assert df["best_val_accuracy"].dtype == object  # the input is not changed


@pytest.mark.parametrize("bad", ["../x", "a/b", ".hidden", "", "..", "x\x01", "a\\b", "x" * 201])
def test_run_names_are_one_safe_folder_name(bad):
    with pytest.raises(ValueError, match="one folder name"):
        rundir.check_name(bad, "--name")


def test_good_run_names_pass():
    for good in ("demo", "demo-2", "a.b_c", "Run7"):
        assert rundir.check_name(good, "--name") == good


@pytest.mark.parametrize("bad", ["../x", "a/b", ".hidden", "", ".", "x\n"])
def test_class_names_must_be_one_file_name(bad):
    with pytest.raises(ValueError, match="one folder name"):
        rundir.check_component(bad, "merged class name")
    assert rundir.check_component("People and Celebrities", "class") == "People and Celebrities"
