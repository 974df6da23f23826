from __future__ import annotations

import pytest
from matplotlib import cbook
from matplotlib.patches import PathPatch

from hpsearch.analysis import MissingDataError, box_stats, kfold_summary, plot_kfold


def test_summary_matches_matplotlib_boxplot(tables):
    folds = tables["folds"]
    summary = kfold_summary(folds)
    assert len(summary) == 2 * 2 * 2  # config x split x metric
    for _, row in summary.iterrows():
        x = folds[(folds["config_id"] == row["config_id"]) & (folds["split"] == row["split"])][
            row["metric"]
        ]
        (mpl,) = cbook.boxplot_stats(x.to_numpy(), whis=1.5)
        assert row["median"] == pytest.approx(mpl["med"])
        assert row["q1"] == pytest.approx(mpl["q1"]) and row["q3"] == pytest.approx(mpl["q3"])
        assert row["iqr"] == pytest.approx(mpl["iqr"])
        assert row["whisker_low"] == pytest.approx(mpl["whislo"])
        assert row["whisker_high"] == pytest.approx(mpl["whishi"])
        assert row["mean"] == pytest.approx(x.mean()) and row["std"] == pytest.approx(x.std())
        assert row["outliers"] == len(mpl["fliers"])
        assert row["folds"] == 5
    outlier = summary[
        (summary["config_id"] == "AlexNet")
        & (summary["split"] == "test")
        & (summary["metric"] == "accuracy")
    ].iloc[0]
    assert outlier["outliers"] == 1 and outlier["whisker_low"] > 0.5


def test_box_stats_of_a_constant():
    s = box_stats([0.5, 0.5, 0.5])
    assert s["iqr"] == 0 and s["whisker_low"] == s["whisker_high"] == 0.5


def test_plot_two_panels_one_box_per_config_and_metric(tables):
    fig = plot_kfold(tables["folds"])
    ax_train, ax_test = fig.axes
    assert ax_train.get_title() == "train (5 folds)" and ax_test.get_title() == "test (5 folds)"
    for ax in (ax_train, ax_test):
        boxes = [p for p in ax.patches if isinstance(p, PathPatch)]
        assert len(boxes) == 4  # 2 configs x 2 metrics
        assert [t.get_text() for t in ax.get_xticklabels()] == ["AlexNet", "FlatAlexNet"]
        assert ax.get_ylabel() == "score"
        notes = [t.get_text() for t in ax.texts]
        assert len(notes) == 4 and all(n.startswith("med ") and "\nIQR " in n for n in notes)
    summary = kfold_summary(tables["folds"])
    first = summary[(summary["split"] == "train") & (summary["config_id"] == "AlexNet")].iloc[0]
    assert f"med {first['median']:.3f}" in ax_train.texts[0].get_text()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["accuracy", "macro precision"]


def test_no_folds_says_how_to_get_them(tables):
    with pytest.raises(MissingDataError, match="no folds.parquet yet; run `hpsearch kfold"):
        plot_kfold(None)
    with pytest.raises(MissingDataError, match="folds table is empty"):
        kfold_summary(tables["folds"].iloc[:0])


def test_readable_labels_from_the_kfold_table(tables):
    folds = tables["folds"].assign(label=lambda d: d["config_id"] + " sgd lr=0.01")
    fig = plot_kfold(folds)
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["AlexNet\nAlexNet sgd lr=0.01", "FlatAlexNet\nFlatAlexNet sgd lr=0.01"]
