from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from analysis import format_report_result, write_report

EVERY_PLOT = {
    "search_progress.png",
    "param_importances.png",
    "architectures.png",
    "architectures_loss_std.png",
    "loss_top_trials.png",
    "accuracy_top_trials.png",
    "confusion_best.png",
    "optimizers.png",
    "dropout.png",
    "batchnorm.png",
    "kfold.png",
}


@pytest.fixture(scope="module")
def full_report(run_dir: Path, tmp_path_factory):
    return write_report(run_dir, out=tmp_path_factory.mktemp("report"), window=10)


def test_report_writes_every_supported_plot(full_report):
    result = full_report
    assert not result.failed
    assert {p.name for p in result.plots.values()} == EVERY_PLOT
    for path in result.written:
        assert path.is_file() and path.stat().st_size > 0
        assert path.parent == result.out_dir
    pngs = {p.name for p in result.out_dir.glob("*.png")}
    assert pngs == EVERY_PLOT
    assert set(result.tables) == {
        "top_trials.csv",
        "top_trials.html",
        "confused_pairs.csv",
        "kfold_summary.csv",
    }
    top = pd.read_csv(result.tables["top_trials.csv"])
    assert top["trial_id"].tolist() == ["t1", "t2", "t0", "t4", "t3"]  # best first, no NaN


def test_index_is_self_contained_and_lists_skips(full_report):
    page = full_report.index_html.read_text()
    assert page.count("src='data:image/png;base64,") == len(EVERY_PLOT)
    assert ".png'" not in page  # nothing referenced outside the page
    assert "Top 5 trials by val_accuracy" in page
    assert "Celebrities=People" in page  # merge suggestion
    # the fixture's presets each have one stride and kernel setting: both comparisons skipped
    assert set(full_report.skipped) == {"Stride variants compared", "Kernel-size variants compared"}
    assert "no preset ran with different strides" in page


def test_report_skips_what_the_run_cannot_support(make_run_dir):
    run = make_run_dir(folds=False, one_optimizer=True, study_trials=2)
    result = write_report(run, window=10, dpi=50)
    assert result.out_dir == run / "report"
    assert not result.failed
    skipped = result.skipped
    assert skipped["K-fold error estimates"] == (
        f"no folds.parquet yet; run `hpsearch kfold {run}`"
    )
    assert "only one optimizer in this run (sgd)" in skipped["Optimizers compared"]
    assert "at least 5 completed trials" in skipped["Parameter importances"]
    page = result.index_html.read_text()
    assert "hpsearch kfold" in page and "only one optimizer" in page
    text = format_report_result(result)
    assert text.splitlines()[0] == f"report: {run / 'report' / 'index.html'}"
    assert "search_progress.png" in text
    assert "K-fold error estimates: no folds.parquet yet" in text
    assert "Optimizers compared: " in text


def test_rewriting_removes_plots_that_are_now_skipped(make_run_dir, tmp_path):
    run = make_run_dir(study_trials=0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "kfold.png").write_bytes(b"stale")
    (out / "notes.txt").write_text("mine")
    (run / "folds.parquet").unlink()
    result = write_report(run, out=out, window=10, dpi=50)
    assert not (out / "kfold.png").exists() and (out / "notes.txt").exists()
    assert "Parameter importances" in result.skipped  # no optuna.db
    assert "no optuna.db" in result.skipped["Parameter importances"]


def test_report_of_a_run_without_results(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    pd.DataFrame(
        {"trial_id": ["a"], "status": ["pending"], "best_val_accuracy": [None]}
    ).to_parquet(run / "trials.parquet")
    result = write_report(run, dpi=50)
    assert not result.plots and not result.failed
    assert result.skipped["Top trials"] == "no trial has a val_accuracy yet"
    assert result.index_html.is_file()
