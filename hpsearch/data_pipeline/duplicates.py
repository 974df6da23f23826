"""Near-duplicate images in a decoded cache: DCT perceptual hashes, all-pairs Hamming matching,
a thumbnail check, and the clusters the pairs form.

    hashed = hash_images(images)             # uint8 [N, 3, S, S], e.g. a cache's images.npy memmap
    pairs = hashed.duplicates()              # DataFrame a, b, distance, similarity
    groups = duplicate_groups(pairs, len(images))  # int [N], -1: no duplicate

(`find_duplicates(images)` is the first two lines.) Nothing is decoded again: the pixels are
the cache's. The array is read `chunk` images at a time into one reused float32 buffer per
thread; no float copy of the whole array is ever made.

The hash (pHash): luminance (ITU-R 601: 0.299 R + 0.587 G + 0.114 B), area-resampled to 32 x 32
with two resampling matrices (exact box averages for any S, also S < 32, where they enlarge),
`scipy.fft.dctn` type 2 over the 32 x 32, and the 8 x 8 lowest frequencies [0:8, 0:8]: bit
k = coefficient k (row-major) > the median of the 63 AC ones. The DC term (the mean brightness,
always far above that median) is left out of the median and its bit is always 0, so two
images differ in at most 63 bits (an even number: each hash has 31 bits set, ties aside); a
brightness change alone moves no bit.

A candidate pair (Hamming distance <= `max_distance`) is kept when its 32 x 32 luminance
thumbnails are also alike: similarity >= `min_similarity`, where similarity is their
correlation with a noise floor (`ImageHashes.similarity`): differences under ~`NOISE_FLOOR`
levels of 255 count little, so a JPEG copy of a near-flat picture (sky), whose plain correlation
is mostly JPEG noise, is still found. The hash alone pairs distinct but alike images (two
handwritten 1s at 16 px share most of their low frequencies); a resized or re-saved copy keeps
its thumbnail as well. Flat images (thumbnail standard deviation < `FLAT_STD` levels) have no
hash to speak of (all 0): they are never paired, and `ImageHashes.flat` lists them.

Memory: the hashes and thumbnails, 4.1 KB per image (119 MB for the seed's 29,008), one float32
chunk per thread (20 MB at 227 px) and the matching's scratch (~40 MB per thread).

Defaults (max_distance 14, min_similarity 0.99), measured with `python -m benchmarks
bench_audit`, whose first lines repeat the digits' figures:
- scikit-learn's 1,797 real digits, written as 8 x 8 PNGs as the demo writes them and decoded
  at 16 and 32 px with `decode_image`, plus one copy per digit of that image written at 1.5x
  (PNG), at 0.7x (PNG) and as a JPEG (quality 75), decoded back: found 100 %, 95.1 % and 100 %
  at 16 px (98.4 %), all at 32 px. False pairs among the 1,797 genuine digits: 6 at 16 px, 5 at
  32 px, each two scans of the same digit that differ by at most 3-7 of 16 levels per pixel:
  near-identical scans that are in the data set. The hash alone (<= 14 bits) makes 15,958
  pairs of genuine digits at 16 px; min_similarity 0.985 finds every 0.7x copy but makes 41.
- Copies made of the 8 x 8 scan itself (12 px and 6 px PNGs, an 8 px JPEG) instead: 100 %,
  0 % and 99.8-99.9 %. A 6 x 6 copy of an 8 x 8 scan correlates 0.88-0.94 with its original, less
  than most digits do with their nearest other digit (median 0.947): no threshold finds those
  copies without pairing most digits.
- Measured once by hand, 110 crops of scikit-learn's two sample photos at 32, 64 and 227 px,
  copies at 0.5x, 0.7x, 1.5x (PNG), JPEG q75 at 1x and 0.7x, JPEG q50: 97.1 %, 98.5 % and
  98.5 % found, no false pair; the misses are mostly JPEG copies of near-flat crops, whose
  hashes are noise (the plain correlation instead of the noise floor: 94.1-96.5 %).
- At the seed's scale (29,008 photo-like images at 227 px, a 4.48 GB memmap, 300 planted
  copies) on 2 cores: 300 found, no false pair, 4.4-5.8 s with the file in the page cache,
  9.4-11.9 s while other jobs used the cores (`benchmarks/README.md`).
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.fft
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

THUMB = 32  # thumbnail side: the DCT's input and the second check's pixels
BITS_SIDE = 8  # the hash is the BITS_SIDE x BITS_SIDE lowest frequencies
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601
FLAT_STD = 1.0  # thumbnail std (levels of 255) below which an image is flat: never paired
DEFAULT_CHUNK = 32  # images per read: 32 x 3 x 227 x 227 float32 is 20 MB per thread
# Measured: see the module docstring (and `python -m benchmarks bench_audit`).
DEFAULT_MAX_DISTANCE = 14
DEFAULT_MIN_SIMILARITY = 0.99
NOISE_FLOOR = 8.0  # levels of 255: differences below it count little (see `similarity`)
_PAIR_BLOCK = 1 << 22  # hash comparisons per step of the matching (4 M: ~40 MB of scratch)
_SIMILARITY_BLOCK = 16384  # candidate pairs per gather: 2 x 64 MB of thumbnails


@dataclass(frozen=True)
class ImageHashes:
    """What `hash_images` measures, one row per image (4.1 KB per image in all)."""

    hashes: np.ndarray  # uint64 [N], the perceptual hashes (0 for flat images)
    thumbs: np.ndarray  # float32 [N, THUMB * THUMB]: luminance thumbnails, mean removed
    flat: np.ndarray  # bool [N]: near-constant images, never paired
    energy: np.ndarray  # float64 [N]: the sum of squares of each thumbnail

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """float64 [len(a)]: the thumbnail similarity of images a[k] and b[k], in [-1, 1]:
        their correlation with a noise floor, (cov + F^2) / sqrt((var_a + F^2)(var_b + F^2)),
        F = `NOISE_FLOOR` levels of 255 (variances and covariance over the thumbnails)."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        floor = NOISE_FLOOR**2 * self.thumbs.shape[1]  # in sums of squares, not means
        cov = np.empty(len(a), dtype=np.float64)
        for i in range(0, len(a), _SIMILARITY_BLOCK):  # bounded scratch
            s = slice(i, i + _SIMILARITY_BLOCK)
            cov[s] = np.einsum("ij,ij->i", self.thumbs[a[s]], self.thumbs[b[s]])
        scale = np.sqrt((self.energy[a] + floor) * (self.energy[b] + floor))
        return np.clip((cov + floor) / scale, -1.0, 1.0)

    def duplicates(
        self,
        *,
        max_distance: int = DEFAULT_MAX_DISTANCE,
        min_similarity: float = DEFAULT_MIN_SIMILARITY,
        workers: int | None = None,
    ) -> pd.DataFrame:
        """The pairs a < b with Hamming distance <= `max_distance` (every one: all pairs are
        compared) and similarity >= `min_similarity`: DataFrame a, b (int64 rows), distance
        (int64 bits), similarity (float64 in [0, 1]), sorted by a then b.

        The hashes are compared a block of rows against the rows after them at a time
        (XOR + popcount), on `workers` threads, and each block's candidates are checked
        before the next: memory is ~10 bytes per comparison of a block (`_PAIR_BLOCK`) per
        thread plus the pairs kept, however many candidates there are."""
        if not 0 <= max_distance <= 63:
            raise ValueError(f"max_distance must be in 0..63 bits, got {max_distance}")
        if not 0.0 <= min_similarity <= 1.0:
            raise ValueError(f"min_similarity must be in [0, 1], got {min_similarity}")
        rows = np.flatnonzero(~self.flat)
        hashes = np.ascontiguousarray(self.hashes[rows])
        n = len(rows)
        step = max(1, _PAIR_BLOCK // max(n, 1))

        def block(start: int) -> tuple[np.ndarray, ...]:
            dist = _popcount(hashes[start : start + step, None] ^ hashes[None, start:])
            r, c = np.nonzero(dist <= max_distance)
            later = c > r  # both offset by `start`: the pairs i < j
            r, c = r[later], c[later]
            d = dist[r, c].astype(np.int64)
            a, b = rows[r + start], rows[c + start]
            sim = self.similarity(a, b)
            keep = sim >= min_similarity
            return a[keep], b[keep], d[keep], sim[keep]

        empty = np.zeros(0, dtype=np.int64)
        parts = [(empty, empty, empty, np.zeros(0))]
        with ThreadPoolExecutor(workers or _usable_cpus()) as pool:
            parts += pool.map(block, range(0, n, step))
        a, b, dist, sim = (np.concatenate(p) for p in zip(*parts, strict=True))
        order = np.lexsort((b, a))
        return pd.DataFrame(
            {"a": a[order], "b": b[order], "distance": dist[order], "similarity": sim[order]}
        )


def _check_images(images: np.ndarray) -> None:
    """A ValueError that says what to change unless `images` is uint8 [N, 3, S, S]."""
    shape = getattr(images, "shape", None)
    dtype = getattr(images, "dtype", None)
    if shape is None or dtype is None:
        raise ValueError(
            f"images must be a numpy array uint8 [N, 3, S, S] (a cache's images.npy), "
            f"got {type(images).__name__}: wrap it with np.asarray"
        )
    got = f"got {dtype}{list(shape)}"
    if len(shape) == 4 and shape[-1] == 3 and shape[1] != 3:
        raise ValueError(
            f"images must be channels-first uint8 [N, 3, S, S], {got}: "
            "transpose it with images.transpose(0, 3, 1, 2)"
        )
    if len(shape) == 3:
        raise ValueError(
            f"images must be uint8 [N, 3, S, S], {got}: for grey images add the channel axis, "
            "np.repeat(images[:, None], 3, axis=1)"
        )
    if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3] or shape[2] < 1:
        raise ValueError(f"images must be uint8 [N, 3, S, S] with square S x S images, {got}")
    if dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 [N, 3, S, S], {got}: for floats in [0, 1] pass "
            "(images * 255).round().astype(np.uint8)"
        )


def area_matrix(size: int, out: int = THUMB) -> np.ndarray:
    """float32 [out, size]: row i averages the input pixels under output pixel i, weighted by
    their overlap (box / area resampling; for size < out it enlarges)."""
    edges = np.arange(out + 1) * (size / out)
    pixels = np.arange(size)
    overlap = np.minimum(edges[1:, None], pixels + 1.0) - np.maximum(edges[:-1, None], pixels)
    return (np.clip(overlap, 0.0, None) * (out / size)).astype(np.float32)


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    """uint8 bits set in each uint64: np.bitwise_count (numpy >= 2); a byte table on the numpy
    1.26 that pyproject still allows (a few times slower)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return _BYTE_BITS[x.view(np.uint8).reshape(*x.shape, 8)].sum(axis=-1, dtype=np.uint8)


def _bits_to_hashes(coeffs: np.ndarray) -> np.ndarray:
    """uint64 [n] from DCT blocks [n, 8, 8]: bit k = AC coefficient k > the AC median."""
    flat = coeffs.reshape(len(coeffs), -1)
    median = np.median(flat[:, 1:], axis=1, keepdims=True)
    bits = flat > median
    bits[:, 0] = False  # the DC term: see the module docstring
    return np.packbits(bits, axis=1, bitorder="little").view("<u8").ravel().astype(np.uint64)


def hash_images(
    images: np.ndarray,
    *,
    chunk: int = DEFAULT_CHUNK,
    workers: int | None = None,
    progress: bool = False,
) -> ImageHashes:
    """Hash and thumbnail uint8 [N, 3, S, S] images, `chunk` at a time on `workers` threads
    (default: every usable CPU). Memory: one float32 chunk per thread plus 4 KB per image."""
    _check_images(images)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 image, got {chunk}")
    n, size = images.shape[0], images.shape[2]
    resample = area_matrix(size)  # [32, S]
    # The row resample and the luminance in one matrix: [32, 3S] @ [3S, 32] per image.
    luma_rows = np.concatenate([w * resample for w in LUMA], axis=1).astype(np.float32)
    hashes = np.zeros(n, dtype=np.uint64)
    thumbs = np.zeros((n, THUMB * THUMB), dtype=np.float32)
    flat = np.zeros(n, dtype=bool)
    local = threading.local()

    def run(start: int) -> int:
        stop = min(start + chunk, n)
        buf = getattr(local, "buf", None)
        if buf is None:  # one buffer per thread, reused: no fresh pages per chunk
            buf = local.buf = np.empty((chunk, 3, size, size), dtype=np.float32)
        x = buf[: stop - start]
        np.copyto(x, images[start:stop], casting="unsafe")
        cols = x.reshape(-1, size) @ resample.T  # [c * 3 * S, 32]
        thumb = luma_rows @ cols.reshape(stop - start, 3 * size, THUMB)  # [c, 32, 32]
        coeffs = scipy.fft.dctn(thumb, type=2, axes=(1, 2), norm="ortho")
        hashes[start:stop] = _bits_to_hashes(coeffs[:, :BITS_SIDE, :BITS_SIDE])
        centred = thumb.reshape(stop - start, -1)
        centred -= centred.mean(axis=1, keepdims=True)
        is_flat = centred.std(axis=1) < FLAT_STD
        flat[start:stop] = is_flat
        hashes[start:stop][is_flat] = 0
        thumbs[start:stop] = centred
        return stop - start

    with (
        tqdm(total=n, desc="hashing", unit="img", file=sys.stderr, disable=not progress) as bar,
        ThreadPoolExecutor(workers or _usable_cpus()) as pool,
    ):
        for done in pool.map(run, range(0, n, chunk)):
            bar.update(done)
    energy = np.einsum("ij,ij->i", thumbs, thumbs, dtype=np.float64)
    return ImageHashes(hashes=hashes, thumbs=thumbs, flat=flat, energy=energy)


def perceptual_hashes(
    images: np.ndarray, *, chunk: int = DEFAULT_CHUNK, progress: bool = False
) -> np.ndarray:
    """uint64 [N]: the DCT perceptual hash of each uint8 [N, 3, S, S] image (module docstring)."""
    return hash_images(images, chunk=chunk, progress=progress).hashes


def find_duplicates(
    images: np.ndarray,
    *,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    chunk: int = DEFAULT_CHUNK,
    workers: int | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """The near-duplicate pairs of uint8 [N, 3, S, S] images: DataFrame a < b (row indices),
    distance (Hamming, bits), similarity (of the thumbnails, in [0, 1]), one row per pair:
    `hash_images(images).duplicates()` (see `ImageHashes.duplicates`)."""
    hashed = hash_images(images, chunk=chunk, workers=workers, progress=progress)
    return hashed.duplicates(
        max_distance=max_distance, min_similarity=min_similarity, workers=workers
    )


def duplicate_groups(pairs: pd.DataFrame, n: int) -> np.ndarray:
    """int64 [n]: the cluster of each image (connected components of the pairs), numbered
    0, 1, ... in the order of their first image; -1 for an image in no pair."""
    missing = {"a", "b"} - set(pairs.columns)
    if missing:
        raise ValueError(
            f"pairs needs the columns a and b (find_duplicates' table); missing {sorted(missing)}"
        )
    a = pairs["a"].to_numpy(dtype=np.int64)
    b = pairs["b"].to_numpy(dtype=np.int64)
    if len(a) and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= n):
        raise ValueError(f"pairs name rows outside 0..{n - 1}: pass n = the number of images")
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    paired = np.zeros(n, dtype=bool)
    paired[a] = paired[b] = True
    groups = np.full(n, -1, dtype=np.int64)
    _, first = np.unique(labels[paired], return_inverse=True)
    # np.unique numbers components by label, and labels follow the first node: in image order.
    groups[paired] = first
    return groups
