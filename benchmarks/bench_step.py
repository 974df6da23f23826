"""Training step on the CPU: hpsearch's default precision path vs fp32 eager, AlexNet at 227 px.

Measured 2026-12-02 on a 2-core Intel Xeon VM with AMX tiles (load average 2.1-3.3 from other
jobs), the same settings: fp32 eager 1,642 ms/step, default = bf16 autocast channels-last
1,482 ms/step, the same held-out accuracy (0.458): 1.11x (target >= 2x with AMX: NOT met;
one run, under load, not profiled yet).

Measured 2026-11-26, `python -m benchmarks bench_step`, on a 2-core AMD EPYC VM (AVX2, no
AVX-512, no AMX, no GPU), torch 2.14.1: AlexNet at 227 px, batch 16, 4 timed steps after 4
warm-up steps, 96 held-out images, 2 threads:
  fp32 eager (NCHW)        1,205 ms/step (13.3 img/s), held-out accuracy after 8 steps 0.458
  default = fp32 here,     1,320 ms/step (12.1 img/s), accuracy 0.458: 0.91x
    channels-last          (an earlier run: 1,349 vs 1,470 ms, 1.09x: within the noise)
  forced bf16              20,854 to 21,090 ms/step (0.8 img/s): 0.06x, timed for 1 step
The 2x target assumes AMX (bf16 tile matmuls); without it oneDNN has no fast bf16 kernels on
this CPU and bf16 autocast is emulated, which is why `choose_precision` picks fp32 here and
the benchmark, like the trainable, picks the path by capability. On the CPU the default fp32
path is channels-last (`use_channels_last`), which gains 1.2x to 1.8x on the small and medium
AlexNet variants a search mostly trains, and about nothing on this full-size one. The 2x
figure on a CPU with AMX is not measured: no such machine was available.

What is compared: `search.trial.trainable.Trainer` (the trainer every trial runs) on the same
in-memory folder of learnable 227 px images (a class colour and a class-specific bar, plus
noise), the same initial weights, the same batches:
- fp32 eager: `precision: fp32` in contiguous (NCHW) memory, what a user would write;
- hpsearch's default: `precision: auto`, which `choose_precision` resolves by capability (bf16
  autocast + channels_last on a CPU with AMX tiles or a CUDA device with bf16; fp32 elsewhere,
  channels-last on the CPU);
- forced bf16 autocast + channels_last (`precision: bf16`), where the default is not bf16
  already: timed for one step after one warm-up step (without fast kernels a step takes tens
  of seconds), to show why `auto` does not pick it; no accuracy.
The first two paths train the same number of steps (the first epoch is warm-up: allocator, oneDNN
primitive caches); the time per step comes from the second epoch; the accuracy is measured on
held-out images after all the steps. Target: default >= 2x fp32 on a CPU with AMX, accuracy
within noise (two binomial standard errors of the held-out set) of fp32.

Run: `python -m benchmarks bench_step` (full size) or with `--smoke` (tiny, measures nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from benchmarks._common import header, load_average, trial_data, trial_settings, verdict
from hpsearch.data_pipeline.cache import default_workers

if TYPE_CHECKING:
    from hpsearch.search.trial.inputs import TrialData

TARGET = 2.0


def learnable_images(n: int, size: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, 3, size, size]: class colour plus a bar whose position names the class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    colours = rng.integers(40, 216, (classes, 3))
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    bar = max(2, size // classes)
    for i, c in enumerate(labels):
        img = colours[c][:, None, None] + rng.normal(0, 40, (3, size, size))
        img[:, c * size // classes : c * size // classes + bar, :] = 255 - colours[c][:, None, None]
        images[i] = np.clip(img, 0, 255)
    return images, labels.astype(np.int64)


def measure(
    precision: str,
    *,
    data: TrialData,
    size: int,
    batch: int,
    arch: str,
    width: float,
    plain: bool = False,
) -> dict[str, float]:
    """`plain`: contiguous (NCHW) memory whatever hpsearch would choose: the fp32 eager row."""
    from unittest import mock

    from hpsearch.search.experiment.space import model_config
    from hpsearch.search.trial import trainable

    n_train = len(data.train_idx)
    config = {
        "arch": arch,
        "width": width,
        "optimizer": "sgd",
        "lr": 0.01,
        "momentum": 0.9,
        "batch_size": batch,
    }
    cfg = model_config(config, image_size=size, num_classes=data.num_classes)
    settings = trial_settings(
        precision=precision, cpus=default_workers(), gpus=0, batch_size=batch, eval_batch_size=64
    )
    layout = (
        mock.patch.object(trainable, "use_channels_last", lambda *a: False)
        if plain
        else contextlib.nullcontext()
    )
    with layout:
        trainer = trainable.Trainer(
            cfg, config, data, settings, train_idx=data.train_idx, val_idx=data.val_idx
        )
    trainer.train_epoch(0)  # warm-up
    timed = trainer.train_epoch(1)
    steps = math.ceil(n_train / batch)
    val = trainer.evaluate(trainer.val_batches)
    return {
        "resolved": trainer.precision,
        "layout": "channels_last" if trainer.channels_last else "NCHW",
        "step_s": timed["seconds"] / steps,
        "images_per_s": timed["images_per_s"],
        "accuracy": val["accuracy"],
        "steps": 2 * steps,
    }


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(
        prog="bench_step", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs")
    p.add_argument("--size", type=int, default=None, help="image size (default 227; smoke 32)")
    p.add_argument("--batch-size", type=int, default=None, help="batch (default 16; smoke 8)")
    p.add_argument("--steps", type=int, default=None, help="steps per epoch (default 4; smoke 1)")
    p.add_argument("--val", type=int, default=None, help="held-out images (default 96; smoke 8)")
    args = p.parse_args(argv)
    size = args.size or (32 if args.smoke else 227)
    batch = args.batch_size or (8 if args.smoke else 16)
    steps = args.steps or (1 if args.smoke else 4)
    n_val = args.val or (8 if args.smoke else 96)
    arch, width = ("FlatAlexNet", 0.125) if args.smoke else ("AlexNet", 1.0)
    classes = 4
    header(
        f"{arch} (width {width:g}) at {size} px, {classes} classes, batch {batch}, 2 epochs of {steps} steps "
        f"(the first is warm-up), {n_val} held-out images, {torch.get_num_threads()} threads",
        smoke=args.smoke,
    )
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    print(f"cpu      AMX tiles: {'yes' if amx else 'no'}")
    images, labels = learnable_images(steps * batch + n_val, size, classes, seed=0)
    idx = np.arange(len(labels))
    data = trial_data(images, labels, idx[: steps * batch], idx[steps * batch :], classes)
    rows = {}
    for label, precision in [("fp32 eager", "fp32"), ("default", "auto")]:
        r = measure(
            precision,
            data=data,
            size=size,
            batch=batch,
            arch=arch,
            width=width,
            plain=label == "fp32 eager",
        )
        rows[label] = r
        print(
            f"{label:<12} {r['resolved']:<4} {r['layout']:<13}: {r['step_s'] * 1000:8.1f} ms/step "
            f"({r['images_per_s']:.1f} img/s); held-out accuracy after {r['steps']} steps "
            f"{r['accuracy']:.3f}",
            flush=True,
        )
    if rows["default"]["resolved"] == "bf16":
        print("forced bf16  the same code as the default here: not run again")
    else:
        # Without fast bf16 kernels each step takes tens of seconds: time one step after one
        # warm-up step, enough to show why `auto` does not pick it; no accuracy.
        one = dataclasses.replace(data, train_idx=data.train_idx[:batch])
        r = measure("bf16", data=one, size=size, batch=batch, arch=arch, width=width)
        rows["forced bf16"] = {**r, "accuracy": None}
        print(
            f"{'forced bf16':<12} bf16 {r['layout']:<13}: {r['step_s'] * 1000:8.1f} ms/step "
            f"({r['images_per_s']:.1f} img/s); timing only (1 step after 1 warm-up step)",
            flush=True,
        )
    base = rows["fp32 eager"]
    se = math.sqrt(max(base["accuracy"] * (1 - base["accuracy"]), 0.25 / n_val) / n_val)
    for label in [k for k in rows if k != "fp32 eager"]:
        r = rows[label]
        ratio = base["step_s"] / r["step_s"]
        note = verdict(ratio, TARGET)
        if label == "default" and r["resolved"] == "fp32":
            note = "the 2x target needs bf16: no AMX here, so auto = fp32 (channels-last)"
        if r["accuracy"] is None:
            accuracy = "accuracy not measured"
        else:
            gap = r["accuracy"] - base["accuracy"]
            within = "within" if abs(gap) <= 2 * se else "NOT within"
            accuracy = f"accuracy {gap:+.3f} vs fp32, {within} noise (2 SE = {2 * se:.3f})"
        print(f"ratio    {label}: {ratio:.2f}x fp32 ({note}); {accuracy}")
    print(f"         {load_average()} at the end")
