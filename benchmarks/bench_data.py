"""Data pipeline: decode-once cache + `Batches` vs the seed's ImageFolder + DataLoader.

Measured 2026-11-26, `python -m benchmarks bench_data`, on a 2-core AMD EPYC VM (CPU only,
no GPU; shared with other engineers, run while it was idle), torch 2.14.1, Pillow 13.0:
2000 JPEGs of 640x480 (86 KB each) in 10 classes -> 227 px, batch 150, 2 workers.
  cache build   1 process 7.85 s (255 img/s), 2 processes 3.80 s (526 img/s): 2.07x (target 1.8x: met)
  one epoch     ImageFolder+DataLoader 7.92 s (252 img/s), Batches 0.33 s (6,079 img/s;
                first epoch 1.09 s, memmap pages still cold): 24x (target 100x: NOT met on CPU)
  fidelity      cached pixels vs a full decode + Resize + CenterCrop: mean |diff| 0.88, max 24
                levels of 255 (reduced-scale JPEG decoding, 1/2 here; the max is at sharp edges)
On the CPU an epoch of Batches is bound by writing N x 3 x 227 x 227 float32 (1.2 GB for 2000
images): about 0.3 s here whatever the loader, so 100x over an 8 s DataLoader epoch is out of
reach on 2 cores; the target assumes the GPU path (uint8 images resident on the device, one
cast and multiply-add per batch there), which this machine could not measure. A run taken
while other engineers' Ray trials used both cores gave 0.73x and 18x: such numbers are noise.
The `make bench` of 2026-11-26 13:04 (load 1.0): build 9.38 s vs 3.88 s, 2.42x; epoch 8.59 s vs
0.33 s, 26.4x.

What is compared, on one generated folder of photo-like 640x480 JPEGs in 10 classes:
- one epoch of `Batches` over the cache vs one epoch of torchvision `ImageFolder` +
  `DataLoader` with the seed's transforms (Resize, CenterCrop, ToTensor, Normalize;
  batch 150, num_workers = all cores; workers restart every epoch, as in the seed).
  Target: >= 100x.
- building the cache with all cores vs one process (workers=1). Target: >= 1.8x on 2 cores.
- fidelity: cached pixels vs the seed's transforms on the same files (JPEGs decoded at a
  reduced scale, m/8, make them differ by a few levels of 255; see data_pipeline.decode).

Run: `python -m benchmarks bench_data` (full size) or with `--smoke` (tiny, measures nothing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFilter

from hpsearch.data_pipeline import Batches, default_cache_root, prepare
from hpsearch.data_pipeline.cache import default_workers

EPOCH_TARGET = 100.0
BUILD_TARGET = 1.8


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like image: smooth colour fields, shapes, blur and sensor-like noise."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (max(2, height // 60), max(2, width // 60), 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(10, width // 3)), y0 + int(rng.integers(10, height // 3))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    noise = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    return Image.fromarray(
        np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    )


def _write_photos(args: tuple[Path, int, int, int, int, int]) -> None:
    folder, start, stop, classes, width, height = args
    for i in range(start, stop):
        photo(width, height, i).save(folder / f"c{i % classes:02d}" / f"{i:06d}.jpg", quality=90)


def generate(
    folder: Path, *, images: int, classes: int, width: int, height: int, workers: int
) -> Path:
    """Write the photo folder once; a marker file next to it says it is complete."""
    done = folder.with_name(folder.name + ".complete")
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for c in range(classes):
        (folder / f"c{c:02d}").mkdir(parents=True)
    step = 50
    jobs = [
        (folder, s, min(s + step, images), classes, width, height) for s in range(0, images, step)
    ]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_write_photos, jobs))
    done.touch()
    return folder


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def _dataloader_epoch(
    src: Path, *, size: int, mean, std, batch_size: int, workers: int, device: torch.device
) -> int:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    loader = DataLoader(
        datasets.ImageFolder(str(src), transform=tf),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
    )
    n = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        n += len(y)
    _sync(device)
    if n != len(loader.dataset):
        raise RuntimeError(f"the DataLoader epoch saw {n} of {len(loader.dataset)} images")
    return n


def _batches_epoch(batches: Batches, device: torch.device) -> int:
    n = 0
    for _, y in batches:
        n += len(y)
    _sync(device)
    return n


def _fidelity(cache, src: Path, samples: int) -> tuple[float, float]:
    from torchvision import transforms

    tf = transforms.Compose(
        [
            transforms.Resize(cache.image_size),
            transforms.CenterCrop(cache.image_size),
            transforms.PILToTensor(),
        ]
    )
    manifest = pd.read_parquet(cache.path / "manifest.parquet")
    rows = manifest[manifest["row"] >= 0].head(samples)
    diffs = [
        np.abs(
            cache.images[r].astype(int) - tf(Image.open(src / p).convert("RGB")).numpy().astype(int)
        )
        for p, r in zip(rows["path"], rows["row"], strict=True)
    ]
    return float(np.mean([d.mean() for d in diffs])), float(max(d.max() for d in diffs))


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(
        prog="bench_data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes: checks the benchmark runs, measures nothing",
    )
    p.add_argument(
        "--images", type=int, default=None, help="photos in the folder (default 2000; smoke 40)"
    )
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="image size in px (default 227, the seed's; smoke 32)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="processes for the cache build and the DataLoader (default: all cores)",
    )
    p.add_argument(
        "--batch-size", type=int, default=150, help="batch size (default 150, the seed's)"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="where the generated photos are kept (default: under the hpsearch cache root)",
    )
    args = p.parse_args(argv)
    n_images = args.images or (40 if args.smoke else 2000)
    size = args.size or (32 if args.smoke else 227)
    width, height = (96, 72) if args.smoke else (640, 480)
    device = torch.device(args.device)
    workers = args.workers
    # 40 smoke images in 10 classes need a test fraction of 0.25 for one test image per class.
    split = dict(
        test_fraction=0.25 if args.smoke else 0.1, val_fraction=0.25 if args.smoke else 0.1
    )

    print(
        f"machine  {_cpu_model()}, {os.cpu_count()} cores ({default_workers()} usable), torch {torch.__version__}, device {device}"
    )
    print(f"date     {dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(
        f"sizes    {n_images} JPEGs of {width}x{height} in 10 classes -> {size}x{size}, batch {args.batch_size}, workers {workers}"
        + ("  [smoke: numbers mean nothing]" if args.smoke else "")
    )

    with tempfile.TemporaryDirectory(prefix="bench_data-") as tmp:
        data_root = Path(tmp) if args.smoke else (args.data or default_cache_root() / "bench_data")
        src = generate(
            data_root / f"photos-{n_images}-{width}x{height}",
            images=n_images,
            classes=10,
            width=width,
            height=height,
            workers=workers,
        )
        for f in src.rglob("*.jpg"):  # read every file once: both sides start from the page cache
            f.read_bytes()
        mb = sum(f.stat().st_size for f in src.rglob("*.jpg")) / 1e6
        print(f"data     {src} ({mb:.0f} MB, {mb * 1000 / n_images:.0f} KB per JPEG)")

        def build(name: str, n_workers: int):
            return prepare(
                src,
                image_size=size,
                cache_root=Path(tmp) / name,
                workers=n_workers,
                progress=False,
                **split,
            )

        t_one = _seconds(build, "one", 1)
        start = time.perf_counter()
        cache, _ = build("all", workers)
        t_all = time.perf_counter() - start
        build_ratio = t_one / t_all
        print(
            f"build    1 process {t_one:.2f} s ({n_images / t_one:.0f} img/s); {workers} processes {t_all:.2f} s ({n_images / t_all:.0f} img/s)"
        )
        print(
            f"         ratio {build_ratio:.2f}x (target >= {BUILD_TARGET}x: {'met' if build_ratio >= BUILD_TARGET else 'NOT met'})"
        )

        start = time.perf_counter()
        batches = Batches.from_cache(
            cache, "all", batch_size=args.batch_size, device=device, shuffle=True
        )
        t_make = time.perf_counter() - start
        t_first = _seconds(_batches_epoch, batches, device)
        t_epoch = min(_seconds(_batches_epoch, batches, device) for _ in range(3))
        loader = dict(
            size=size,
            mean=cache.mean,
            std=cache.std,
            batch_size=args.batch_size,
            workers=workers,
            device=device,
        )
        t_loader = _seconds(_dataloader_epoch, src, **loader)
        epoch_ratio = t_loader / t_epoch
        print(f"epoch    ImageFolder+DataLoader {t_loader:.2f} s ({n_images / t_loader:.0f} img/s)")
        print(
            f"         Batches {t_epoch * 1000:.1f} ms ({n_images / t_epoch:.0f} img/s; first epoch {t_first * 1000:.1f} ms, construction {t_make * 1000:.1f} ms)"
        )
        print(
            f"         ratio {epoch_ratio:.1f}x (target >= {EPOCH_TARGET:.0f}x: {'met' if epoch_ratio >= EPOCH_TARGET else 'NOT met'})"
        )
        if device.type == "cpu":
            print(
                "         (CPU: every epoch still casts N x 3 x S x S bytes to float32, which is "
                "memory-bound; the 100x target assumes the GPU path, images resident on the device)"
            )
        mean_diff, max_diff = _fidelity(cache, src, samples=min(200, n_images))
        print(
            f"fidelity cache vs Resize+CenterCrop: mean |diff| {mean_diff:.2f}, max {max_diff:.0f} (uint8 levels)"
        )
        del cache, batches
