"""GPU path: AlexNet at 227 px training images/s and the fraction of the GPU's bf16 peak it
reaches; trials per hour with 4 trials packed on one GPU vs 1; 4 packed AlexNet trials at 227 px
streaming their batches from host memory vs keeping the images resident on the device.

NOT MEASURED YET: no machine with a CUDA device was available when this was written, so no GPU
figure exists. Without a CUDA device the script says so and exits cleanly (status 0).

What is measured, on the first CUDA device:
- training throughput: `search.trial.trainable.Trainer` (the trial's trainer; `precision: auto`, so
  bf16 autocast + channels_last where the device supports bf16) on uint8 images resident on the
  device, AlexNet at 227 px, batch 256; the first epoch is warm-up. Fraction of peak =
  3 x 2 x MACs per image (forward + backward, `models.count_macs`) x images/s over the device's
  dense bf16 peak (a table of known cards, or `--peak-tflops`). Target: >= 30 %.
- packing: the same small search (bench_search's config: FlatAlexNet width 0.25, MLP [64], 64 px,
  8 trials x 3 epochs, no early stopping, the cache built before the clock starts) with `resources.gpus: 1` (one trial at a time) and with
  `resources.gpus: 0.25` (4 at a time). Target: >= 2x trials x epochs per hour.
- streaming at 227 px: 4 AlexNet trials packed on the GPU (`resources.gpus: 0.25`, batch 128,
  2,000 images, 3 epochs, no early stopping) with `train.data_on_device: never` (every batch
  gathered into pinned memory and copied one batch ahead: the path trials take when the seed's
  4 GB split does not fit their share of the GPU) and with `always` (resident). Reported: each
  side's trials x epochs per hour, training images/s per trial (mean over the epochs after the
  first), the placement each trial recorded, and the ratio. Target: streaming >= 0.9x resident.

Run: `python -m benchmarks bench_gpu` (full size) or with `--smoke` (tiny, measures nothing).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import (
    SMALL_SPACE,
    experiment,
    header,
    local_ray,
    trial_data,
    trial_settings,
    verdict,
)

MFU_TARGET = 0.30
PACKING_TARGET = 2.0
STREAMING_TARGET = 0.9  # streamed / resident trials x epochs per hour, 4 packed at 227 px
STREAM_SPACE = {"arch": "AlexNet", "optimizer": {"sgd": {"lr": {"low": 0.001, "high": 0.01}}}}
# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, from the vendors' data sheets.
BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
}


def peak_tflops(name: str) -> float | None:
    for key in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return BF16_PEAK_TFLOPS[key]
    return None


def throughput(*, size: int, batch: int, images: int, arch: str) -> tuple[float, str, int]:
    """(training images/s, precision, MACs per image) of the trial's Trainer on the GPU."""
    from hpsearch.models import count_macs
    from hpsearch.search.experiment.space import model_config
    from hpsearch.search.trial.trainable import Trainer

    rng = np.random.default_rng(0)
    data = trial_data(
        rng.integers(0, 256, (images, 3, size, size), dtype=np.uint8),
        rng.integers(0, 10, images).astype(np.int64),
        np.arange(images),
        np.arange(min(images, batch)),  # Trainer builds validation batches too
        10,
    )
    config = {"arch": arch, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9}
    cfg = model_config(config, image_size=size, num_classes=10)
    settings = trial_settings(
        precision="auto", cpus=4, gpus=1, batch_size=batch, eval_batch_size=batch
    )
    trainer = Trainer(cfg, config, data, settings, train_idx=data.train_idx, val_idx=data.val_idx)
    trainer.train_epoch(0)  # warm-up: cuDNN autotuning, allocator
    torch.cuda.synchronize()
    result = trainer.train_epoch(1)  # ends with .cpu() of the losses: synchronised
    return result["images_per_s"], trainer.precision, count_macs(cfg)


def packed_search(
    src: Path,
    work: Path,
    *,
    gpus: float,
    trials: int,
    epochs: int,
    test_fraction: float,
    size: int = 64,
    space: dict | None = None,
    batch_size: int = 64,
    data_on_device: str = "auto",
    name: str | None = None,
) -> tuple[float, dict]:
    """(wall seconds, the run's tables) of a small search, the cache built before the clock."""
    from hpsearch.search.driver.tuner import run
    from hpsearch.search.trial.inputs import load_data

    name = name or f"packed-{int(round(1 / gpus))}"
    exp = experiment(
        f"bench-gpu-{name}",
        src,
        work,
        data={"image_size": size, "test_fraction": test_fraction, "val_fraction": test_fraction},
        search={
            "algorithm": "tpe",
            "num_trials": trials,
            "max_concurrent": int(round(1 / gpus)),
            "space": space or SMALL_SPACE,
        },
        scheduler={"type": "none"},
        train={"epochs": epochs, "batch_size": batch_size, "data_on_device": data_on_device},
        resources={"cpus": 2, "gpus": gpus},
    )
    load_data(exp, progress=False)  # both sides start from a built cache
    start = time.perf_counter()
    _run_dir, tables, _interrupted = run(exp, name=name, progress=False)
    return time.perf_counter() - start, tables


def trial_throughput(tables: dict) -> tuple[float, str]:
    """(mean training images/s per trial over the epochs after the first, the placements)."""
    epochs = tables["epochs"]
    later = epochs[epochs["epoch"] > 1] if (epochs["epoch"] > 1).any() else epochs
    placements = tables["trials"].get("data_placement")
    counts = placements.value_counts().to_dict() if placements is not None else {}
    return float(later["images_per_s"].mean()), ", ".join(f"{k} x{v}" for k, v in counts.items())


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(
        prog="bench_gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "no CUDA device: bench_gpu measures nothing on this machine (GPU figures not "
            "measured: MFU, packing, 227 px streaming); run it on a machine with an NVIDIA GPU"
        )
        return
    from benchmarks.bench_data import generate
    from hpsearch.data_pipeline.cache import default_workers

    size, batch, images = (64, 16, 64) if args.smoke else (227, 256, 2560)
    trials, epochs = (2, 1) if args.smoke else (8, 3)
    name = torch.cuda.get_device_name(0)
    header(
        f"AlexNet at {size} px, batch {batch}, {images} images resident on the device; packing: "
        f"{trials} trials x {epochs} epochs, 1 vs 4 per GPU; streaming: 4 AlexNet trials at 227 "
        f"px per GPU, streamed vs resident",
        smoke=args.smoke,
    )
    print(f"device   {name}, torch.version.cuda {torch.version.cuda}")
    ips, precision, macs = throughput(size=size, batch=batch, images=images, arch="AlexNet")
    peak = args.peak_tflops or peak_tflops(name)
    achieved = 6 * macs * ips / 1e12
    print(f"training {ips:,.0f} images/s, precision {precision}, {achieved:.1f} TFLOP/s")
    if peak:
        mfu = achieved / peak
        print(
            f"         {mfu * 100:.1f} % of the {peak:g} TFLOP/s bf16 peak ({verdict(mfu, MFU_TARGET)})"
        )
    else:
        print("         peak unknown for this device: pass --peak-tflops")
    with tempfile.TemporaryDirectory(prefix="bench_gpu-") as tmp:
        work = Path(tmp)
        n = 40 if args.smoke else 2000
        src = generate(
            work / "photos", images=n, classes=10, width=96, height=72, workers=default_workers()
        )
        with local_ray():
            # 40 smoke images in 10 classes: test and validation parts of a quarter (one image
            # per class each).
            common = dict(trials=trials, epochs=epochs, test_fraction=0.25 if args.smoke else 0.1)
            t_one, _ = packed_search(src, work, gpus=1.0, **common)
            t_four, _ = packed_search(src, work, gpus=0.25, **common)
            at_227 = dict(
                gpus=0.25,
                trials=4,
                epochs=1 if args.smoke else 3,
                test_fraction=common["test_fraction"],
                size=227,
                space=STREAM_SPACE,
                batch_size=16 if args.smoke else 128,
            )
            t_stream, streamed = packed_search(
                src, work, data_on_device="never", name="stream-227", **at_227
            )
            t_resident, resident = packed_search(
                src, work, data_on_device="always", name="resident-227", **at_227
            )
    per_hour = trials * epochs * 3600
    ratio = t_one / t_four
    print(
        f"packing  1 per GPU {per_hour / t_one:.0f}, 4 per GPU {per_hour / t_four:.0f} trials x epochs per hour"
    )
    print(f"         ratio {ratio:.2f}x ({verdict(ratio, PACKING_TARGET)})")
    per_hour_227 = at_227["trials"] * at_227["epochs"] * 3600
    for label, seconds, tables in (
        ("streamed", t_stream, streamed),
        ("resident", t_resident, resident),
    ):
        ips, placed = trial_throughput(tables)
        print(
            f"227 px   4 per GPU {label}: {per_hour_227 / seconds:.0f} trials x epochs per hour, "
            f"{ips:,.0f} images/s per trial (placement {placed})"
        )
    ratio_227 = t_resident / t_stream
    print(f"         streamed / resident {ratio_227:.2f}x ({verdict(ratio_227, STREAMING_TARGET)})")
