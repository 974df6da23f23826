from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from hpsearch.analysis import MissingDataError, Run, latest_run, load_run, param_importances


def test_load_run_reads_every_table(run_dir: Path):
    run = load_run(run_dir)
    assert isinstance(run, Run)
    assert run.path == run_dir
    assert len(run.trials) == 7 and set(run.trials["status"]) >= {"completed", "diverged"}
    assert {"trial_id", "epoch", "val_accuracy"} <= set(run.epochs.columns)
    assert {"trial_id", "step", "loss"} <= set(run.steps.columns)
    assert {"true_class", "pred_class", "count"} <= set(run.confusion.columns)
    assert run.folds is not None and set(run.folds["split"]) == {"train", "test"}
    assert run.experiment["name"] == "fixture" and run.name == "fixture"
    assert (run.metric, run.mode) == ("val_accuracy", "max")
    assert run.best_trial_id == "t1"
    assert run.top_trials(3)["trial_id"].tolist() == ["t1", "t2", "t0"]
    assert "7 trials" in repr(run) and "val_accuracy (max)" in repr(run)


def test_parquet_files_alone_are_enough(make_run_dir):
    path = make_run_dir(folds=False, study_trials=0, experiment=False)
    run = load_run(path)
    assert (run.metric, run.mode) == ("val_accuracy", "max")
    assert run.name == path.name
    assert run.folds is None
    with pytest.raises(FileNotFoundError, match="optuna.db"):
        run.study()


def test_missing_optional_tables_are_empty_frames(make_run_dir):
    path = make_run_dir(study_trials=0)
    (path / "steps.parquet").unlink()
    run = load_run(path)
    assert run.steps.empty and "step" in run.steps and run.missing == ["steps.parquet"]


def test_loss_metric_defaults_to_min(make_run_dir):
    path = make_run_dir(study_trials=0)
    (path / "experiment.yaml").write_text("name: x\nsearch:\n  metric: val_loss\n")
    run = load_run(path)
    assert (run.metric, run.mode) == ("val_loss", "min")
    assert run.best_trial_id == "t1"  # lowest loss is the highest accuracy in the fixture


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "expected trials.parquet"),
        (lambda p: (p.mkdir(), (p / "experiment_state-x.json").write_text("{}")), "resume"),
        (lambda p: p.write_text("x"), "not a directory"),
    ],
)
def test_not_a_run_directory_says_what_is_expected(tmp_path: Path, setup, message: str):
    path = tmp_path / "somewhere"
    setup(path)
    with pytest.raises(FileNotFoundError, match=message):
        load_run(path)


def test_storage_folder_lists_its_runs(run_dir: Path):
    with pytest.raises(FileNotFoundError, match="pick one.*fixture-run"):
        load_run(run_dir.parent)


def test_latest_run(tmp_path: Path, make_run_dir):
    with pytest.raises(FileNotFoundError, match="no run directory"):
        latest_run(tmp_path)
    old = make_run_dir("old", study_trials=0, folds=False)
    new = make_run_dir("new", study_trials=0, folds=False)
    os.utime(old / "trials.parquet", (time.time() - 100, time.time() - 100))
    assert latest_run(tmp_path) == new


def test_study_and_importances(run_dir: Path):
    study = load_run(run_dir).study()
    assert study.study_name == "fixture" and len(study.trials) == 8
    imp = param_importances(study)
    assert set(imp.index) == {"arch", "dropout", "lr"}
    assert imp.sum() == pytest.approx(1.0)
    assert imp.index[0] == "dropout"  # the fixture's objective depends on dropout only
    assert imp.is_monotonic_decreasing


def test_too_few_trials_for_importances(make_run_dir):
    study = load_run(make_run_dir(study_trials=2)).study()
    with pytest.raises(MissingDataError, match="at least 5 completed trials.*it has 2"):
        param_importances(study)


def test_analysis_never_imports_ray_or_torch(run_dir: Path):
    code = f"""
import json, sys
from hpsearch import analysis
at_import = sorted({{m.split('.')[0] for m in sys.modules}} & {{'matplotlib', 'optuna', 'yaml'}})
run = analysis.load_run({str(run_dir)!r})
analysis.plot_search_progress(run.trials, run.epochs)
analysis.param_importances(run.study())
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & {{'ray', 'torch'}})
print(json.dumps({{'at_import': at_import, 'heavy': heavy}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found == {"at_import": [], "heavy": []}


def test_empty_trials_table_gives_a_message(tmp_path: Path):
    tmp_path.joinpath("r").mkdir()
    pd.DataFrame(columns=["trial_id", "status", "error"]).to_parquet(tmp_path / "r/trials.parquet")
    run = load_run(tmp_path / "r")
    assert run.best_trial_id is None
    with pytest.raises(MissingDataError, match="trials table has no column best_val_accuracy"):
        run.top_trials()
