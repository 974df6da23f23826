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

import hpsearch.data_pipeline.cache as cache_mod
from hpsearch.data_pipeline import (
    Batches,
    DatasetError,
    decode_image,
    load_cache,
    materialize_split,
    prepare,
)
from hpsearch.data_pipeline.decode import dct_eighths

SIZE = 16
# The `src` images are 40 x 30: at 28 px no JPEG can be decoded at a reduced scale (30 x 7/8
# < 28), so the pixels must equal torchvision's exactly; at SIZE they are decoded at 5/8.
EXACT_SIZE = 28


@pytest.fixture
def src(tmp_path: Path, make_folder) -> Path:
    return make_folder(tmp_path / "src", {"a": 8, "b": 8, "c": 8})


def _prepare(src: Path, cache_root: Path, **kwargs):
    kwargs = (
        dict(
            image_size=SIZE,
            cache_root=cache_root,
            workers=1,
            test_fraction=0.25,
            val_fraction=0.25,
            progress=False,
        )
        | kwargs
    )
    return prepare(src, **kwargs)


def _forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(paths, image_size, out=None):
        raise AssertionError(f"decoded {len(paths)} files again")

    monkeypatch.setattr(cache_mod, "decode_shard", fail)


def _counting_decoder(
    monkeypatch: pytest.MonkeyPatch, *, fail_on_call: int | None = None
) -> list[int]:
    calls: list[int] = []
    real = cache_mod.decode_shard

    def counting(paths, image_size, out=None):
        calls.append(len(paths))
        if len(calls) == fail_on_call:
            raise RuntimeError("simulated crash")
        return real(paths, image_size, out=out)

    monkeypatch.setattr(cache_mod, "decode_shard", counting)
    return calls


def _reference(path: Path, mean=None, std=None, size: int = SIZE) -> torch.Tensor:
    """The seed's transforms, by hand."""
    steps = [transforms.Resize(size), transforms.CenterCrop(size)]
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
    cache, _ = _prepare(src, tmp_path / "c", image_size=EXACT_SIZE)
    for path, row in _rows(cache).items():
        expected = _reference(src / path, size=EXACT_SIZE).numpy()
        assert np.array_equal(cache.images[row], expected), path


def test_a_batch_equals_torchvision_normalize(src: Path, tmp_path: Path) -> None:
    cache, _ = _prepare(src, tmp_path / "c", image_size=EXACT_SIZE)
    x, y = next(iter(Batches.from_cache(cache, "all", batch_size=len(cache), shuffle=False)))
    atol = 2 / 255 / min(cache.std)
    for path, row in _rows(cache).items():
        expected = _reference(src / path, cache.mean, cache.std, size=EXACT_SIZE)
        torch.testing.assert_close(x[row], expected, atol=atol, rtol=0)
        assert y[row] == cache.classes.index(path.split("/")[0])


def test_draft_decoded_large_jpegs_stay_close_to_torchvision(tmp_path: Path, make_folder) -> None:
    # 96 x 72 at size 16: these JPEGs are decoded at 1/4 scale (DCT scaling) before the
    # bilinear resize, so pixels differ a little from a full decode; not by more than this.
    src = make_folder(tmp_path / "src", {"a": 3, "b": 3}, size=(96, 72))
    cache, _ = _prepare(src, tmp_path / "c", test_fraction=0.25, val_fraction=0.25)
    for path, row in _rows(cache).items():
        diff = np.abs(cache.images[row].astype(int) - _reference(src / path).numpy().astype(int))
        assert diff.mean() < 3 and diff.max() <= 16, (path, diff.mean(), diff.max())


@pytest.mark.parametrize(
    ("size", "image_size", "eighths"),
    [
        ((40, 30), SIZE, 5),
        ((100, 75), 45, 5),  # as the seed's 500 x 375 photos at 227 px
        ((64, 48), 40, 7),
        ((200, 150), 60, 4),
        ((400, 300), 60, 2),
        ((200, 150), 50, 3),
    ],
)
def test_jpegs_decoded_at_m_eighths_stay_close_to_torchvision(
    tmp_path: Path, make_folder, size: tuple[int, int], image_size: int, eighths: int
) -> None:
    # Any scale m/8 (PIL's draft mode has only 1/2, 1/4, 1/8): the mean is as close as
    # above; the DCT's cut-off differs most from the bilinear filter at sharp edges, where
    # a few pixels (under 3 % here) differ by more than 8 levels, up to ~20 (PIL's own draft mode does the same at 1/2).
    assert dct_eighths(*size, image_size) == eighths
    src = make_folder(tmp_path / "src", {"a": 3, "b": 3}, size=size)
    cache, _ = _prepare(
        src, tmp_path / "c", test_fraction=0.25, val_fraction=0.25, image_size=image_size
    )
    for path, row in _rows(cache).items():
        reference = _reference(src / path, size=image_size).numpy().astype(int)
        diff = np.abs(cache.images[row].astype(int) - reference)
        assert diff.mean() < 3 and diff.max() <= 24, (path, diff.mean(), diff.max())
        assert (diff > 8).mean() < 0.03, (path, (diff > 8).mean())


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


@pytest.mark.parametrize("workers", [1, 2])
def test_rows_of_undecodable_files_are_squeezed_out_in_order(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    monkeypatch.setattr(cache_mod, "SHARD_SIZE", 5)
    # The first file, gaps inside shards, a whole bad shard's worth and the last file.
    bad = ["a/ima.jpg", "a/img_002b.jpg", "b/img_000a.jpg", "c/img_007z.jpg", "c/zz.jpg"]
    bad += [f"b/img_003{c}.jpg" for c in "abcdef"]
    for name in bad:
        (src / name).write_text("not an image")
    cache, summary = _prepare(src, tmp_path / "c", workers=workers)
    assert summary.skipped == {"not an image PIL can identify": 11} and len(cache) == 24
    assert cache.images.shape == (24, 3, SIZE, SIZE)
    for path, row in _rows(cache).items():
        assert np.array_equal(cache.images[row], decode_image(str(src / path), SIZE)), path
    sums = np.load(cache.path / "pixel_sums.npy")
    assert np.array_equal(sums, cache_mod.pixel_sums(np.asarray(cache.images)))
    assert not (cache.path / "building").exists()


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
    held_out = np.flatnonzero(other.split == "test")
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 24 - len(held_out)
    assert len(np.intersect1d(np.concatenate([train, test]), held_out)) == 0


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
    [done] = (cache_dir / "building").glob("done-*.json")  # the first shard, recorded
    assert not (cache_dir / "meta.json").exists() and not (cache_dir / "images.npy").exists()
    with pytest.raises(DatasetError, match="not a complete cache"):
        load_cache(cache_dir)

    calls = _counting_decoder(monkeypatch)
    resumed, s = _prepare(src, tmp_path / "c")
    assert calls == [5, 5, 5, 4] and s.decoded == 19  # the first shard was kept
    fresh, _ = _prepare(src, tmp_path / "fresh")
    assert np.array_equal(resumed.images, fresh.images)
    assert np.array_equal(
        np.load(resumed.path / "pixel_sums.npy"), np.load(fresh.path / "pixel_sums.npy")
    )


def test_a_build_stopped_while_squeezing_rows_starts_over(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_mod, "SHARD_SIZE", 5)
    (src / "a" / "img_000a.jpg").write_text("not an image")

    def crash(*args):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(cache_mod, "_squeeze", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _prepare(src, tmp_path / "c")
    [cache_dir] = (tmp_path / "c").iterdir()
    assert (cache_dir / "building" / "compacting.json").exists()
    monkeypatch.undo()
    monkeypatch.setattr(cache_mod, "SHARD_SIZE", 5)
    calls = _counting_decoder(monkeypatch)
    cache, s = _prepare(src, tmp_path / "c")
    assert sum(calls) == 25 and s.decoded == 25 and len(cache) == 24  # rows moved: redone
    for path, row in _rows(cache).items():
        assert np.array_equal(cache.images[row], decode_image(str(src / path), SIZE)), path


def test_a_build_of_other_files_is_not_resumed(src: Path, tmp_path: Path) -> None:
    def build(n: int, size: int):
        b = cache_mod._Build(tmp_path / "building", n, size)
        b.close()
        return b

    first = cache_mod._Build(tmp_path / "building", 10, SIZE)
    first.record(0, [None] * 5, np.ones((5, 2, 3)))
    first.checkpoint()
    first.close()
    resumed = build(10, SIZE)
    assert resumed.done[:5].all() and not resumed.done[5:].any() and resumed.sums[4, 1, 2] == 1
    assert not build(11, SIZE).done.any()  # other files
    assert not build(10, SIZE + 1).done.any()  # other size


def test_load_cache_memory_maps_and_checks_folds(src: Path, tmp_path: Path) -> None:
    cache, _ = _prepare(src, tmp_path / "c")
    loaded = load_cache(cache.path)
    assert isinstance(loaded.images, np.memmap) and loaded.images.shape == (24, 3, SIZE, SIZE)
    assert loaded.labels.dtype == np.int64 and loaded.classes == ["a", "b", "c"]
    assert not isinstance(load_cache(cache.path, mmap=False).images, np.memmap)
    assert set(loaded.split) == {"train", "val", "test"} and (loaded.fold == -1).all()
    with pytest.raises(DatasetError, match="--folds"):
        loaded.fold_indices(0)


def test_the_saved_manifest_can_lay_out_the_split(src: Path, tmp_path: Path) -> None:
    cache, _ = _prepare(src, tmp_path / "c")
    manifest = pd.read_parquet(cache.path / "manifest.parquet")  # remembers its source folder
    out = materialize_split(manifest, tmp_path / "layout")
    assert len(list((out / "test").rglob("*.*"))) == len(cache.indices("test")) == 6
    assert len(list((out / "val").rglob("*.*"))) == len(cache.indices("val")) == 6
    assert len(list((out / "train").rglob("*.*"))) == len(cache.indices("train")) == 12


def test_a_cache_split_before_the_validation_part_says_to_prepare_again(
    src: Path, tmp_path: Path
) -> None:
    """Caches prepared with a train / test split only (trials validated on the test part)."""
    import json

    cache, _ = _prepare(src, tmp_path / "c")
    meta = json.loads((cache.path / "meta.json").read_text())
    del meta["split"]["val_fraction"]
    (cache.path / "meta.json").write_text(json.dumps(meta))
    old = load_cache(cache.path)
    assert old.indices("all").size == 24  # still opens
    with pytest.raises(DatasetError, match="train / test split only.*hpsearch prepare"):
        old.indices("val")
    again, summary = _prepare(src, tmp_path / "c")  # what the message says: nothing decoded
    assert summary.decoded == 0 and summary.split_written and again.indices("val").size == 6


def test_default_cache_root_is_hpsearch_cache(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPSEARCH_CACHE", str(tmp_path / "env-cache"))
    cache, _ = _prepare(src, None)
    assert cache.path.parent == tmp_path / "env-cache"
    assert cache.path.name.startswith(f"src-{SIZE}px-")


@pytest.mark.parametrize("size", [227, 257, 258])
def test_pixel_sums_are_exact_on_either_side_of_the_32_bit_limit(size: int) -> None:
    images = np.full((2, 3, size, size), 255, dtype=np.uint8)
    images[1] = 1
    sums = cache_mod.pixel_sums(images)
    n = size * size
    assert sums.dtype == np.float64
    np.testing.assert_array_equal(sums[0], [[255 * n] * 3, [255 * 255 * n] * 3])
    np.testing.assert_array_equal(sums[1], [[n] * 3, [n] * 3])
