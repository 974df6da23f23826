from __future__ import annotations

import numpy as np
import pytest

from hpsearch.analysis import (
    MissingDataError,
    confused_pairs,
    confusion_matrix,
    merge_suggestions,
    plot_confusion_matrix,
)

CLASSES = ["Celebrities", "People", "Landscape", "Travel"]


def test_matrix_is_row_normalised_in_label_order(tables):
    m = confusion_matrix(tables["confusion"], "t0")
    assert m.index.tolist() == CLASSES and m.columns.tolist() == CLASSES
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    assert m.loc["Celebrities", "People"] == pytest.approx(0.3)
    counts = confusion_matrix(tables["confusion"], "t0", normalize=False)
    assert counts.loc["People", "Celebrities"] == 5 and counts.to_numpy().sum() == 80


def test_plot_has_class_names_and_normalised_cells(tables):
    fig = plot_confusion_matrix(tables["confusion"], "t1")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == CLASSES
    assert [t.get_text() for t in ax.get_yticklabels()] == CLASSES
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class", "true class")
    image = ax.get_images()[0].get_array()
    np.testing.assert_allclose(np.asarray(image).sum(axis=1), 1.0)
    assert "0.30" in {t.get_text() for t in ax.texts}
    assert "trial t1" in ax.get_title() and "80 images" in ax.get_title()


def test_confused_pairs_and_merge_suggestions(tables):
    pairs = confused_pairs(tables["confusion"], "t0", top=5)
    assert pairs.iloc[0][["true_class", "pred_class"]].tolist() == ["Celebrities", "People"]
    assert pairs["rate"].tolist() == pytest.approx([0.3, 0.25, 0.1])
    merges = merge_suggestions(tables["confusion"], "t0", threshold=0.2)
    assert merges["merge"].tolist() == ["Celebrities=People"]
    assert merges.iloc[0]["count"] == 11
    # Landscape -> Travel is one way only: never a merge suggestion
    assert merge_suggestions(tables["confusion"], "t0", threshold=0.05)["merge"].tolist() == [
        "Celebrities=People"
    ]
    assert merge_suggestions(tables["confusion"], "t0", threshold=0.5).empty


def test_trial_without_matrix_and_ambiguous_trial(tables):
    with pytest.raises(MissingDataError, match="trial t6 has no confusion matrix"):
        plot_confusion_matrix(tables["confusion"], "t6")
    with pytest.raises(ValueError, match="pass trial_id"):
        confusion_matrix(tables["confusion"])
    with pytest.raises(MissingDataError, match="confusion table is missing"):
        plot_confusion_matrix(None, "t0")
    one = tables["confusion"][tables["confusion"]["trial_id"] == "t2"]
    assert confusion_matrix(one).shape == (4, 4)
