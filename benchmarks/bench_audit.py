"""Near-duplicate search over a decoded cache (`find_duplicates`) at the seed's scale, vs
imagehash's phash over PIL images.

Measured 2026-12-04 05:53-05:59 UTC, `python -m benchmarks bench_audit` (3 runs) and
`... -- --cold` (2 runs), on a 2-core Intel Xeon VM (KVM, AVX-512 and AMX; no GPU; 24 GB), numpy
2.4.6, scipy 1.17.1, imagehash 4.3.2 (installed apart, for the baseline); 1-minute load average
0.5-2.2 (this benchmark's own threads):
  seed scale      29,008 images of 227 px (4.48 GB .npy memmap), 300 planted copies
    warm          hashing 3.79-5.12 s, matching 0.64-0.69 s: 4.4-5.8 s in all; target <= 30 s: met
    cold          hashing 6.67-8.59 s (the disk read), matching 0.69-0.74 s: 7.4-9.3 s
    loaded        06:01-06:10, other jobs (Ray tests) on the same 2 cores, load 3.6-4.9 at the
                  end: hashing 8.39-10.65 s, matching 1.04-1.25 s: 9.4-11.9 s (2 runs; the
                  single-threaded baseline barely slowed: 48-59x)
    found         300/300 (60 each of PNG 0.5x, 0.7x, 1.5x, JPEG q75 1x, 0.7x), false pairs 0;
                  9,140 pairs within 14 bits of hash, 300 left after the thumbnail check
    memory        +209-269 MB anonymous (119 MB of it the thumbnails and hashes returned)
    baseline      imagehash phash 0.48-0.50 ms/img -> 14.0-14.5 s, the Python pair loop
                  1.27-1.30 us/pair -> 533-547 s (both EXTRAPOLATED): 2.2-3.7x slower hashing,
                  790-840x slower matching, 76-124x in all
  digits          16 px: 100 %, 95.1 %, 100 % of the PNG 1.5x, PNG 0.7x and JPEG copies found,
                  6 false pairs among the 1,797; 32 px: all found, 5 false pairs (each two
                  near-identical scans of one digit: at most 7 of 16 levels apart per pixel)
Hashing reads the memmap at ~1 GB/s warm on 2 threads (the uint8 -> float32 copy and the
column resample are most of it); the matching is 420 M XOR + popcounts in blocks of 4 M.

What is measured, on a generated seed-scale cache: 29,008 synthetic photo-like images at 227 px,
uint8 [N, 3, 227, 227] (4.48 GB) written as an .npy in a temporary folder. Each image is a
smooth random field (random 4x4, 8x8 and 16x16 grids of luminance plus weaker colour, summed
and blown up bilinearly to 227 px, with a random brightness and contrast) plus texture (a
window at a random offset into one of 8 generated tiles of blurred noise), so every image is
distinct. Into it, 300 planted copies: a source row written as a PNG at 0.5x, 0.7x or 1.5x, or
as a JPEG (quality 75) at 1x or 0.7x, decoded back with `decode_image` at 227 px (as
`hpsearch prepare` would decode such a file) and written over another row.
- hpsearch: `hash_images(np.load(..., mmap_mode="r"))` (hashing: all cores, chunks read from
  the memmap) and `.duplicates()` (matching: all pairs, XOR + popcount, then the thumbnail
  check), timed apart; `find_duplicates` is exactly these two calls. Page cache: warm (the
  file was just written, and 4.5 GB fit in memory), or cold with `--cold` (dropped first: root).
  Recall: planted pairs found / planted; false pairs: every other pair reported. Memory: peak
  growth of anonymous memory (RssAnon, sampled every 5 ms); the cache's pages mapped while
  reading (RssFile) are the page cache's, shared and reclaimable, reported apart.
- baseline: what a user would write without hpsearch: for each row, `Image.fromarray` of the
  HWC pixels and `imagehash.phash`, then `h1 - h2 <= 10` over every pair in Python. Timed on the
  first 1,000 images and 50,000 pairs and EXTRAPOLATED linearly to all images and all pairs.
  Not measured when imagehash is not installed (`pip install ImageHash`; it is not one of
  hpsearch's dependencies). With `--cold` the page cache is dropped again before it.
- digits (first, the measurement behind the defaults): scikit-learn's 1,797 real 8x8 scans
  written as PNGs (as the demo writes them) and decoded at 16 and 32 px, plus one copy per
  digit of the decoded image written at 1.5x and 0.7x (PNG) and as a JPEG (q75) at 1x, decoded
  back; `find_duplicates` at its defaults: the copies found, and the pairs among the genuine
  digits (false pairs, by construction).
Target: hashing + matching <= 30 s on 2 cores at the seed's scale.

Run: `python -m benchmarks bench_audit` (seed scale), `... -- --cold`, `... -- --images 5000`;
`--smoke` (tiny, measures nothing).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import scipy
from PIL import Image
from sklearn.datasets import load_digits

from benchmarks._common import header, load_average, verdict
from benchmarks.bench_prepare import drop_page_cache
from hpsearch.data_pipeline.decode import decode_image
from hpsearch.data_pipeline.duplicates import (
    DEFAULT_MAX_DISTANCE,
    DEFAULT_MIN_SIMILARITY,
    find_duplicates,
    hash_images,
)

TARGET_SECONDS = 30.0
SEED_IMAGES, SEED_SIZE, SEED_PLANTED = 29008, 227, 300
SMOKE_IMAGES, SMOKE_SIZE, SMOKE_PLANTED = 96, 48, 10
SMOKE_DIGITS = 100
BASELINE_IMAGES, BASELINE_PAIRS = 1000, 50_000
BASELINE_DISTANCE = 10  # imagehash's usual advice: a distance under ~10 is the same picture
# planted copy: (scale of the written file, format)
KINDS = {
    "png 0.5x": (0.5, "png"),
    "png 0.7x": (0.7, "png"),
    "png 1.5x": (1.5, "png"),
    "jpeg q75 1x": (1.0, "jpg"),
    "jpeg q75 0.7x": (0.7, "jpg"),
}
DIGIT_KINDS = ("png 1.5x", "png 0.7x", "jpeg q75 1x")
TILES = 8
GRIDS = (4, 8, 16)  # the smooth field's octaves, grid points per side
AMPLITUDES = (45.0, 22.0, 11.0)  # their luminance standard deviations, levels of 255


def _blowup(points: int, size: int) -> np.ndarray:
    """float32 [size, points]: bilinear interpolation from `points` grid points to `size` px."""
    x = np.clip((np.arange(size) + 0.5) * points / size - 0.5, 0, points - 1)
    left = np.minimum(np.floor(x).astype(int), points - 2)
    frac = x - left
    out = np.zeros((size, points), dtype=np.float32)
    out[np.arange(size), left] = 1 - frac
    out[np.arange(size), left + 1] = frac
    return out


def _tiles(size: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [TILES, 2 size, 2 size]: blurred noise, std ~10 levels, to cut windows from."""
    noise = rng.normal(0.0, 1.0, (TILES, 2 * size, 2 * size)).astype(np.float32)
    blurred = (
        noise + np.roll(noise, 1, 1) + np.roll(noise, 1, 2) + np.roll(noise, (1, 1), (1, 2))
    ) / 4
    return blurred * (10.0 / blurred.std())


def _fill(out: np.ndarray, start: int, stop: int, tiles: np.ndarray, seed: int) -> None:
    """Generate images start..stop of `out` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n, size = stop - start, out.shape[2]
    fine = GRIDS[-1]
    grid = np.zeros((n, 3, fine, fine), dtype=np.float32)
    for points, amplitude in zip(GRIDS, AMPLITUDES, strict=True):
        up = _blowup(points, fine)
        luma = rng.normal(0.0, amplitude, (n, 1, points, points))
        colour = rng.normal(0.0, amplitude / 3, (n, 3, points, points))
        grid += (up @ (luma + colour).astype(np.float32) @ up.T).astype(np.float32)
    up = _blowup(fine, size)
    field = up @ grid @ up.T  # [n, 3, S, S]
    field *= rng.uniform(0.6, 1.4, (n, 1, 1, 1)).astype(np.float32)
    field += rng.uniform(70, 180, (n, 1, 1, 1)).astype(np.float32)
    for i in range(n):
        dy, dx = rng.integers(0, size, 2)
        field[i] += tiles[rng.integers(TILES), dy : dy + size, dx : dx + size]
    np.clip(field, 0, 255, out=field)
    out[start:stop] = field.astype(np.uint8)


def generate(path: Path, images: int, size: int, workers: int) -> np.ndarray:
    """Write the synthetic cache array to `path` (.npy) in chunks, on `workers` threads."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(images, 3, size, size))
    tiles = _tiles(size, np.random.default_rng(0))
    chunk = 128
    threads = []
    starts = list(range(0, images, chunk))
    for w in range(workers):

        def work(mine: list[int] = starts[w::workers]) -> None:
            for start in mine:
                _fill(out, start, min(start + chunk, images), tiles, seed=1 + start)

        threads.append(threading.Thread(target=work))
        threads[-1].start()
    for t in threads:
        t.join()
    out.flush()
    return out


def plant(array: np.ndarray, planted: int, work: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Overwrite `planted` rows with decoded copies of `planted` other rows; return (sources,
    targets, kinds)."""
    rng = np.random.default_rng(1)
    rows = rng.choice(len(array), 2 * planted, replace=False)
    sources, targets = rows[:planted], rows[planted:]
    names = list(KINDS)
    kinds = [names[i % len(names)] for i in range(planted)]
    size = array.shape[2]
    for src, dst, kind in zip(sources, targets, kinds, strict=True):
        scale, fmt = KINDS[kind]
        img = Image.fromarray(np.ascontiguousarray(array[src].transpose(1, 2, 0)))
        side = max(1, round(size * scale))
        path = work / f"copy.{fmt}"
        img.resize((side, side), Image.Resampling.BICUBIC).save(path, quality=75)
        array[dst] = decode_image(str(path), size)
    array.flush()
    return sources, targets, kinds


class PeakMemory:
    """Peak growth of this process's anonymous and file-backed resident memory while inside."""

    def __init__(self) -> None:
        self.anon = self.file = 0
        self._stop = threading.Event()

    @staticmethod
    def _read() -> tuple[int, int] | None:
        try:
            text = Path("/proc/self/status").read_text()
        except OSError:
            return None
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        try:
            return (
                int(fields["RssAnon"].split()[0]) * 1024,
                int(fields["RssFile"].split()[0]) * 1024,
            )
        except (KeyError, ValueError):
            return None

    def _sample(self, base: tuple[int, int]) -> None:
        while not self._stop.wait(0.005):
            now = self._read()
            if now:
                self.anon = max(self.anon, now[0] - base[0])
                self.file = max(self.file, now[1] - base[1])

    def __enter__(self) -> PeakMemory:
        base = self._read()
        self.available = base is not None
        if base:
            self._thread = threading.Thread(target=self._sample, args=(base,), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()


def baseline(array: np.ndarray, n: int) -> tuple[str, tuple[float, float] | None]:
    """imagehash's phash per PIL image and a Python loop over pairs, timed on a part and
    extrapolated to `n` images."""
    try:
        import imagehash  # optional: not a dependency of hpsearch
    except ImportError:
        return "not measured: imagehash is not installed (pip install ImageHash)", None
    m = min(BASELINE_IMAGES, len(array))
    start = time.perf_counter()
    hashes = [
        imagehash.phash(Image.fromarray(np.ascontiguousarray(array[i].transpose(1, 2, 0))))
        for i in range(m)
    ]
    per_image = (time.perf_counter() - start) / m
    pairs = 0
    start = time.perf_counter()
    close = 0
    for i in range(m):
        for j in range(i + 1, m):
            close += hashes[i] - hashes[j] <= BASELINE_DISTANCE
            pairs += 1
        if pairs >= BASELINE_PAIRS:
            break
    per_pair = (time.perf_counter() - start) / pairs
    all_pairs = n * (n - 1) // 2
    return (
        f"imagehash {importlib.metadata.version('ImageHash')} phash over PIL images: "
        f"{per_image * 1e3:.2f} ms/img on {m:,} images -> {per_image * n:,.1f} s for {n:,} "
        f"(EXTRAPOLATED); `h1 - h2 <= {BASELINE_DISTANCE}` loop: {per_pair * 1e6:.2f} us/pair "
        f"on {pairs:,} pairs -> {per_pair * all_pairs:,.0f} s for {all_pairs:,} pairs "
        f"(EXTRAPOLATED)"
    ), (per_image * n, per_pair * all_pairs)


def digits(size: int, work: Path, limit: int | None = None) -> str:
    """Planted copies of scikit-learn's real digits, and false pairs among the genuine ones,
    at the defaults: the measurement behind DEFAULT_MAX_DISTANCE and DEFAULT_MIN_SIMILARITY."""
    data = load_digits()
    scans = np.clip(data.images[:limit] * (255.0 / 16.0), 0, 255).astype(np.uint8)
    n = len(scans)
    rows = []
    for scan in scans:  # written as the demo writes them, decoded as the cache decodes
        Image.fromarray(scan, mode="L").save(work / "digit.png")
        rows.append(decode_image(str(work / "digit.png"), size))
    for kind in DIGIT_KINDS:
        scale, fmt = KINDS[kind]
        side = max(1, round(size * scale))
        for i in range(n):  # the copy is made of the image as the cache holds it
            held = Image.fromarray(np.ascontiguousarray(rows[i].transpose(1, 2, 0)))
            held.resize((side, side), Image.Resampling.BICUBIC).save(work / f"c.{fmt}", quality=75)
            rows.append(decode_image(str(work / f"c.{fmt}"), size))
    pairs = find_duplicates(np.stack(rows))
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    found = [
        np.isin(np.arange(n), a[(a < n) & (b // n == k) & (b % n == a)]).mean()
        for k in range(1, len(DIGIT_KINDS) + 1)
    ]
    genuine = pairs[(a < n) & (b < n)]
    diffs = np.abs(data.images[genuine.a.to_numpy()] - data.images[genuine.b.to_numpy()])
    worst = int(diffs.max()) if len(genuine) else 0
    same = int((data.target[genuine.a] == data.target[genuine.b]).sum())
    return (
        f"{size} px, {n:,} real scans + a copy each of "
        + ", ".join(f"{k} {f:.1%}" for k, f in zip(DIGIT_KINDS, found, strict=True))
        + f" found ({np.mean(found):.1%}); false pairs among the genuine digits {len(genuine)} "
        f"({same} of the same class; their 8x8 scans differ by <= {worst} of 16 levels per pixel)"
    )


def seed_scale(args: argparse.Namespace, work: Path, workers: int) -> None:
    """Generate, plant, time hashing and matching on the memmap, then the baseline."""
    nbytes = args.images * 3 * args.size * args.size
    free = shutil.disk_usage(work).free
    if free < nbytes * 1.1:
        raise SystemExit(f"needs {nbytes / 1e9:.1f} GB in {work}, {free / 1e9:.1f} free: --dir")
    path = work / "images.npy"
    start = time.perf_counter()
    array = generate(path, args.images, args.size, workers)
    generated = time.perf_counter() - start
    sources, targets, kinds = plant(array, args.planted, work)
    del array
    print(f"data     generated in {generated:.1f} s, {args.planted} copies planted, {path}")
    page_cache = "warm (the file was just written)"
    if args.cold:
        why = drop_page_cache()
        page_cache = f"NOT cold ({why}): warm" if why else "cold (dropped before hashing)"
    images = np.load(path, mmap_mode="r")
    with PeakMemory() as memory:
        start = time.perf_counter()
        hashed = hash_images(images)
        hashing = time.perf_counter() - start
        start = time.perf_counter()
        pairs = hashed.duplicates()
        matching = time.perf_counter() - start
    total = hashing + matching
    print(
        f"hpsearch page cache {page_cache}; {workers} threads\n"
        f"         hashing {hashing:.2f} s ({args.images / hashing:,.0f} img/s), matching "
        f"{matching:.2f} s, together {total:.2f} s: "
        f"{verdict(total, TARGET_SECONDS, at_most=True)}",
        flush=True,
    )
    found = set(zip(pairs["a"].tolist(), pairs["b"].tolist(), strict=True))
    planted = [tuple(sorted(p)) for p in zip(sources.tolist(), targets.tolist(), strict=True)]
    hits = [pair in found for pair in planted]
    per_kind = ", ".join(
        f"{kind} {sum(h for h, k in zip(hits, kinds, strict=True) if k == kind)}"
        f"/{kinds.count(kind)}"
        for kind in KINDS
    )
    candidates = len(hashed.duplicates(min_similarity=0.0))  # untimed: the hash alone
    print(
        f"recall   {sum(hits)}/{len(planted)} planted pairs found ({per_kind}); false pairs "
        f"{len(found - set(planted))}; flat images {int(hashed.flat.sum())}; hash candidates "
        f"(<= {DEFAULT_MAX_DISTANCE} bits) {candidates:,}, kept by the thumbnail check "
        f"(>= {DEFAULT_MIN_SIMILARITY}) {len(pairs):,}"
    )
    if memory.available:
        kept = (hashed.thumbs.nbytes + hashed.hashes.nbytes) / 1e6
        print(
            f"memory   peak anonymous memory +{memory.anon / 1e6:,.0f} MB (RssAnon; of which "
            f"the thumbnails and hashes kept {kept:,.0f} MB); cache pages mapped "
            f"+{memory.file / 1e9:.2f} GB (RssFile: the page cache's, shared)"
        )
    else:
        print("memory   not measured: no /proc/self/status")
    if args.cold and not drop_page_cache():
        page_cache = "cold"  # the baseline reads the same rows from the disk too
    text, seconds = baseline(images, args.images)
    print(f"baseline {text}; page cache {page_cache.split(' ')[0]}")
    if seconds is not None:
        print(
            f"ratio    baseline / hpsearch (the baseline extrapolated): hashing "
            f"{seconds[0] / hashing:,.1f}x, matching {seconds[1] / matching:,.0f}x, "
            f"together {sum(seconds) / total:,.0f}x"
        )


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(
        prog="bench_audit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes: checks the benchmark runs, measures nothing",
    )
    p.add_argument("--images", type=int, default=SEED_IMAGES, help="images (default: the seed's)")
    p.add_argument("--size", type=int, default=SEED_SIZE, help="image side, px (default 227)")
    p.add_argument("--planted", type=int, default=SEED_PLANTED, help="planted copies (default 300)")
    p.add_argument("--cold", action="store_true", help="drop the page cache before hashing (root)")
    p.add_argument("--dir", type=Path, default=None, help="for the .npy (default: TMPDIR)")
    args = p.parse_args(argv)
    if args.smoke:
        args.images, args.size, args.planted = SMOKE_IMAGES, SMOKE_SIZE, SMOKE_PLANTED
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    header(
        f"digits: 1,797 at 16 and 32 px; seed scale: {args.images:,} images of {args.size} px "
        f"(uint8, {args.images * 3 * args.size**2 / 1e9:.2f} GB .npy), {args.planted} planted "
        f"copies; numpy {np.__version__}, scipy {scipy.__version__}",
        smoke=args.smoke,
    )
    with tempfile.TemporaryDirectory(prefix="bench_audit-", dir=args.dir) as tmp:
        for size in (16, 32):
            limit = SMOKE_DIGITS if args.smoke else None
            print(f"digits   {digits(size, Path(tmp), limit)}", flush=True)
        seed_scale(args, Path(tmp), workers)
    print(f"end      {load_average()}")
