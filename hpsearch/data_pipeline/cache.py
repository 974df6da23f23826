"""Decode an image folder once into uint8 arrays on disk, and load them back.

A cache directory (named after the folder, the image size and a fingerprint of the
files, so a changed folder or size gets a new one) holds:

    images.npy        uint8 [N, 3, S, S], N = decodable images in manifest order
    pixel_sums.npy    float64 [N, 2, 3]: per image and channel, sum and sum of squares
                      of the uint8 pixels (exact), so any split's mean/std is instant
    decoded.parquet   every listed file: path, row in images.npy (-1: not decodable),
                      reason, detail; written last by the decode, it marks it complete
    labels.npy        int64 [N]      }  written by `prepare` for the chosen merge map,
    manifest.parquet  the manifest   }  edits (exclude, relabel), split and folds;
                                        cheap to rewrite, no decode
    meta.json         classes, size, mean/std, counts, skipped files, edits; written last

The decode runs in shards of `SHARD_SIZE` files over a process pool. Each worker writes
its decoded shard straight into building/images.npy, one row per listed file, at the
file's place in the listing, and returns the shard's errors and pixel sums (measured
while the pixels are in its cache). Every `CHECKPOINT_SECONDS` (and when the build
stops on an error or Ctrl-C) the parent flushes that file to disk and then records the
shards it holds in building/done-NNNNNN.json, so a build that dies resumes with the
shards it is missing; the flushes also keep the disk writing while the workers decode.
When all are done the rows of undecodable files (if any) are squeezed out in place,
the header gets the final N, and the file is renamed to images.npy: the pixels are
written once, with no second pass over them unless some file could not be decoded.
"""

from __future__ import annotations

import errno
import io
import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from hpsearch.data_pipeline.decode import decode_shard, split_error
from hpsearch.data_pipeline.scan import OK, DatasetError
from hpsearch.rundir import atomic_path, write_json, write_npy, write_parquet

SHARD_SIZE = 64
CHECKPOINT_SECONDS = 2.0
IMAGES = "images.npy"
PIXEL_SUMS = "pixel_sums.npy"
DECODED = "decoded.parquet"
LABELS = "labels.npy"
MANIFEST = "manifest.parquet"
META = "meta.json"
BUILDING = "building"  # the decode in progress
COMPACTING = "compacting.json"  # in BUILDING while rows move: a crash there starts over


def default_workers() -> int:
    """The CPUs this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def pixel_sums(images: np.ndarray) -> np.ndarray:
    """float64 [n, 2, 3]: per image and channel, the exact sum and sum of squares."""
    flat = images.reshape(len(images), images.shape[1], -1)
    # 32-bit accumulators where no sum can overflow them (S <= 257 for the squares): twice as fast.
    wide = np.uint32 if flat.shape[-1] * 255 * 255 < 2**32 else np.int64
    sums = flat.sum(-1, dtype=wide)
    squares = np.einsum("ncp,ncp->nc", flat, flat, dtype=wide)
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


def _npy_header(rows: int, image_size: int) -> bytes:
    """The .npy header of uint8 [rows, 3, S, S]; numpy pads it so its length does not
    depend on `rows` (room to grow axis 0 in place)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf,
        {"descr": "|u1", "fortran_order": False, "shape": (rows, 3, image_size, image_size)},
    )
    return buf.getvalue()


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _prefetch(paths: list[str]) -> None:
    """Ask the kernel to read the shard's files now, all at once (a cold page cache then
    reads them in parallel instead of one at a time, as the decode asks for them)."""
    if not hasattr(os, "posix_fadvise"):
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # the decode reports it
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


_buffers: dict[tuple[int, int], np.ndarray] = {}


def _shard_buffer(n: int, image_size: int) -> np.ndarray:
    """This process's buffer for a shard of n images (reused: no fresh pages per shard)."""
    key = (n, image_size)
    if key not in _buffers:
        _buffers.clear()
        _buffers[key] = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    return _buffers[key]


def _build_shard(
    paths: list[str], image_size: int, target: str, start: int
) -> tuple[int, list[str | None], np.ndarray]:
    """Decode one shard into rows start.. of `target`; return (start, errors, pixel sums)."""
    _prefetch(paths)
    images, errors = decode_shard(paths, image_size, out=_shard_buffer(len(paths), image_size))
    sums = pixel_sums(images)
    offset = len(_npy_header(0, image_size)) + start * 3 * image_size * image_size
    fd = os.open(target, os.O_WRONLY)
    try:
        _pwrite_all(fd, memoryview(images).cast("B"), offset)
    finally:
        os.close(fd)
    return start, errors, sums


class _Build:
    """building/: the images file with one row per listed file, and which rows are done."""

    def __init__(self, folder: Path, n_files: int, image_size: int) -> None:
        self.folder, self.image_size = folder, image_size
        self.path = folder / IMAGES
        self.done = np.zeros(n_files, dtype=bool)
        self.errors: list[str | None] = [None] * n_files
        self.sums = np.zeros((n_files, 2, 3), dtype=np.float64)
        self.pending: list[tuple[int, list[str | None], np.ndarray]] = []
        self.last = time.monotonic()
        self.seq = 0
        if not self._resume(n_files):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            with open(self.path, "wb") as f:
                f.write(_npy_header(n_files, image_size))
                f.truncate(f.tell() + n_files * 3 * image_size * image_size)  # sparse
        self.fd = os.open(self.path, os.O_RDWR)

    def _resume(self, n_files: int) -> bool:
        """Take over the rows an earlier, interrupted build recorded; False to start afresh."""
        if (self.folder / COMPACTING).exists() or not self.path.exists():
            return False
        try:
            with open(self.path, "rb") as f:
                header = f.read(len(_npy_header(n_files, self.image_size)))
            if header != _npy_header(n_files, self.image_size):
                return False
            row = 3 * self.image_size * self.image_size
            if self.path.stat().st_size != len(header) + n_files * row:
                return False
            for done in sorted(self.folder.glob("done-*.json")):
                for start, errors, sums in json.loads(done.read_text()):
                    stop = start + len(errors)
                    self.done[start:stop] = True
                    self.errors[start:stop] = errors
                    self.sums[start:stop] = np.asarray(sums, dtype=np.float64).reshape(-1, 2, 3)
                self.seq = max(self.seq, int(done.stem.split("-")[1]) + 1)
        except (OSError, ValueError, TypeError, IndexError):
            return False
        return True

    def record(self, start: int, errors: list[str | None], sums: np.ndarray) -> None:
        stop = start + len(errors)
        self.done[start:stop] = True
        self.errors[start:stop] = errors
        self.sums[start:stop] = sums
        self.pending.append((start, errors, sums))
        if time.monotonic() - self.last >= CHECKPOINT_SECONDS:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Flush the pixels written so far, then record which shards they are."""
        self.last = time.monotonic()
        if not self.pending:
            return
        getattr(os, "fdatasync", os.fsync)(self.fd)  # macOS has no fdatasync
        entries = [[start, errors, sums.tolist()] for start, errors, sums in self.pending]
        write_json(self.folder / f"done-{self.seq:06d}.json", entries, indent=None)
        self.seq += 1
        self.pending = []

    def finish(self, out: Path) -> np.ndarray:
        """Drop the rows of undecodable files, set the header's N, move the file to `out`."""
        ok = np.array([e is None for e in self.errors], dtype=bool)
        header = _npy_header(len(ok), self.image_size)
        final = _npy_header(int(ok.sum()), self.image_size)
        row = 3 * self.image_size * self.image_size
        if len(final) != len(header):  # numpy's padding makes this impossible; never guess
            raise RuntimeError(f"the .npy header of {out} changed length; delete {self.folder}")
        if not ok.all():
            write_json(self.folder / COMPACTING, {"rows": int(ok.sum())})
            _squeeze(self.fd, ok, len(header), row)
            os.ftruncate(self.fd, len(final) + int(ok.sum()) * row)
        os.pwrite(self.fd, final, 0)
        self.close()
        with atomic_path(out) as tmp:  # synced and renamed by the one atomic writer
            os.replace(self.path, tmp)
        return ok

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _squeeze(fd: int, ok: np.ndarray, offset: int, row: int) -> None:
    """Move each run of kept rows down over the dropped ones, in order (in place)."""
    edges = np.flatnonzero(np.diff(np.concatenate([[False], ok, [False]]).astype(np.int8)))
    dst = offset
    chunk = max(row, (16 << 20) // row * row)
    for first, end in zip(edges[::2], edges[1::2], strict=True):
        src, length = offset + int(first) * row, int(end - first) * row
        if src != dst:  # dst < src: copying forward never overwrites rows not yet moved
            for pos in range(0, length, chunk):
                _pwrite_all(
                    fd, memoryview(os.pread(fd, min(chunk, length - pos), src + pos)), dst + pos
                )
        dst += length


def _run_shards(jobs: list[tuple], build: _Build, *, workers: int, bar: tqdm) -> None:
    try:
        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                build.record(*_build_shard(*job))
                bar.update(len(job[0]))
            return
        # fork: workers start in milliseconds and need nothing re-imported (the decode uses
        # only PIL, simplejpeg and numpy); elsewhere the platform default.
        ctx = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
            futures = [pool.submit(_build_shard, *job) for job in jobs]
            try:
                for future in as_completed(futures):
                    start, errors, sums = future.result()
                    build.record(start, errors, sums)
                    bar.update(len(errors))
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    finally:
        build.checkpoint()  # what is done is kept, whatever stopped the build


def _jobs(
    done: np.ndarray, files: list[str], root: Path, size: int, image_size: int, target: Path
) -> list[tuple]:
    """Shards of at most `size` rows over the rows not done yet."""
    todo = np.concatenate([[False], ~done, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(todo))
    jobs = []
    for first, end in zip(edges[::2], edges[1::2], strict=True):
        for start in range(int(first), int(end), size):
            stop = min(start + size, int(end))
            paths = [str(root / p) for p in files[start:stop]]
            jobs.append((paths, image_size, str(target), start))
    return jobs


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
    done_file = cache_dir / DECODED
    if done_file.exists():
        return pd.read_parquet(done_file), 0
    if image_size < 1:
        raise DatasetError(f"image size {image_size}: use a positive number of pixels, e.g. 227")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise DatasetError(f"workers = {workers}: use at least 1 (default: all cores)")
    files = manifest.loc[manifest["status"] == OK, "path"].sort_values().tolist()
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _build(root, files, cache_dir, image_size, workers, progress, shard_size)
    except OSError as e:
        if e.errno not in OUT_OF_SPACE:
            raise
        need = len(files) * 3 * image_size * image_size
        free = shutil.disk_usage(cache_dir).free
        raise DatasetError(
            f"writing the cache {cache_dir} failed: {e.strerror} ({e.filename or cache_dir}). "
            f"It needs about {_gb(need)} for {len(files)} images at {image_size} px; "
            f"{_gb(free)} are free there. Free space, or build it on a larger disk with "
            "--cache DIR (data.cache in an experiment). The cache is not complete and no run "
            "will use it; the next prepare goes on from the rows already written"
        ) from None


OUT_OF_SPACE = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _check_space(cache_dir: Path, rows: int, image_size: int) -> None:
    """Refuse before decoding when the disk cannot hold the images still to write (a full disk
    under the workers' writes would fail them midway)."""
    need = rows * 3 * image_size * image_size
    free = shutil.disk_usage(cache_dir).free
    if need > free:
        raise DatasetError(
            f"the cache {cache_dir} needs about {_gb(need)} more for {rows} images at "
            f"{image_size} px, but only {_gb(free)} are free there: free space, or build it "
            "on a larger disk with --cache DIR (data.cache in an experiment)"
        )


def _build(root, files, cache_dir: Path, image_size, workers, progress, shard_size):
    done_file = cache_dir / DECODED
    if not files:
        write_npy(cache_dir / IMAGES, np.zeros((0, 3, image_size, image_size), dtype=np.uint8))
        ok, sums, errors = np.zeros(0, dtype=bool), np.zeros((0, 2, 3)), []
        todo = 0
    else:
        build = _Build(cache_dir / BUILDING, len(files), image_size)
        try:
            _check_space(cache_dir, int((~build.done).sum()), image_size)
            jobs = _jobs(
                build.done, files, Path(root), shard_size or SHARD_SIZE, image_size, build.path
            )
            todo = sum(len(job[0]) for job in jobs)
            with tqdm(
                total=len(files),
                initial=len(files) - todo,
                desc="decoding",
                unit="img",
                file=sys.stderr,
                disable=not progress,
            ) as bar:
                _run_shards(jobs, build, workers=workers, bar=bar)
            ok = build.finish(cache_dir / IMAGES)
        except BaseException:
            build.close()
            raise
        sums, errors = build.sums, build.errors
    write_npy(cache_dir / PIXEL_SUMS, sums[ok])
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
    write_parquet(decoded, done_file)
    shutil.rmtree(cache_dir / BUILDING, ignore_errors=True)
    return decoded, todo


@dataclass(frozen=True, eq=False)
class Cache:
    """A prepared cache: arrays (memory-mapped by default), split, folds and meta data."""

    path: Path
    images: np.ndarray  # uint8 [N, 3, S, S]
    labels: np.ndarray  # int64 [N]; -1 for an excluded image (data_pipeline.edits)
    split: np.ndarray  # str [N]: "train" / "val" / "test"; "" for an excluded image
    fold: np.ndarray  # int64 [N]: 0..K-1 (train and val rows), -1 for test rows or no folds
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
            f"val={int((self.split == 'val').sum())}, test={int((self.split == 'test').sum())}, "
            f"folds={self.num_folds})"
        )

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def num_folds(self) -> int:
        return int(self.meta["split"]["folds"])

    @property
    def has_validation_part(self) -> bool:
        """False for a cache prepared before the three-part split (train / test only, where
        trials validated on the test part)."""
        return "val_fraction" in self.meta.get("split", {})

    def indices(self, split: str) -> np.ndarray:
        """Row indices of "train", "val", "test" or "all" images (those of the three parts:
        not the excluded ones, which stay decoded in `images`)."""
        if split == "all":
            return np.flatnonzero(self.split != "")
        if split not in ("train", "val", "test"):
            raise ValueError(f"split {split!r}: use 'train', 'val', 'test' or 'all'")
        if not self.has_validation_part:
            raise DatasetError(
                f"the cache {str(self.path)!r} was prepared with a train / test split only; "
                f"run `hpsearch prepare {self.meta.get('source', 'SRC')} --image-size "
                f"{self.image_size}` again to split it into train / validation / test "
                "(nothing is decoded again)"
            )
        return np.flatnonzero(self.split == split)

    def fold_indices(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) row indices of fold `k`: test is fold k, train every other fold (the
        held-out test part is in no fold)."""
        if self.num_folds < 2:
            raise DatasetError(
                f"the cache {str(self.path)!r} has no folds: run `hpsearch prepare SRC --folds K` (e.g. K=10)"
            )
        if not 0 <= k < self.num_folds:
            raise ValueError(f"fold {k} out of range: the cache has folds 0..{self.num_folds - 1}")
        return np.flatnonzero((self.fold >= 0) & (self.fold != k)), np.flatnonzero(self.fold == k)


def cache_paths(cache: Cache) -> np.ndarray:
    """The image file of each row of `cache.images`, as the manifest names it (relative to
    the image folder), object [N]."""
    manifest = pd.read_parquet(cache.path / MANIFEST, columns=["path", "row"])
    return manifest[manifest["row"] >= 0].sort_values("row")["path"].to_numpy(dtype=object)


# The cache's part names -> the tables' (predictions.parquet, audit.parquet).
PART_NAMES = {"train": "train", "val": "validation", "test": "test"}


def part_names(cache: Cache) -> np.ndarray:
    """The part of each row of `cache.images` as the tables name it: "train", "validation",
    "test", or "" for an image in no part (one `--exclude` left out), object [N]."""
    return np.array([PART_NAMES.get(p, "") for p in cache.split], dtype=object)


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
