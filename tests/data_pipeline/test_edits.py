"""Exclude and relabel files (`data_pipeline.edits`): reading them, every error, and what
`prepare` and `hpsearch prepare` make of them."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpsearch.data_pipeline import DatasetError, format_summary, load_cache, mean_std, prepare
from hpsearch.data_pipeline.edits import (
    GIVEN_CLASS,
    DataEdits,
    EditsError,
    apply_edits,
    read_edits,
)
from hpsearch.data_pipeline.scan import EXCLUDED, assign_labels, scan
from tests.conftest import make_image_folder

# the module (the package's `prepare` is the function of the same name)
prepare_module = importlib.import_module("hpsearch.data_pipeline.prepare")

EXCLUDE = ["class_0/img_000.png", "class_0/img_001.png", "class_1/img_005.png"]
RELABEL = {"class_0/img_002.png": "class_2", "class_2/img_003.png": "class_1"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 20 images (the tests' small folder, private: these tests prepare it often)."""
    return make_image_folder(tmp_path_factory.mktemp("edits") / "images")


def _csv(file: Path, /, **columns) -> Path:
    pd.DataFrame(columns).to_csv(file, index=False)
    return file


def _parquet(file: Path, /, **columns) -> Path:
    pd.DataFrame(columns).to_parquet(file)
    return file


def _files(tmp_path: Path) -> tuple[Path, Path]:
    """The audit's formats: exclude.csv (path) and relabel.csv (path, class)."""
    exclude = _csv(tmp_path / "exclude.csv", path=EXCLUDE)
    relabel = _csv(
        tmp_path / "relabel.csv", path=list(RELABEL), **{"class": list(RELABEL.values())}
    )
    return exclude, relabel


# --- reading the files ---------------------------------------------------------------------


def test_the_audit_files_are_read_as_they_are(folder: Path, tmp_path: Path) -> None:
    exclude, relabel = _files(tmp_path)
    edits = read_edits(folder, exclude=exclude, relabel=relabel)
    assert edits.exclude == tuple(sorted(EXCLUDE)) and dict(edits.relabel) == RELABEL
    assert edits.exclude_file == str(exclude) and edits.given
    assert not read_edits(folder).given and read_edits(folder) == DataEdits()


def test_paths_are_normalised_and_extra_columns_ignored(folder: Path, tmp_path: Path) -> None:
    exclude = _csv(
        tmp_path / "x.csv",
        path=[
            "./class_0/img_000.png",
            str(folder / "class_1" / "img_001.png"),
            "class_0/img_000.png",
        ],
        score=[0.9, 0.8, 0.7],
    )
    edits = read_edits(folder, exclude=exclude)
    assert edits.exclude == ("class_0/img_000.png", "class_1/img_001.png")  # made relative, once


def test_suggested_is_an_alias_of_class_and_class_wins(folder: Path, tmp_path: Path) -> None:
    # an audit table names the new class `suggested`; Parquet keeps a class named "1" a string
    table = _parquet(tmp_path / "a.parquet", path=["class_0/img_000.png"], suggested=["class_1"])
    assert dict(read_edits(folder, relabel=table).relabel) == {"class_0/img_000.png": "class_1"}
    both = _csv(
        tmp_path / "b.csv",
        path=["class_0/img_000.png"],
        suggested=["class_1"],
        **{"class": ["class_2"]},
    )
    assert dict(read_edits(folder, relabel=both).relabel) == {"class_0/img_000.png": "class_2"}


def test_a_file_with_no_rows_edits_nothing(folder: Path, tmp_path: Path) -> None:
    """The audit writes a header-only exclude.csv when it found nothing to exclude."""
    (tmp_path / "exclude.csv").write_text("path\n")
    edits = read_edits(folder, exclude=tmp_path / "exclude.csv")
    assert edits.exclude == () and edits.given


@pytest.mark.parametrize(
    ("option", "write", "message"),
    [
        ("exclude", None, "does not exist: give the path of a .csv or .parquet file"),
        ("exclude", lambda p: p.with_suffix(".txt").write_text("path\n"), ".txt is not a format"),
        ("exclude", lambda p: p.write_text(""), "is empty: its first line must name the columns"),
        ("exclude", lambda p: _csv(p, file=["a"]), "has no column 'path' (its columns: file)"),
        (
            "relabel",
            lambda p: _csv(p, path=["class_0/img_000.png"]),
            "no column 'class' (or 'suggested')",
        ),
        (
            "relabel",
            lambda p: _csv(p, path=["class_0/img_000.png", ""], **{"class": ["a", "b"]}),
            "data row(s) 2 have no path",
        ),
        (
            "relabel",
            lambda p: _csv(p, path=["class_0/img_000.png"], **{"class": [" "]}),
            "data row(s) 1 have no class",
        ),
        (
            "exclude",
            lambda p: p.with_suffix(".parquet").write_text("path\n"),
            "cannot be read as Parquet",
        ),
        (
            "exclude",
            lambda p: _csv(p, path=["/elsewhere/a.jpg", "../b.jpg"]),
            "2 path(s) outside the image folder",
        ),
        (
            "relabel",
            lambda p: _csv(
                p, path=["class_0/img_000.png"] * 3, **{"class": ["class_1", "class_2", "class_1"]}
            ),
            "1 path(s) more than one class: class_0/img_000.png (class_1 / class_2); keep one row per path",
        ),
    ],
)
def test_each_unusable_file_is_an_error_naming_it(
    folder: Path, tmp_path: Path, option: str, write, message: str
) -> None:
    path = tmp_path / f"{option}.csv"
    if write is not None:
        write(path)
        path = next(tmp_path.glob(f"{option}.*"))
    with pytest.raises(EditsError) as info:
        read_edits(folder, **{option: path})
    assert message in str(info.value) and str(path) in str(info.value)
    assert info.value.option == option and isinstance(info.value, DatasetError)


def test_a_path_both_excluded_and_relabelled_is_an_error(folder: Path, tmp_path: Path) -> None:
    exclude = _csv(tmp_path / "x.csv", path=["class_0/img_000.png"])
    relabel = _csv(tmp_path / "r.csv", path=["class_0/img_000.png"], **{"class": ["class_1"]})
    with pytest.raises(EditsError, match=r"1 path\(s\) are both excluded .* class_0/img_000.png"):
        read_edits(folder, exclude=exclude, relabel=relabel)


# --- applying them to the manifest ---------------------------------------------------------


def _labelled(folder: Path, merge=None):
    return assign_labels(scan(folder), merge)


def test_paths_not_in_the_folder_are_listed_up_to_five_with_the_count(
    folder: Path, tmp_path: Path
) -> None:
    missing = [f"class_0/nope_{i}.png" for i in range(7)]
    edits = read_edits(folder, exclude=_csv(tmp_path / "x.csv", path=[*missing, EXCLUDE[0]]))
    with pytest.raises(EditsError) as info:
        apply_edits(*_labelled(folder), edits)
    text = str(info.value)
    assert "names 7 path(s) that are not files of the image folder" in text
    assert "class_0/nope_0.png" in text and "class_0/nope_4.png" in text
    assert "class_0/nope_5.png" not in text and "(2 more)" in text


def test_a_new_class_must_be_a_class_of_the_folder(folder: Path, tmp_path: Path) -> None:
    relabel = _csv(tmp_path / "r.csv", path=["class_0/img_000.png"], **{"class": ["class_9"]})
    with pytest.raises(EditsError) as info:
        apply_edits(*_labelled(folder), read_edits(folder, relabel=relabel))
    assert "'class_9'" in str(info.value) and "use one of: class_0, class_1, class_2" in str(
        info.value
    )
    # after a merge, a merged folder names its merged class (as the audit's command combines
    # its relabel file with a merge)
    merge = {"class_1": ["class_2"]}
    relabel = _csv(tmp_path / "m.csv", path=["class_0/img_000.png"], **{"class": ["class_2"]})
    out, classes = apply_edits(*_labelled(folder, merge), read_edits(folder, relabel=relabel))
    assert classes == ["class_0", "class_1"]
    row = out.set_index("path").loc["class_0/img_000.png"]
    assert (row["class_name"], row[GIVEN_CLASS], row["label"]) == ("class_1", "class_0", 1)


def test_edits_leave_two_classes_at_least(folder: Path, tmp_path: Path) -> None:
    everything = [p for p in scan(folder)["path"] if not p.startswith("class_2/")]
    edits = read_edits(folder, exclude=_csv(tmp_path / "x.csv", path=everything))
    with pytest.raises(EditsError, match="1 class\\(es\\) have usable images \\(class_2\\)"):
        apply_edits(*_labelled(folder), edits)


def test_a_class_relabelled_or_excluded_away_is_no_class(folder: Path, tmp_path: Path) -> None:
    class_0 = [p for p in scan(folder)["path"] if p.startswith("class_0/")]
    relabel = _csv(tmp_path / "r.csv", path=class_0, **{"class": ["class_1"] * len(class_0)})
    out, classes = apply_edits(*_labelled(folder), read_edits(folder, relabel=relabel))
    assert classes == ["class_1", "class_2"] and set(out["label"]) == {0, 1}


# --- prepare --------------------------------------------------------------------------------


def _prepare(folder: Path, cache_root: Path, **options):
    return prepare(
        folder, image_size=16, cache_root=cache_root, workers=1, progress=False, **options
    )


def test_prepare_excludes_and_relabels_without_decoding_again(folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    plain, first = _prepare(folder, root, folds=3)
    exclude, relabel = _files(tmp_path)
    cache, summary = _prepare(folder, root, folds=3, exclude=exclude, relabel=relabel)

    assert cache.path == plain.path and first.decoded == 60 and summary.decoded == 0
    assert summary.split_written and len(cache) == 60  # the excluded images stay decoded
    manifest = pd.read_parquet(cache.path / "manifest.parquet").set_index("path")
    excluded = manifest[manifest["status"] == EXCLUDED]
    assert sorted(excluded.index) == sorted(EXCLUDE)
    assert (excluded["split"] == "").all() and (excluded["fold"] == -1).all()
    assert (excluded["label"] == -1).all() and (excluded["row"] >= 0).all()
    for path, new in RELABEL.items():
        row = manifest.loc[path]
        assert row["class_name"] == new and row[GIVEN_CLASS] == path.split("/")[0]
        assert row["label"] == cache.classes.index(new) and row["split"] in ("train", "val", "test")
    assert (
        manifest.drop(index=list(RELABEL))["class_name"]
        == manifest.drop(index=list(RELABEL))[GIVEN_CLASS]
    ).all()

    # labels.npy follows the manifest row by row; excluded rows are in no part and no fold
    rows = manifest.sort_values("row")
    assert (cache.labels == rows["label"].to_numpy()).all()
    gone = rows.loc[EXCLUDE, "row"].to_numpy()
    for part in ("train", "val", "test", "all"):
        assert not set(cache.indices(part)) & set(gone)
    assert len(cache.indices("all")) == 57 and not set(gone) & {
        i for k in range(3) for i in cache.fold_indices(k)[1]
    }

    # the counts leave the excluded files out, and count the relabelled ones in their new class
    assert summary.per_class == {"class_0": 17, "class_1": 20, "class_2": 20}
    assert summary.train + summary.val + summary.test == 57 == sum(summary.per_class.values())
    meta = json.loads((cache.path / "meta.json").read_text())
    assert meta["counts"]["per_class"] == summary.per_class
    assert (meta["counts"]["excluded"], meta["counts"]["relabelled"]) == (3, 2)
    assert meta["edits"]["excluded"] == sorted(EXCLUDE) and meta["edits"]["relabelled"] == RELABEL
    assert meta["edits"]["exclude_file"] == str(exclude.resolve())
    # mean/std of the train part only
    train_rows = cache.indices("train")
    sums = np.load(cache.path / "pixel_sums.npy")
    assert cache.mean == pytest.approx(mean_std(sums, train_rows, 16)[0])
    assert load_cache(cache.path).classes == cache.classes

    text = format_summary(summary)
    assert f"excluded 3 files (listed in {exclude}): in no part" in text
    assert (
        f"relabelled 2 files (listed in {relabel}): class_0 -> class_2 (1), class_2 -> class_1 (1)"
        in text
    )
    assert "57 usable of 60 files listed" in text and "reused: nothing decoded" in text

    # preparing again without the files restores the unedited data, decoding nothing
    again, restored = _prepare(folder, root, folds=3)
    assert restored.decoded == 0 and restored.split_written and not restored.edits.given
    assert (again.split == plain.split).all() and (again.labels == plain.labels).all()
    assert (again.fold == plain.fold).all() and again.mean == plain.mean
    meta = json.loads((again.path / "meta.json").read_text())
    assert meta["edits"]["excluded"] == [] and meta["counts"]["excluded"] == 0
    assert "excluded" not in format_summary(restored)


def test_the_stored_split_is_reused_only_for_the_same_edits(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    exclude, relabel = _files(tmp_path)
    first, _ = _prepare(folder, root, exclude=exclude, relabel=relabel)

    def no_split(*args, **kwargs):
        raise AssertionError("split again")

    monkeypatch.setattr(prepare_module, "assign_split", no_split)
    # the same edits from other files: the stored split is taken as it is
    copy = tmp_path / "copy.parquet"
    pd.read_csv(exclude).to_parquet(copy)
    same, summary = _prepare(folder, root, exclude=copy, relabel=relabel)
    assert (same.split == first.split).all() and summary.edits.exclude_file == str(copy)
    # other edits, or none: split again
    for options in (dict(exclude=exclude), dict(relabel=relabel), {}):
        with pytest.raises(AssertionError, match="split again"):
            _prepare(folder, root, **options)


def test_class_sizes_are_checked_after_the_edits_before_decoding(
    folder: Path, tmp_path: Path
) -> None:
    most = [f"class_1/img_{i:03d}.png" for i in range(18)]
    with pytest.raises(DatasetError, match=r"fewer than 3 usable images .* 'class_1' \(2\)"):
        _prepare(folder, tmp_path / "cache", exclude=_csv(tmp_path / "x.csv", path=most))
    assert not (tmp_path / "cache").exists()  # rejected before anything was decoded


# --- hpsearch prepare -----------------------------------------------------------------------


def test_hpsearch_prepare_takes_the_files(folder: Path, tmp_path: Path) -> None:
    """`python -m hpsearch prepare FOLDER --exclude x.csv --relabel y.parquet`, paths relative
    to the working directory, as the audit prints the command."""
    _csv(tmp_path / "x.csv", path=EXCLUDE)
    _parquet(tmp_path / "y.parquet", path=list(RELABEL), suggested=list(RELABEL.values()))
    command = [sys.executable, "-m", "hpsearch", "prepare", str(folder), "--image-size", "16"]
    command += [
        "--cache",
        "cache",
        "--workers",
        "1",
        "--exclude",
        "x.csv",
        "--relabel",
        "y.parquet",
    ]
    out = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "excluded 3 files (listed in x.csv): in no part" in out.stdout
    assert "relabelled 2 files (listed in y.parquet): class_0 -> class_2 (1)" in out.stdout
    assert re.search(r"class_0\s+17\n", out.stdout) and "57 usable of 60 files" in out.stdout
    (meta_file,) = (tmp_path / "cache").glob("*/meta.json")
    manifest = pd.read_parquet(meta_file.parent / "manifest.parquet")
    assert sorted(manifest.loc[manifest["status"] == "excluded", "path"]) == sorted(EXCLUDE)
    assert json.loads(meta_file.read_text())["edits"]["relabel_file"] == str(tmp_path / "y.parquet")

    bad = subprocess.run(
        [*command[:-2], "--relabel", "z.csv"], cwd=tmp_path, capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.startswith(
        "hpsearch prepare: error: relabel file 'z.csv' does not exist"
    )
