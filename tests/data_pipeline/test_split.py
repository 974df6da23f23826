"""Stratified split, folds, class merging and the materialised train/test layout."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from hpsearch.data_pipeline import (
    DatasetError,
    assign_folds,
    assign_labels,
    assign_split,
    materialize_split,
    scan,
)


def manifest_of(counts: dict[str, int]) -> pd.DataFrame:
    """A listing-like manifest with `counts[folder]` usable rows per folder (no files)."""
    rows = [
        dict(
            path=f"{folder}/{i:04d}.jpg",
            folder=folder,
            bytes=1,
            mtime_ns=0,
            status="ok",
            reason="",
            detail="",
        )
        for folder, n in counts.items()
        for i in range(n)
    ]
    rows.append(
        dict(
            path="zz/bad.jpg",
            folder="zz",
            bytes=0,
            mtime_ns=0,
            status="skipped",
            reason="empty file (0 bytes)",
            detail="",
        )
    )
    return pd.DataFrame(rows).sort_values("path", ignore_index=True)


COUNTS = {"a": 100, "b": 60, "c": 30}


def labelled(counts: dict[str, int] = COUNTS, merge=None) -> pd.DataFrame:
    return assign_labels(manifest_of(counts), merge)[0]


def test_split_is_three_disjoint_stratified_parts() -> None:
    m = assign_split(labelled(), test_fraction=0.2, val_fraction=0.1, seed=0)
    for folder, n in COUNTS.items():
        of_class = m[(m["folder"] == folder) & (m["status"] == "ok")]
        assert abs((of_class["split"] == "test").sum() - 0.2 * n) <= 1, folder
        assert abs((of_class["split"] == "val").sum() - 0.1 * n) <= 1, folder
    assert set(m["split"]) == {"train", "val", "test", ""}  # one part per row: disjoint
    assert (m.loc[m["status"] != "ok", "split"] == "").all()


def test_the_test_part_does_not_depend_on_the_validation_fraction() -> None:
    """The test part is drawn first: asking for another validation part never moves an image
    between the held-out test part and the rest."""
    a = assign_split(labelled(), test_fraction=0.1, val_fraction=0.1, seed=0)
    b = assign_split(labelled(), test_fraction=0.1, val_fraction=0.3, seed=0)
    assert a["path"][a["split"] == "test"].tolist() == b["path"][b["split"] == "test"].tolist()
    assert (b["split"] == "val").sum() > (a["split"] == "val").sum()


def test_folds_never_include_a_test_image() -> None:
    m = assign_folds(assign_split(labelled(), test_fraction=0.2, seed=0), folds=5, seed=0)
    assert (m.loc[m["split"] == "test", "fold"] == -1).all()
    kept = m[m["split"].isin(["train", "val"])]
    assert sorted(kept["fold"].unique()) == list(range(5))


def test_split_is_deterministic_and_independent_of_row_order() -> None:
    a = assign_split(labelled(), test_fraction=0.1, seed=3).set_index("path")["split"]
    b = assign_split(labelled(), test_fraction=0.1, seed=3).set_index("path")["split"]
    shuffled = labelled().sample(frac=1.0, random_state=7)
    c = assign_split(shuffled, test_fraction=0.1, seed=3).set_index("path")["split"]
    other = assign_split(labelled(), test_fraction=0.1, seed=4).set_index("path")["split"]
    pd.testing.assert_series_equal(a, b)
    pd.testing.assert_series_equal(a, c.loc[a.index])
    assert not a.equals(other)


def test_folds_are_disjoint_complete_and_stratified() -> None:
    k = 5
    m = assign_folds(labelled(), folds=k, seed=0)
    usable = m[m["status"] == "ok"]
    assert sorted(usable["fold"].unique()) == list(range(k))  # every usable row in exactly one fold
    assert (m.loc[m["status"] != "ok", "fold"] == -1).all()
    for folder, n in COUNTS.items():
        per_fold = usable[usable["folder"] == folder]["fold"].value_counts()
        assert per_fold.max() - per_fold.min() <= 1 and per_fold.sum() == n
    shuffled = assign_folds(labelled().sample(frac=1.0, random_state=1), folds=k, seed=0)
    pd.testing.assert_series_equal(
        m.set_index("path")["fold"], shuffled.set_index("path")["fold"].loc[m["path"]]
    )


def test_no_folds_means_minus_one() -> None:
    assert (assign_folds(labelled(), folds=0)["fold"] == -1).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(test_fraction=0.0), "between 0 and 1"),
        (dict(test_fraction=1.5), "between 0 and 1"),
        (dict(test_fraction=0.001), r"use fractions of at least"),
        (dict(val_fraction=0.0), "validation fraction 0.0 must be between 0 and 1"),
        (dict(test_fraction=0.5, val_fraction=0.5), "leave no training images"),
    ],
)
def test_bad_split_options_say_what_to_change(kwargs, message) -> None:
    with pytest.raises(DatasetError, match=message):
        assign_split(labelled(), **kwargs)


def test_tiny_class_says_what_to_change() -> None:
    with pytest.raises(
        DatasetError,
        match=r"fewer than 3 usable images.*train, validation and test: 'c' \(1\).*--merge",
    ):
        assign_split(labelled({"a": 10, "b": 10, "c": 1}))
    with pytest.raises(DatasetError, match=r"into 10 folds: 'c' \(4\).*lower --folds"):
        assign_folds(labelled({"a": 20, "b": 20, "c": 4}), folds=10)
    with pytest.raises(DatasetError, match="K >= 2"):
        assign_folds(labelled(), folds=1)


def test_merge_relabels_before_splitting() -> None:
    m = labelled({"People": 20, "Celebrities": 10, "Food": 10}, merge={"People": ["Celebrities"]})
    assert sorted(m.loc[m["status"] == "ok", "class_name"].unique()) == ["Food", "People"]
    assert (
        m.loc[m["folder"] == "Celebrities", "label"] == 1
    ).all()  # index into ["Food", "People"]
    split = assign_split(m, test_fraction=0.25, seed=0)
    people_test = ((split["class_name"] == "People") & (split["split"] == "test")).sum()
    assert people_test in (7, 8)  # a quarter of the merged class


def test_merge_into_a_new_name() -> None:
    m = labelled({"a": 5, "b": 5, "c": 5}, merge={"ab": ["a", "b"]})
    assert m.loc[m["status"] == "ok"].groupby("class_name")["label"].first().to_dict() == {
        "ab": 0,
        "c": 1,
    }


def test_merge_with_unknown_class_lists_the_classes_found() -> None:
    with pytest.raises(DatasetError, match=r"\['Celebs'\] that do not exist.*found are: a, b, c"):
        labelled(merge={"People": ["Celebs"]})
    with pytest.raises(DatasetError, match="merged into both"):
        labelled(merge={"x": ["a"], "y": ["a"]})
    with pytest.raises(DatasetError, match="at least two classes"):
        labelled(merge={"all": ["a", "b", "c"]})


def test_materialize_split_links_the_seed_layout(tmp_path: Path, make_folder) -> None:
    root = make_folder(tmp_path / "src", {"a": 6, "b": 6, "c": 4})
    m = assign_split(
        assign_labels(scan(root), {"ab": ["a", "b"]})[0],
        test_fraction=0.25,
        val_fraction=0.25,
        seed=0,
    )
    out = materialize_split(m, tmp_path / "out")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert len(files) == 16
    assert {f.split("/")[0] for f in files} == {"train", "val", "test"}
    assert any(f"{part}/c/img_000.jpg" in files for part in ("train", "val", "test"))
    assert any(
        f.startswith(("train/ab/a/", "val/ab/a/", "test/ab/a/")) for f in files
    )  # merged: old folder kept
    linked = next(out.rglob("img_001.jpg"))
    assert (
        os.path.samefile(linked, root / linked.parent.name / "img_001.jpg")
        or linked.stat().st_nlink > 1
    )
    with pytest.raises(DatasetError, match="not empty"):
        materialize_split(m, out)


def test_materialize_split_copies_when_links_fail(
    tmp_path: Path, make_folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_folder(tmp_path / "src", {"a": 3, "b": 3})
    m = assign_split(assign_labels(scan(root))[0], test_fraction=0.33, val_fraction=0.33, seed=0)

    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    out = materialize_split(m, tmp_path / "out")
    copied = sorted(out.rglob("*.jpg")) + sorted(out.rglob("*.png"))
    assert len(copied) == 6 and all(p.stat().st_nlink == 1 for p in copied)
