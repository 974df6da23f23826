"""The decode-once cache: contents, reuse, invalidation, crash-safe shards, load_cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision import transforms

import data_pipeline.cache as cache_mod
from data_pipeline import (
    Batches,
    DatasetError,
    decode_image,
    load_cache,
    materialize_split,
    prepare,
)

SIZE = 16


@pytest.fixture
def src(tmp_path: Path, make_folder) -> Path:
    return make_folder(tmp_path / "src", {"a": 8, "b": 8, "c": 8})


def _prepare(src: Path, cache_root: Path, **kwargs):
    kwargs = (
        dict(image_size=SIZE, cache_root=cache_root, workers=1, test_fraction=0.25, progress=False)
        | kwargs
    )
    return prepare(src, **kwargs)


def _forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(paths, image_size):
        raise AssertionError(f"decoded {len(paths)} files again")

    monkeypatch.setattr(cache_mod, "decode_shard", fail)


def _counting_decoder(
    monkeypatch: pytest.MonkeyPatch, *, fail_on_call: int | None = None
) -> list[int]:
    calls: list[int] = []
    real = cache_mod.decode_shard

    def counting(paths, image_size):
        calls.append(len(paths))
        if len(calls) == fail_on_call:
            raise RuntimeError("simulated crash")
        return real(paths, image_size)

    monkeypatch.setattr(cache_mod, "decode_shard", counting)
    return calls


def _reference(path: Path, mean=None, std=None) -> torch.Tensor:
    """The seed's transforms, by hand."""
    steps = [transforms.Resize(SIZE), transforms.CenterCrop(SIZE)]
    steps += (
        [transforms.ToTensor(), transforms.Normalize(mean, std)]
        if mean
        else [transforms.PILToTensor()]
    )
    return transforms.Compose(steps)(Image.open(path).convert("RGB"))


def _rows(cache) -> pd.Series:
    m = pd.read_parquet(cache.path / "manifest.parquet")
    return m[m["row"] >= 0].set_index("path")["row"]


def test_cached_pixels_equal_torchvision_resize_and_center_crop(src: Path, tmp_path: Path) -> None:
    cache, _ = _prepare(src, tmp_path / "c")
    for path, row in _rows(cache).items():
        assert np.array_equal(cache.images[row], _reference(src / path).numpy()), path


def test_a_batch_equals_torchvision_normalize(src: Path, tmp_path: Path) -> None:
    cache, _ = _prepare(src, tmp_path / "c")
    x, y = next(iter(Batches.from_cache(cache, "all", batch_size=len(cache), shuffle=False)))
    atol = 2 / 255 / min(cache.std)
    for path, row in _rows(cache).items():
        expected = _reference(src / path, cache.mean, cache.std)
        torch.testing.assert_close(x[row], expected, atol=atol, rtol=0)
        assert y[row] == cache.classes.index(path.split("/")[0])


def test_draft_decoded_large_jpegs_stay_close_to_torchvision(tmp_path: Path, make_folder) -> None:
    # 96 x 72 at size 16: PIL decodes these JPEGs at 1/4 scale (DCT scaling) before the
    # bilinear resize, so pixels differ a little from a full decode; not by more than this.
    src = make_folder(tmp_path / "src", {"a": 3, "b": 3}, size=(96, 72))
    cache, _ = _prepare(src, tmp_path / "c", test_fraction=0.5)
    for path, row in _rows(cache).items():
        diff = np.abs(cache.images[row].astype(int) - _reference(src / path).numpy().astype(int))
        assert diff.mean() < 3 and diff.max() <= 16, (path, diff.mean(), diff.max())


def test_mean_and_std_are_measured_on_the_train_split(src: Path, tmp_path: Path) -> None:
    cache, summary = _prepare(src, tmp_path / "c")
    train = cache.images[cache.indices("train")].astype(np.float64) / 255
    np.testing.assert_allclose(cache.mean, train.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(cache.std, train.std(axis=(0, 2, 3)), rtol=1e-9)
    assert summary.mean == cache.mean and len(cache.indices("test")) == summary.test == 6


def test_parallel_build_equals_single_process_build(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_mod, "SHARD_SIZE", 5)
    one, _ = _prepare(src, tmp_path / "one", workers=1)
    two, _ = _prepare(src, tmp_path / "two", workers=2)
    assert np.array_equal(one.images, two.images) and np.array_equal(one.labels, two.labels)
    assert not (two.path / "shards").exists()


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_shards_with_undecodable_files_concatenate_in_order(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel_copy: bool
) -> None:
    monkeypatch.setattr(cache_mod, "SHARD_SIZE", 5)
    for name in ("a/img_002b.jpg", "b/img_000a.jpg", "c/img_007z.jpg"):  # gaps inside shards
        (src / name).write_text("not an image")
    if not kernel_copy:
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    cache, summary = _prepare(src, tmp_path / "c")
    assert summary.skipped == {"not an image PIL can identify": 3} and len(cache) == 24
    for path, row in _rows(cache).items():
        assert np.array_equal(cache.images[row], decode_image(str(src / path), SIZE)), path


def test_second_prepare_decodes_nothing(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, s1 = _prepare(src, tmp_path / "c")
    assert s1.decoded == 24 and not s1.reused
    meta_mtime = (first.path / "meta.json").stat().st_mtime_ns
    _forbid_decoding(monkeypatch)
    second, s2 = _prepare(src, tmp_path / "c")
    assert s2.reused and s2.decoded == 0 and not s2.split_written
    assert second.path == first.path and (first.path / "meta.json").stat().st_mtime_ns == meta_mtime
    assert np.array_equal(second.split, first.split)


def test_changing_only_split_merge_or_folds_decodes_nothing(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = _prepare(src, tmp_path / "c")
    _forbid_decoding(monkeypatch)
    other, s = _prepare(src, tmp_path / "c", seed=1, folds=4, merge={"ab": ["a", "b"]})
    assert s.reused and s.split_written and other.path == first.path
    assert other.classes == ["ab", "c"] and not np.array_equal(other.split, first.split)
    train, test = other.fold_indices(0)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 24


@pytest.mark.parametrize("change", ["modify", "add", "remove", "size"])
def test_changed_folder_or_size_makes_a_new_cache(
    src: Path, tmp_path: Path, make_folder, change: str
) -> None:
    first, _ = _prepare(src, tmp_path / "c")
    size = SIZE
    if change == "modify":
        target = src / "a" / "img_001.jpg"
        Image.new("RGB", (40, 30), (1, 2, 3)).save(target)
        os.utime(target, ns=(1, 1))
    elif change == "add":
        make_folder(src, {"d": 4})
    elif change == "remove":
        (src / "b" / "img_002.jpg").unlink()
    else:
        size = SIZE // 2
    second, s = _prepare(src, tmp_path / "c", image_size=size)
    assert second.path != first.path and not s.reused
    assert (first.path / "meta.json").exists()  # the old cache is left alone


def test_crashed_build_resumes_with_the_missing_shards(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_mod, "SHARD_SIZE", 5)  # 24 files: shards of 5, 5, 5, 5, 4
    calls = _counting_decoder(monkeypatch, fail_on_call=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _prepare(src, tmp_path / "c")
    [cache_dir] = (tmp_path / "c").iterdir()
    assert (
        len(list((cache_dir / "shards").glob("*.npy"))) == 1
        and not (cache_dir / "meta.json").exists()
    )
    with pytest.raises(DatasetError, match="not a complete cache"):
        load_cache(cache_dir)

    calls = _counting_decoder(monkeypatch)
    resumed, s = _prepare(src, tmp_path / "c")
    assert calls == [5, 5, 5, 4] and s.decoded == 19  # the first shard was kept
    fresh, _ = _prepare(src, tmp_path / "fresh")
    assert np.array_equal(resumed.images, fresh.images)


def test_load_cache_memory_maps_and_checks_folds(src: Path, tmp_path: Path) -> None:
    cache, _ = _prepare(src, tmp_path / "c")
    loaded = load_cache(cache.path)
    assert isinstance(loaded.images, np.memmap) and loaded.images.shape == (24, 3, SIZE, SIZE)
    assert loaded.labels.dtype == np.int64 and loaded.classes == ["a", "b", "c"]
    assert not isinstance(load_cache(cache.path, mmap=False).images, np.memmap)
    assert set(loaded.split) == {"train", "test"} and (loaded.fold == -1).all()
    with pytest.raises(DatasetError, match="--folds"):
        loaded.fold_indices(0)


def test_the_saved_manifest_can_lay_out_the_split(src: Path, tmp_path: Path) -> None:
    cache, _ = _prepare(src, tmp_path / "c")
    manifest = pd.read_parquet(cache.path / "manifest.parquet")  # remembers its source folder
    out = materialize_split(manifest, tmp_path / "layout")
    assert len(list((out / "test").rglob("*.*"))) == len(cache.indices("test")) == 6
    assert len(list((out / "train").rglob("*.*"))) == len(cache.indices("train")) == 18


def test_default_cache_root_is_hpsearch_cache(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPSEARCH_CACHE", str(tmp_path / "env-cache"))
    cache, _ = _prepare(src, None)
    assert cache.path.parent == tmp_path / "env-cache"
    assert cache.path.name.startswith(f"src-{SIZE}px-")
