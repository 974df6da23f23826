"""Stratified, seeded three-part split and k-fold assignment, stored as manifest columns.

Both work on the usable rows (status "ok") sorted by relative path, so the same files
and seed give the same split on any machine, whatever order the filesystem lists them
in. `split` is "train" / "val" / "test" ("" for unusable rows): trials train on "train" and
report on "val", which the search selects by; "test" is held out from the search and from
k-fold, for one final evaluation of the chosen config. `fold` is 0..K-1 over the train and
val rows (-1 when no folds were asked for, for test rows and for unusable rows), so no
k-fold estimate ever reads the test part.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from hpsearch.data_pipeline.scan import OK, DatasetError

TRAIN = "train"
VAL = "val"
TEST = "test"
PARTS = (TRAIN, VAL, TEST)


def _usable(manifest: pd.DataFrame) -> pd.DataFrame:
    if "label" not in manifest.columns:
        raise DatasetError("the manifest has no labels yet: call assign_labels(manifest) first")
    usable = manifest[(manifest["status"] == OK) & (manifest["label"] >= 0)]
    return usable.sort_values("path", kind="stable")


def check_split_options(*, test_fraction: float, val_fraction: float = 0.1, folds: int) -> None:
    """Raise DatasetError for options no dataset can satisfy."""
    for name, value in (("test", test_fraction), ("validation", val_fraction)):
        if not 0.0 < value < 1.0:
            raise DatasetError(
                f"{name} fraction {value} must be between 0 and 1 (exclusive), e.g. 0.1"
            )
    if test_fraction + val_fraction >= 1.0:
        raise DatasetError(
            f"test fraction {test_fraction} + validation fraction {val_fraction} leave no "
            "training images: keep their sum below 1, e.g. 0.1 and 0.1"
        )
    _check_folds(folds)


def _check_folds(folds: int) -> None:
    if folds != 0 and folds < 2:
        raise DatasetError(f"folds = {folds}: use 0 for no folds, or K >= 2 (e.g. 10)")


def check_class_sizes(
    counts: pd.Series,
    *,
    test_fraction: float | None = None,
    val_fraction: float = 0.1,
    folds: int = 0,
) -> None:
    """Raise DatasetError when the per-class image `counts` are too small to stratify."""
    if test_fraction is not None:
        check_split_options(test_fraction=test_fraction, val_fraction=val_fraction, folds=folds)
    need = max(3 if test_fraction is not None else 2, folds)
    small = counts[counts < need].sort_values()
    if len(small):
        listed = ", ".join(f"{c!r} ({k})" for c, k in small.items())
        raise DatasetError(
            f"class(es) with fewer than {need} usable images cannot be stratified"
            f"{f' into {folds} folds' if folds else ' into train, validation and test'}: "
            f"{listed}; add images, merge them into another class (--merge NEW=OLD)"
            f"{', lower --folds' if folds > 2 else ''} or remove the folder"
        )
    if test_fraction is None:
        return
    n, n_classes = int(counts.sum()), len(counts)
    n_test = math.ceil(test_fraction * n)
    n_val = math.ceil(val_fraction * (n - n_test) / (1 - test_fraction))
    n_train = n - n_test - n_val
    if min(n_test, n_val, n_train) < n_classes:
        raise DatasetError(
            f"test fraction {test_fraction} and validation fraction {val_fraction} of {n} "
            f"images give {n_train} train, {n_val} validation and {n_test} test images, but "
            f"each part needs at least one image per class ({n_classes} classes): use "
            f"fractions of at least {n_classes / n:.3g} each, leaving at least that much for "
            "training, or add images"
        )


def assign_split(
    manifest: pd.DataFrame,
    *,
    test_fraction: float = 0.1,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> pd.DataFrame:
    """Return a copy with a stratified, seeded `split` column ("train" / "val" / "test" / "").

    The test part is drawn first (`test_fraction` of the usable images), then the validation
    part from the rest (`val_fraction` of all usable images); both stratified by class."""
    from sklearn.model_selection import train_test_split  # lazy: seconds to import (see scan)

    usable = _usable(manifest)
    check_class_sizes(
        usable["class_name"].value_counts(),
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        folds=0,
    )
    rest_idx, test_idx = train_test_split(
        usable.index.to_numpy(),
        test_size=test_fraction,
        stratify=usable["label"].to_numpy(),
        random_state=seed,
    )
    rest_labels = usable.loc[rest_idx, "label"].to_numpy()
    _, val_idx = train_test_split(
        rest_idx,
        test_size=val_fraction / (1 - test_fraction),
        stratify=rest_labels,
        random_state=seed,
    )
    out = manifest.copy()
    out["split"] = ""
    out.loc[usable.index, "split"] = TRAIN
    out.loc[val_idx, "split"] = VAL
    out.loc[test_idx, "split"] = TEST
    return out


def assign_folds(manifest: pd.DataFrame, *, folds: int, seed: int = 0) -> pd.DataFrame:
    """Return a copy with a stratified, seeded `fold` column (0..folds-1; -1 if none). Folds
    cover the train and validation rows of `manifest["split"]` (all usable rows without one)."""
    _check_folds(folds)
    out = manifest.copy()
    out["fold"] = np.int64(-1)
    if folds == 0:
        return out
    usable = _usable(manifest)
    if "split" in usable.columns:  # the test part stays out of every fold
        usable = usable[usable["split"] != TEST]
    check_class_sizes(usable["class_name"].value_counts(), folds=folds)
    labels = usable["label"].to_numpy()
    from sklearn.model_selection import StratifiedKFold  # lazy: seconds to import (see scan)

    kfold = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, test_pos) in enumerate(kfold.split(np.zeros(len(labels)), labels)):
        out.loc[usable.index[test_pos], "fold"] = k
    return out


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed there
        shutil.copy2(src, dst)


def materialize_split(
    manifest: pd.DataFrame, out_dir: str | os.PathLike, *, src: str | os.PathLike | None = None
) -> Path:
    """Lay the split out as the seed did: out_dir/{train,val,test}/<class>/<file>.

    Files are hard-linked (copied where linking fails, e.g. across filesystems). `src` is
    the scanned root (default: `manifest.attrs["root"]`, which scan sets and
    manifest.parquet keeps). Merged classes keep their old folder as a sub-folder, so
    equal file names cannot collide. Returns `out_dir`.
    """
    root = Path(src if src is not None else manifest.attrs.get("root", ""))
    if not str(root) or not root.is_dir():
        raise DatasetError(
            "materialize_split needs the scanned folder: pass src=... (the folder given to scan)"
        )
    if "split" not in manifest.columns:
        raise DatasetError("the manifest has no split yet: call assign_split(manifest) first")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{str(out)!r} is not empty: choose a new or empty folder for the split")
    rows = manifest[manifest["split"].isin(PARTS)]
    for path, folder, class_name, split in rows[
        ["path", "folder", "class_name", "split"]
    ].itertuples(index=False):
        rest = path.split("/", 1)[1]
        sub = rest if folder == class_name else f"{folder}/{rest}"
        dst = out / split / class_name / sub
        dst.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(root / path, dst)
    return out
