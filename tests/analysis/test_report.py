from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from hpsearch.analysis import format_report_result, write_report

EVERY_PLOT = {
    "search_progress.png",
    "pareto.png",
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
        "pareto_front.csv",
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
    assert set(full_report.skipped) == {
        "Stride variants compared",
        "Kernel-size variants compared",
        "Regularization compared",
        "Audit",  # until `hpsearch audit` has run: one line, saying so
    }
    assert "hpsearch audit" in full_report.skipped["Audit"]
    assert "no preset ran with different strides" in page


def test_the_report_shows_accuracy_against_cost_and_names_the_front(full_report):
    page = full_report.index_html.read_text()
    start = page.index("<section id='pareto'><h2>Accuracy against cost</h2>")
    section = page[start : page.index("</section>", start)]
    assert "src='data:image/png;base64," in section and "Pareto front" in section
    assert "<h3>The trials on the front" in section and ">t3<" in section
    front = pd.read_csv(full_report.tables["pareto_front.csv"])
    assert front["trial_id"].tolist() == ["t3", "t2", "t0", "t1"]  # cheapest first
    assert page.index("<section id='search_progress'>") < start


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


def _answer_run(make_run_dir) -> Path:
    """A run whose folds re-train trials t1, t2, t0 (k-fold config ids are trial ids) and
    whose trials know their MACs: t2 is within one standard error of t1, and cheaper."""
    run = make_run_dir("answer", study_trials=0)
    trials = pd.read_parquet(run / "trials.parquet")
    trials["macs"] = trials["trial_id"].map({"t0": 5_000_000, "t1": 9_000_000, "t2": 2_000_000})
    trials.to_parquet(run / "trials.parquet", index=False)
    scores = {
        "t1": [0.80, 0.82, 0.78, 0.81, 0.79],
        "t2": [0.80, 0.81, 0.77, 0.80, 0.79],
        "t0": [0.70, 0.72, 0.69, 0.71, 0.70],
    }
    rows = [
        {"config_id": c, "trial_id": f"{c}-f{f}", "fold": f, "split": split,
         "accuracy": acc + (0.1 if split == "train" else 0), "macro_precision": acc - 0.01,
         "loss": 1 - acc, "label": f"{c} net"}
        for c, values in scores.items() for f, acc in enumerate(values)
        for split in ("train", "test")
    ]  # fmt: skip
    pd.DataFrame(rows).to_parquet(run / "folds.parquet", index=False)
    return run


def test_report_starts_with_which_cnn_to_train(make_run_dir):
    from hpsearch.analysis import mean_interval

    run = _answer_run(make_run_dir)
    result = write_report(run, window=10, dpi=40)
    assert not result.failed and "Which CNN to train" not in result.skipped
    page = result.index_html.read_text()
    first = page.index("<section id='answer'><h2>Which CNN to train</h2>")
    assert first < page.index("<h2 id='top'>") < page.index("<section id='kfold'>")
    section = page[first : page.index("</section>", first)]
    ci = mean_interval([0.80, 0.81, 0.77, 0.80, 0.79])
    assert "<b>Train t2</b> (t2 net)" in section
    assert f"95 % interval {ci['ci_low']:.3f} to {ci['ci_high']:.3f}" in section
    assert "fewest MACs among the 2 configs within one standard error" in section
    assert "2 M MACs per image" in section and "100 training images/s" in section
    assert f"hpsearch final {run}" in section  # not evaluated on the test part yet
    assert "best, recommended" not in section and ">recommended<" in section
    assert "p_value" in section and "corrected resampled t-test" in section
    assert result.recommendation.config_id == "t2"
    assert "Which CNN to train: t2 (t2 net), mean held-out accuracy 0.794" in (
        format_report_result(result)
    )


def test_report_shows_the_test_part_and_flags_its_reuse(make_run_dir):
    run = _answer_run(make_run_dir)
    final = pd.DataFrame(
        {"evaluation": [1, 2], "config_id": ["t2", "t2"], "trial_id": ["x1", "x2"],
         "accuracy": [0.791, 0.788], "macro_precision": [0.78, 0.77]}
    )  # fmt: skip
    final.to_parquet(run / "final.parquet", index=False)
    page = write_report(run, window=10, dpi=40).index_html.read_text()
    section = page[page.index("<section id='answer'>") : page.index("<h2 id='top'>")]
    assert "Test part: accuracy 0.788, macro precision 0.770 (config t2, evaluation 2)" in section
    assert "the test part has been used 2 times" in section and "class='warn'" in section


def test_report_without_folds_says_how_to_get_the_answer(make_run_dir):
    run = make_run_dir(folds=False, study_trials=0)
    result = write_report(run, window=10, dpi=40)
    assert not result.failed and result.recommendation is None
    assert (
        result.skipped["Which CNN to train"] == f"no folds.parquet yet; run `hpsearch kfold {run}`"
    )
    page = result.index_html.read_text()
    section = page[page.index("<section id='answer'>") : page.index("<h2 id='top'>")]
    assert f"run `hpsearch kfold {run}`" in section


def test_the_audit_section_shows_its_findings_with_thumbnails(make_run_dir, tmp_path):
    import numpy as np

    from hpsearch.analysis.audit import audit_table

    run = make_run_dir()
    audit = audit_table(
        pd.DataFrame(
            [
                {"path": "a/1.png", "issue": "label", "score": 0.9, "given": "a",
                 "suggested": "b", "part": "train"},
                {"path": "b/2.png", "issue": "leak", "score": 0.99, "given": "b",
                 "suggested": "b", "duplicate_of": "b/3.png", "part": "test",
                 "duplicate_part": "train"},
                {"issue": "lookalike", "score": 0.2, "given": "Celebrities",
                 "suggested": "People", "merge": "Celebrities=People"},
            ]
        )
    )  # fmt: skip
    audit.drop(columns="merge").to_parquet(run / "audit.parquet")
    (run / "audit").mkdir()
    paths = ["a/1.png", "b/2.png", "b/3.png"]
    np.savez(run / "audit" / "thumbnails.npz", paths=np.array(paths),
             images=np.zeros((3, 8, 8, 3), np.uint8))  # fmt: skip
    result = write_report(run, out=tmp_path / "report", window=10)
    assert {"Audit: likely wrong labels", "Audit: near-duplicates across the parts"} <= set(
        result.plots
    )
    assert "Audit: near-duplicates" in result.skipped  # no conflicting copies: says so
    page = result.index_html.read_text()
    assert "<h2>Audit</h2>" in page and "--merge Celebrities=People" in page
    assert page.index("<h2>Audit</h2>") < page.index("Audit: likely wrong labels</h2>")
    assert pd.read_csv(result.tables["audit.csv"])["path"].tolist()[:2] == paths[:2]
