"""Decode an image folder once into uint8 arrays on disk, and load them back.

A cache directory (named after the folder, the image size and a fingerprint of the
files, so a changed folder or size gets a new one) holds:

    images.npy        uint8 [N, 3, S, S], N = decodable images in manifest order
    pixel_sums.npy    float64 [N, 2, 3]: per image and channel, sum and sum of squares
                      of the uint8 pixels (exact), so any split's mean/std is instant
    decoded.parquet   every listed file: path, row in images.npy (-1: not decodable),
                      reason, detail; written last by the decode, it marks it complete
    labels.npy        int64 [N]      }  written by `prepare` for the chosen merge map,
    manifest.parquet  the manifest   }  split and folds; cheap to rewrite, no decode
    meta.json         classes, size, mean/std, counts, skipped files; written last

The decode runs in shards of `SHARD_SIZE` files over a process pool; each finished
shard is saved atomically under shards/, so a build that dies resumes with the shards
it is missing. Once all exist they are concatenated into images.npy and removed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from data_pipeline.decode import decode_shard, split_error
from data_pipeline.scan import OK, DatasetError
from rundir import atomic_path, write_json, write_npy, write_parquet

SHARD_SIZE = 64
IMAGES = "images.npy"
PIXEL_SUMS = "pixel_sums.npy"
DECODED = "decoded.parquet"
LABELS = "labels.npy"
MANIFEST = "manifest.parquet"
META = "meta.json"
SHARDS = "shards"


def default_workers() -> int:
    """The CPUs this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def pixel_sums(images: np.ndarray) -> np.ndarray:
    """float64 [n, 2, 3]: per image and channel, the exact sum and sum of squares."""
    flat = images.reshape(len(images), images.shape[1], -1)
    sums = flat.sum(-1, dtype=np.int64)
    squares = np.einsum("ncp,ncp->nc", flat, flat, dtype=np.int64)
    return np.stack([sums, squares], axis=1).astype(np.float64)


def mean_std(
    sums: np.ndarray, indices: np.ndarray, image_size: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the images `indices`, in [0, 1] units (as torchvision's Normalize)."""
    if len(indices) == 0:
        raise DatasetError(
            "cannot measure mean/std over zero images: the split has no training images"
        )
    total = sums[indices].sum(axis=0)  # [2, 3], exact: integers below 2**53
    n = len(indices) * image_size * image_size
    mean = total[0] / n
    var = np.maximum(total[1] / n - mean**2, 0.0)
    return tuple(float(m) for m in mean / 255), tuple(float(s) for s in np.sqrt(var) / 255)


def _shard_files(shard_dir: Path, start: int, stop: int) -> tuple[Path, Path]:
    stem = f"{start:08d}-{stop:08d}"
    return shard_dir / f"{stem}.npy", shard_dir / f"{stem}.json"


def _build_shard(paths: list[str], image_size: int, npy: Path, info: Path) -> int:
    """Decode one shard and save it (errors and sums first; the .npy marks it done)."""
    images, errors = decode_shard(paths, image_size)
    write_json(info, dict(errors=errors, sums=pixel_sums(images).tolist()), indent=1)
    write_npy(npy, images)
    return len(paths)


def _run_shards(jobs: list[tuple], *, workers: int, bar: tqdm) -> None:
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            bar.update(_build_shard(*job))
        return
    # fork: workers start in milliseconds and need nothing re-imported (the decode uses
    # only PIL and numpy); elsewhere the platform default.
    ctx = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
        futures = [pool.submit(_build_shard, *job) for job in jobs]
        try:
            for future in as_completed(futures):
                bar.update(future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def build_cache(
    root: str | os.PathLike,
    manifest: pd.DataFrame,
    cache_dir: str | os.PathLike,
    *,
    image_size: int,
    workers: int | None = None,
    progress: bool = True,
    shard_size: int | None = None,
) -> tuple[pd.DataFrame, int]:
    """Decode the manifest's usable files under `root` into `cache_dir` (if not done yet).

    Returns the decode table (path, row, reason, detail) and how many files this call
    decoded: 0 when the cache was complete already.
    """
    cache_dir = Path(cache_dir)
    done = cache_dir / DECODED
    if done.exists():
        return pd.read_parquet(done), 0
    if image_size < 1:
        raise DatasetError(f"image size {image_size}: use a positive number of pixels, e.g. 227")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise DatasetError(f"workers = {workers}: use at least 1 (default: all cores)")
    size = shard_size or SHARD_SIZE
    files = manifest.loc[manifest["status"] == OK, "path"].sort_values().tolist()
    shard_dir = cache_dir / SHARDS
    shard_dir.mkdir(parents=True, exist_ok=True)
    shards = [(i, min(i + size, len(files))) for i in range(0, len(files), size)]
    jobs = []
    for start, stop in shards:
        npy, info = _shard_files(shard_dir, start, stop)
        if not (npy.exists() and info.exists()):
            paths = [str(Path(root) / p) for p in files[start:stop]]
            jobs.append((paths, image_size, npy, info))
    todo = sum(len(job[0]) for job in jobs)
    with tqdm(
        total=len(files),
        initial=len(files) - todo,
        desc="decoding",
        unit="img",
        file=sys.stderr,
        disable=not progress,
    ) as bar:
        _run_shards(jobs, workers=workers, bar=bar)

    errors: list[str | None] = []
    sums = []
    for start, stop in shards:
        info = json.loads(_shard_files(shard_dir, start, stop)[1].read_text())
        errors += info["errors"]
        sums.append(np.asarray(info["sums"], dtype=np.float64).reshape(-1, 2, 3))
    ok = np.array([e is None for e in errors], dtype=bool)
    _concatenate(shard_dir, shards, ok, cache_dir / IMAGES, image_size)
    write_npy(cache_dir / PIXEL_SUMS, np.concatenate(sums)[ok] if sums else np.zeros((0, 2, 3)))
    rows = np.full(len(files), -1, dtype=np.int64)
    rows[ok] = np.arange(int(ok.sum()))
    reasons = [split_error(e) if e else ("", "") for e in errors]
    decoded = pd.DataFrame(
        dict(
            path=files,
            row=rows,
            reason=[r for r, _ in reasons],
            detail=[d for _, d in reasons],
        )
    )
    write_parquet(decoded, done)
    shutil.rmtree(shard_dir, ignore_errors=True)
    return decoded, todo


def _copy_range(src: int, dst: int, src_pos: int, dst_pos: int, length: int) -> None:
    """Copy bytes between file descriptors, in the kernel where it can."""
    while length > 0:
        n = 0
        if hasattr(os, "copy_file_range"):
            try:
                n = os.copy_file_range(src, dst, length, src_pos, dst_pos)
            except OSError:  # e.g. not supported by this filesystem
                n = 0
        if n == 0:
            n = os.pwrite(dst, os.pread(src, min(length, 1 << 24), src_pos), dst_pos)
        src_pos, dst_pos, length = src_pos + n, dst_pos + n, length - n


def _concatenate(
    shard_dir: Path, shards: list[tuple[int, int]], ok: np.ndarray, out: Path, image_size: int
) -> None:
    """Write the decodable rows of all shards, in order, into one .npy (byte copies, no decode)."""
    shape = (int(ok.sum()), 3, image_size, image_size)
    row_bytes = 3 * image_size * image_size
    with atomic_path(out) as tmp:
        if shape[0] == 0:
            with open(tmp, "wb") as f:
                np.save(f, np.zeros(shape, dtype=np.uint8))
        else:
            header = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            dst_pos = header.offset
            del header
            with open(tmp, "r+b") as dst:
                for start, stop in shards:
                    npy = _shard_files(shard_dir, start, stop)[0]
                    src_pos = np.load(npy, mmap_mode="r").offset
                    keep = ok[start:stop]
                    # Copy each run of consecutive decodable rows in one call.
                    edges = np.flatnonzero(
                        np.diff(np.concatenate([[False], keep, [False]]).astype(np.int8))
                    )
                    with open(npy, "rb") as src:
                        for first, end in zip(edges[::2], edges[1::2], strict=True):
                            length = int(end - first) * row_bytes
                            _copy_range(
                                src.fileno(),
                                dst.fileno(),
                                src_pos + int(first) * row_bytes,
                                dst_pos,
                                length,
                            )
                            dst_pos += length


@dataclass(frozen=True, eq=False)
class Cache:
    """A prepared cache: arrays (memory-mapped by default), split, folds and meta data."""

    path: Path
    images: np.ndarray  # uint8 [N, 3, S, S]
    labels: np.ndarray  # int64 [N]
    split: np.ndarray  # str [N]: "train" / "test"
    fold: np.ndarray  # int64 [N]: 0..K-1, or -1 when prepared without folds
    meta: dict
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"Cache({str(self.path)!r}, images=uint8{list(self.images.shape)}, "
            f"classes={len(self.classes)}, train={int((self.split == 'train').sum())}, "
            f"test={int((self.split == 'test').sum())}, folds={self.num_folds})"
        )

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def num_folds(self) -> int:
        return int(self.meta["split"]["folds"])

    def indices(self, split: str) -> np.ndarray:
        """Row indices of "train", "test" or "all" images."""
        if split == "all":
            return np.arange(len(self.labels))
        if split not in ("train", "test"):
            raise ValueError(f"split {split!r}: use 'train', 'test' or 'all'")
        return np.flatnonzero(self.split == split)

    def fold_indices(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) row indices of fold `k`: test is fold k, train every other fold."""
        if self.num_folds < 2:
            raise DatasetError(
                f"the cache {str(self.path)!r} has no folds: run `hpsearch prepare SRC --folds K` (e.g. K=10)"
            )
        if not 0 <= k < self.num_folds:
            raise ValueError(f"fold {k} out of range: the cache has folds 0..{self.num_folds - 1}")
        return np.flatnonzero(self.fold != k), np.flatnonzero(self.fold == k)


def load_cache(path: str | os.PathLike, *, mmap: bool = True) -> Cache:
    """Load a cache written by `prepare`; images are memory-mapped unless `mmap=False`."""
    path = Path(path).expanduser()
    meta_file = path / META
    if not meta_file.exists():
        raise DatasetError(
            f"{str(path)!r} is not a complete cache (no {META}): run `hpsearch prepare SRC --image-size N` to build it"
        )
    meta = json.loads(meta_file.read_text())
    images = np.load(path / IMAGES, mmap_mode="r" if mmap else None)
    labels = np.load(path / LABELS)
    manifest = pd.read_parquet(path / MANIFEST, columns=["row", "split", "fold"])
    manifest = manifest[manifest["row"] >= 0].sort_values("row")
    if not (len(images) == len(labels) == len(manifest)):
        raise DatasetError(
            f"cache {str(path)!r} is inconsistent ({len(images)} images, {len(labels)} labels, {len(manifest)} manifest rows): delete it and run `hpsearch prepare` again"
        )
    return Cache(
        path=path,
        images=images,
        labels=labels,
        split=manifest["split"].to_numpy(dtype=str),
        fold=manifest["fold"].to_numpy(dtype=np.int64),
        meta=meta,
        classes=list(meta["classes"]),
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
    )
