"""`hpsearch prepare` (the whole command) vs a single-process PIL + torchvision loop.

Measured 2026-12-02 01:06-01:17 UTC, `python -m benchmarks bench_prepare -- --cold`, on a
2-core Intel Xeon VM (Sapphire Rapids, KVM; no GPU; 24 GB; virtual disk writing ~257 MB/s),
Python 3.11, Pillow 13.0, simplejpeg 1.9.0, torch 2.14.1 / torchvision 0.29.1 (the loop's);
1-minute load average 0.5-1.6 (this benchmark's own processes). Ratio = loop / hpsearch, per
pair:
  small 2,800 -> 64 px   warm 2.94x (2.92-3.07, 3 pairs; hpsearch 3.24-3.65 s, loop 9.9-10.7 s)
                         cold 3.07x (2.97-3.25, 3 pairs; hpsearch 3.87-4.18 s, loop 11.9-13.0 s)
                         target >= 1.5x: met
  seed 29,008 -> 227 px  warm 2.48x (2.28-2.68, 2 pairs; hpsearch 34.6-38.8 s, loop 88-93 s)
                         cold 2.84x (2.76-2.92, 2 pairs; hpsearch 35.6-36.2 s, loop 98-106 s)
                         target >= 1.8x (0.9 x 2 cores): met
`hpsearch prepare` does not import torch; its split imports scikit-learn inside prepare()
(~1.5 s at the small size, where it is most of the gap to the runs with a numpy split). Where the seed's ~35 s go: ~2.1 ms
of CPU per image on 2 processes (user 1.7 ms: simplejpeg's decoding at 5/8 ~0.9, the resize of
the crop ~0.5, exact pixel sums 0.05; kernel 0.3 ms, mostly copying the pixels into the page
cache), 0.2-0.5 s listing, and the cache's 4.5 GB flushed to the disk while the decoding runs
(2 s checkpoints), so the final sync takes ~0 s.
Before this change (fresh clone, same kind of machine): 0.56x-1.38x at seed scale.

What is compared, on generated photo-like 500x375 JPEGs in 28 classes (bench_data's generator;
the seed's photos are ~500 px wide), the same files on both sides:
- hpsearch: the command a user runs, `hpsearch prepare SRC --image-size S --cache FRESH`, in a
  subprocess: CLI start, listing, split, decoding on all cores, statistics, writing the cache
  (synced to disk, as every cache is). A fresh cache folder each time, deleted afterwards.
- baseline: a script in a subprocess: imports PIL and torchvision, lists the folder, and runs
  `Image.open(p).convert("RGB")` + torchvision `Resize(S)` + `CenterCrop(S)` over every JPEG in
  one process into one uint8 array in memory (it writes nothing).
Each pair runs both sides one after the other, alternating which goes first; the ratio is
baseline / hpsearch per pair, reported as the median and the min-max over the pairs.
Sizes: "small" 2,800 JPEGs -> 64 px (target >= 1.5x) and "seed" 29,008 -> 227 px (target >=
0.9 x cores, 1.8x on 2 cores). Warm: every file was read before, both sides start from the
page cache. Cold (`--cold`, root only): `sync; echo 3 > /proc/sys/vm/drop_caches` before each
side, so both read the JPEGs (and the Python packages) from disk.

Run: `python -m benchmarks bench_prepare` (small and seed size, warm), `... -- --cold` (warm
and cold), `... -- --sizes small --repeats 5`; `--smoke` (tiny, measures nothing).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import header, load_average, verdict
from benchmarks.bench_data import generate
from hpsearch.data_pipeline import default_cache_root
from hpsearch.data_pipeline.cache import default_workers

SMALL_TARGET = 1.5
SEED_TARGET_PER_CORE = 0.9
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
# name: (images, classes, width, height, image size, pairs, test fraction)
SIZES = {
    "small": (2800, 28, 500, 375, 64, 3, 0.1),
    "seed": (29008, 28, 500, 375, 227, 2, 0.1),
    "smoke": (40, 10, 96, 72, 32, 1, 0.25),
}

LOOP = """\
import os, sys
import numpy as np
from PIL import Image
from torchvision import transforms

root, size = sys.argv[1], int(sys.argv[2])
tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size)])
paths = sorted(
    os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.lower().endswith(".jpg")
)
out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
for i, p in enumerate(paths):
    with Image.open(p) as im:
        out[i] = np.asarray(tf(im.convert("RGB"))).transpose(2, 0, 1)
print(len(paths), "images")
"""


def hpsearch_command() -> list[str]:
    """The console script next to this Python (what `make install` puts there), else -m."""
    script = Path(sys.executable).with_name("hpsearch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "hpsearch"]


def drop_page_cache() -> str | None:
    """Drop the page cache; None when done, else why it cannot be."""
    try:
        os.sync()
        DROP_CACHES.write_text("3\n")
    except OSError as exc:
        return f"cannot drop the page cache ({exc}); run as root on Linux"
    return None


def _timed(cmd: list[str], cold: bool) -> tuple[float, str]:
    if cold and (why := drop_page_cache()):
        raise RuntimeError(why)
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return seconds, out.stdout


def _own_seconds(summary: str) -> float | None:
    """prepare()'s own time from the summary line `cache ... ; 12.3 s)`."""
    match = re.search(r"; ([0-9.]+) s\)", summary)
    return float(match[1]) if match else None


def _imports() -> str:
    """What `hpsearch prepare` imports before it starts working, and how long that takes."""
    code = (
        "import sys, time; t = time.perf_counter()\n"
        "import hpsearch.search.cli\n"
        "from hpsearch.data_pipeline import DatasetError, format_summary, prepare\n"
        "t = time.perf_counter() - t\n"
        "heavy = [m for m in ('torch', 'torchvision', 'sklearn', 'scipy', 'pandas', 'pyarrow')"
        " if m in sys.modules]\n"
        "print(f'{t:.2f} s; of torch, torchvision, sklearn, scipy, pandas, pyarrow: "
        '{", ".join(heavy) or "none"}\')\n'
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def run_size(
    name: str, *, data_root: Path, work: Path, pairs: int, cold: bool, workers: int
) -> list[float]:
    images, classes, width, height, size, _, test_fraction = SIZES[name]
    src = generate(
        data_root / f"photos-{images}-{width}x{height}-{classes}c",
        images=images,
        classes=classes,
        width=width,
        height=height,
        workers=workers,
    )
    if not cold:
        for f in src.rglob("*.jpg"):  # both sides start from the page cache
            f.read_bytes()
    files = list(src.rglob("*.jpg"))
    mb = sum(f.stat().st_size for f in files) / 1e6
    print(
        f"data     {src}: {len(files)} JPEGs of {width}x{height} in {classes} classes "
        f"({mb:.0f} MB, {mb * 1000 / len(files):.0f} KB each) -> {size} px",
        flush=True,
    )
    loop = work / "loop.py"
    loop.write_text(LOOP)
    kind = "cold" if cold else "warm"
    ratios = []
    for i in range(pairs):
        cache = work / f"cache-{name}-{kind}-{i}"
        hp_cmd = hpsearch_command() + [
            "prepare", str(src), "--image-size", str(size), "--cache", str(cache),
            "--test-fraction", str(test_fraction), "--val-fraction", str(test_fraction),
            "--workers", str(workers),
        ]  # fmt: skip
        base_cmd = [sys.executable, str(loop), str(src), str(size)]
        hp_first = i % 2 == 0
        times: dict[str, float] = {}
        for side in ("hpsearch", "loop") if hp_first else ("loop", "hpsearch"):
            seconds, out = _timed(hp_cmd if side == "hpsearch" else base_cmd, cold)
            times[side] = seconds
            if side == "hpsearch":
                own = _own_seconds(out)
                if "built: decoded" not in out:
                    raise RuntimeError(f"hpsearch prepare did not decode:\n{out}")
                shutil.rmtree(cache, ignore_errors=True)  # not timed
        ratio = times["loop"] / times["hpsearch"]
        ratios.append(ratio)
        own_text = f"{own:.2f} s in prepare(), {times['hpsearch'] - own:.2f} s start" if own else ""
        print(
            f"{name:<5} {kind}  pair {i + 1} ({'hpsearch' if hp_first else 'loop'} first): "
            f"hpsearch {times['hpsearch']:.2f} s ({len(files) / times['hpsearch']:.0f} img/s; "
            f"{own_text}), loop {times['loop']:.2f} s ({len(files) / times['loop']:.0f} img/s): "
            f"{ratio:.2f}x  [{load_average()}]",
            flush=True,
        )
    return ratios


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(
        prog="bench_prepare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes: checks the benchmark runs, measures nothing",
    )
    p.add_argument(
        "--sizes", default="small,seed", help="comma-separated: small, seed (default: both)"
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="pairs per size (default: small 3, seed 2)"
    )
    p.add_argument(
        "--cold", action="store_true", help="also measure from a cold page cache (needs root)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="hpsearch's decoding processes (default: all cores)",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="where the generated photos are kept (default: under the hpsearch cache root)",
    )
    args = p.parse_args(argv)
    names = ["smoke"] if args.smoke else [n.strip() for n in args.sizes.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SIZES))
    if unknown:
        p.error(f"unknown size(s) {unknown}: use small and/or seed")
    header(
        "; ".join(
            f"{n}: {SIZES[n][0]} JPEGs of {SIZES[n][2]}x{SIZES[n][3]} -> {SIZES[n][4]} px"
            for n in names
        )
        + f"; hpsearch with {args.workers} processes",
        smoke=args.smoke,
    )
    print(f"start    hpsearch prepare's imports: {_imports()}", flush=True)
    kinds = [False]
    if args.cold:
        why = drop_page_cache()
        if why:
            print(f"cold     not measured: {why}")
        else:
            kinds.append(True)
    with tempfile.TemporaryDirectory(prefix="bench_prepare-") as tmp:
        work = Path(tmp)
        data_root = work if args.smoke else (args.data or default_cache_root() / "bench_data")
        results = []
        for name in names:
            target = SMALL_TARGET if name != "seed" else SEED_TARGET_PER_CORE * args.workers
            for cold in kinds:
                pairs = args.repeats or SIZES[name][5]
                ratios = run_size(
                    name,
                    data_root=data_root,
                    work=work,
                    pairs=pairs,
                    cold=cold,
                    workers=args.workers,
                )
                results.append((name, cold, ratios, target))
    for name, cold, ratios, target in results:
        med = statistics.median(ratios)
        print(
            f"ratio    {name} {'cold' if cold else 'warm'}: {med:.2f}x (min {min(ratios):.2f}x - "
            f"max {max(ratios):.2f}x over {len(ratios)} pairs); {verdict(med, target)} by the "
            f"median, {'met' if min(ratios) >= target else 'NOT met'} by the worst pair"
        )
    print(f"end      {load_average()}")
