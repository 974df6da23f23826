"""The audit's rules on tables: confident learning against cleanlab (the oracle, a test-only
dependency) and a hand-worked example, out-of-sample probabilities, near-duplicate findings,
look-alike classes and the console summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hpsearch.analysis.audit import (
    audit_table,
    confident_learning,
    duplicate_findings,
    format_audit,
    label_findings,
    lookalike_findings,
    out_of_sample,
    plot_audit_images,
)


def _noisy(seed: int, n: int = 600, k: int = 5, flip: float = 0.1):
    """Labels with `flip` of them changed, and probabilities a decent model would give."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    labels = true.copy()
    flipped = rng.random(n) < flip
    labels[flipped] = (true[flipped] + rng.integers(1, k, flipped.sum())) % k
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), true] += rng.uniform(0.5, 4, n)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, probs, flipped


@pytest.mark.parametrize("seed", range(8))
def test_label_issues_are_cleanlabs_confident_learning(seed):
    from cleanlab.filter import find_label_issues

    labels, probs, _ = _noisy(seed, k=3 + seed % 5)
    ours = confident_learning(labels, probs)["issue"].to_numpy()
    theirs = find_label_issues(labels, probs, filter_by="confident_learning")
    assert ours.sum() > 0
    np.testing.assert_array_equal(ours, theirs)


def test_the_ranking_is_cleanlabs_self_confidence():
    from cleanlab.filter import find_label_issues

    labels, probs, _ = _noisy(3)
    found = confident_learning(labels, probs)
    ranked = find_label_issues(
        labels, probs, filter_by="confident_learning", return_indices_ranked_by="self_confidence"
    )
    ours = found[found["issue"]].sort_values("score", ascending=False, kind="stable").index
    assert list(ours) == list(ranked)


def test_a_hand_worked_example():
    # Class thresholds: class 0 = mean(.9, .8, .1) = .6; class 1 = mean(.7, .9) = .8.
    labels = np.array([0, 0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7], [0.1, 0.9]])
    found = confident_learning(labels, probs)
    # image 2 is filed under 0 but confidently 1 (0.9 >= 0.8); image 3 is filed under 1, below
    # 1's threshold, and not confidently 0 (0.3 < 0.6): not an issue
    assert found["issue"].tolist() == [False, False, True, False, False]
    assert found.loc[2, "suggested"] == 1
    assert found.loc[2, "score"] == pytest.approx(0.9)


def test_the_model_agreeing_with_the_label_is_never_an_issue():
    labels = np.array([0, 1, 1, 1])
    # image 1: given 1, confidently 0 by 0's threshold, but its top class is 1
    probs = np.array([[0.3, 0.7], [0.45, 0.55], [0.1, 0.9], [0.05, 0.95]])
    assert not confident_learning(labels, probs)["issue"].any()


def test_bad_probabilities_are_refused():
    with pytest.raises(ValueError, match="one row per label"):
        confident_learning(np.array([0, 1]), np.ones((3, 2)) / 2)
    with pytest.raises(ValueError, match="0..1"):
        confident_learning(np.array([0, 2]), np.ones((2, 2)) / 2)


def _predictions() -> pd.DataFrame:
    rows = []
    for config in ("a", "b"):
        rows += [
            (config, 0, "c0/x.png", "train", 0, "c0", [0.9, 0.1]),
            (config, 1, "c1/y.png", "validation", 1, "c1", [0.8, 0.2]),  # filed 1, looks 0
            (config, 0, "c1/t.png", "test", 1, "c1", [0.2, 0.8]),
            (config, 1, "c1/t.png", "test", 1, "c1", [0.4, 0.6]),
        ]
    return pd.DataFrame(
        rows, columns=["config_id", "fold", "path", "part", "label", "class_name", "probs"]
    )


def test_out_of_sample_averages_the_fold_models_on_the_test_part():
    images, probs = out_of_sample(_predictions(), "b")
    assert images["path"].tolist() == ["c0/x.png", "c1/t.png", "c1/y.png"]
    np.testing.assert_allclose(probs[1], [0.3, 0.7])
    assert images["part"].tolist() == ["train", "test", "validation"]
    with pytest.raises(ValueError, match="config nope has no predictions"):
        out_of_sample(_predictions(), "nope")
    with pytest.raises(ValueError, match="hpsearch kfold"):
        out_of_sample(_predictions().iloc[0:0], None)


def test_label_findings_name_the_file_its_part_and_both_classes():
    images = pd.DataFrame(
        {
            "path": [f"c{c}/{i}.png" for c in (0, 1) for i in range(4)],
            "part": "train",
            "label": [0] * 4 + [1] * 4,
            "class_name": ["c0"] * 4 + ["c1"] * 4,
        }
    )
    probs = np.array([[0.9, 0.1]] * 3 + [[0.05, 0.95]] + [[0.1, 0.9]] * 4)
    found = label_findings(images, probs, ["c0", "c1"])
    assert found[["path", "issue", "given", "suggested", "part"]].values.tolist() == [
        ["c0/3.png", "label", "c0", "c1", "train"]
    ]
    assert found["score"].iloc[0] == pytest.approx(0.95)


def test_duplicate_groups_keep_a_train_image_and_name_leaks_and_conflicts():
    images = pd.DataFrame(
        {
            "path": ["a/1.png", "a/2.png", "b/3.png", "a/4.png", "a/5.png", "a/6.png"],
            "class_name": ["a", "a", "b", "a", "a", "a"],
            "part": ["test", "train", "train", "validation", "train", "train"],
        }
    )
    # a chain 0 ~ 1 ~ 2, and a pair 4 ~ 5; image 3 is in none
    pairs = pd.DataFrame({"a": [0, 1, 4], "b": [1, 2, 5], "similarity": [0.99, 0.97, 0.98]})
    found = duplicate_findings(pairs, images).set_index("path")
    assert set(found.index) == {"a/1.png", "b/3.png", "a/6.png"}
    # of each pair the train image (then the first path) is kept: a/2.png, a/5.png
    assert found.loc["a/1.png", ["issue", "duplicate_of", "duplicate_part"]].tolist() == [
        "leak",
        "a/2.png",
        "train",
    ]
    assert found.loc["b/3.png", ["issue", "given", "suggested"]].tolist() == ["conflict", "b", "a"]
    assert found.loc["a/6.png", "issue"] == "duplicate"
    assert found.loc["a/1.png", "score"] == pytest.approx(0.99)
    # of copies filed under two classes, the one whose label the models believe less goes
    pairs = pd.DataFrame({"a": [1], "b": [2], "similarity": [0.99]})
    believed = images.assign(confidence=[0.9, 0.1, 0.8, 0.5, 0.5, 0.5])
    found = duplicate_findings(pairs, believed)
    assert found[["path", "issue", "duplicate_of"]].values.tolist() == [
        ["a/2.png", "conflict", "b/3.png"]
    ]
    # an image alike to several is reported once, against the one it is most alike
    pairs = pd.DataFrame({"a": [0, 0], "b": [1, 4], "similarity": [0.95, 0.99]})
    found = duplicate_findings(pairs, images)
    assert found[["path", "duplicate_of"]].values.tolist() == [["a/1.png", "a/5.png"]]


def test_lookalike_pairs_are_confused_both_ways():
    classes = ["Celebrities", "People", "Sport"]
    labels = np.repeat([0, 1, 2], 10)
    predicted = labels.copy()
    predicted[[0, 1, 2]] = 1  # 30 % of Celebrities look like People
    predicted[[10, 11]] = 0  # 20 % of People look like Celebrities
    predicted[[20, 21, 22, 23]] = 0  # Sport -> Celebrities one way only
    probs = np.eye(3)[predicted]
    images = pd.DataFrame({"label": labels})
    found = lookalike_findings(images, probs, classes)
    assert found[["given", "suggested", "merge"]].values.tolist() == [
        ["Celebrities", "People", "Celebrities=People"]
    ]
    assert found["score"].iloc[0] == pytest.approx(0.2)


def test_the_table_orders_issues_and_the_summary_names_them():
    labels = pd.DataFrame(
        [{"path": "x", "issue": "label", "score": 0.9, "given": "a", "suggested": "b"}]
    )
    dupes = pd.DataFrame(
        [
            {"path": "y", "issue": "leak", "score": 0.97, "given": "a", "suggested": "a",
             "duplicate_of": "z", "part": "test", "duplicate_part": "train"},
        ]
    )  # fmt: skip
    look = pd.DataFrame(
        [{"issue": "lookalike", "score": 0.2, "given": "a", "suggested": "b", "merge": "a=b"}]
    )
    table = audit_table(look, dupes, labels)
    assert table["issue"].tolist() == ["label", "leak", "lookalike"]
    assert list(table.columns[:8]) == [
        "path", "issue", "score", "given", "suggested", "duplicate_of", "part", "duplicate_part"
    ]  # fmt: skip
    text = format_audit(table)
    assert "1 likely wrong labels" in text and "--merge a=b" in text and "y (a, test)" in text
    assert format_audit(audit_table()) == "audit: no findings"


def test_the_pictures_show_the_findings_with_their_thumbnails():
    table = audit_table(
        pd.DataFrame(
            [{"path": "x", "issue": "label", "score": 0.9, "given": "a", "suggested": "b"}]
        )
    )
    thumbs = {"x": np.zeros((8, 8, 3), np.uint8)}
    fig = plot_audit_images(table, thumbs)
    assert "a → b" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="no near-copies"):
        plot_audit_images(table, thumbs, issue="leak")
