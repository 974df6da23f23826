"""GPU path (issue #23): what one CUDA device gives hpsearch's trials, as four rows.

NOT MEASURED YET: no machine with a CUDA device has run this file, so no GPU figure exists and
none is estimated. Without a CUDA device it says so and exits cleanly (status 0).
`make gpu-check` runs it, with the CUDA tests, on a lent GPU machine.

Every figure is training throughput: `search.trial.trainable.Trainer.train_epoch` (the trial's
own training loop; `precision: auto`, so bf16 autocast + channels-last on a bf16 GPU) timed
between two device syncs, after one warm-up epoch (cuDNN's autotuning, the allocator). Model
builds, checkpoints, validation and Ray's scheduling are outside the clock. Each trial runs in
its own spawned process, as Ray runs trials in worker processes, and memory-maps its images from
a .npy file, as trials map the cache; packed trials start their timed epochs together (a barrier
after the warm-up). A side that timed under MIN_TIMED_S of training steps is "inconclusive".
1. throughput: AlexNet at 227 px, batch 256, images resident on the device: training images/s
   and their share of the device's dense bf16 peak, 3 x 2 x MACs per image (forward + backward,
   `models.count_macs`) x images/s over BF16_PEAKS (each figure cites its datasheet; or
   `--peak-tflops`). Target >= 30 %.
2. packing: the same images trained by 1 trial alone (`resources.gpus: 1`) and by 4 packed
   trials (`gpus: 0.25`, each a quarter of them): FlatAlexNet width 0.25, MLP [64] (bench_search's
   model) at 64 px, batch 64; images/s of all trials together. Target >= 2x.
3. streaming: 4 packed AlexNet trials at 227 px, batch 256, `train.data_on_device: never` (each
   batch gathered into pinned memory and copied one batch ahead on a side stream) vs `always`
   (resident), the same epochs; each trial's training images/s. Target: streamed >= 0.9x.
4. syncs: host-device syncs per training step (`torch.cuda.set_sync_debug_mode`: "warn" counts
   them, "error" must raise nothing), resident and streamed, AlexNet at 227 px. Target: 0.

Writes bench_gpu.json and bench_gpu.md into `--out` (default: $OUT, else benchmarks/results).
Run: `python -m benchmarks bench_gpu` (full size) or with `--smoke` (tiny, measures nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import re
import statistics
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import SMALL_SPACE, header, verdict
from benchmarks._gpu_trials import TrialJob, count_syncs, run_trials
from hpsearch.search.trial.device import ALLOC_CONF

MFU_TARGET = 0.30
PACKING_TARGET = 2.0
STREAMING_TARGET = 0.9  # streamed / resident training images/s per trial, 4 packed at 227 px
MIN_TIMED_S = 2.0  # timed training steps a side needs for a verdict
PACKED = 4

ALEXNET = {"arch": "AlexNet", "optimizer": "sgd", "lr": 0.01, "momentum": 0.9}
SMALL = {
    "arch": SMALL_SPACE["arch"],
    "width": SMALL_SPACE["width"],
    "mlp": str(SMALL_SPACE["mlp_width"]),
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
}

# Dense bf16 tensor-core peaks (without 2:4 sparsity), TFLOP/s, keyed by the tokens of the name
# torch.cuda.get_device_name gives, split at spaces and hyphens. A key matches when all its tokens
# are among the name's, as whole tokens ("L4" matches neither "L40" nor "L40S"); the most specific
# match wins, and a None figure marks a variant left unknown rather than given its sibling's.
# The Hopper and L4 datasheets give bf16 "with sparsity" only: dense is half of that.
BF16_PEAKS: dict[str, tuple[float | None, str]] = {
    "H200": (989.5, "NVIDIA H200 datasheet, H200 SXM: BFLOAT16 Tensor Core 1,979 TFLOPS sparse"),
    "H200 NVL": (None, "H200 NVL: no datasheet figure checked here"),
    "H100 HBM3": (
        989.5,
        "NVIDIA H100 datasheet, H100 SXM ('NVIDIA H100 80GB HBM3'): 1,979 TFLOPS sparse; "
        "the Hopper whitepaper's dense figure is 989.4",
    ),
    "H100 SXM5": (989.5, "NVIDIA H100 datasheet, H100 SXM: BFLOAT16 1,979 TFLOPS sparse"),
    "H100 PCIE": (756.5, "NVIDIA H100 datasheet, H100 PCIe: BFLOAT16 1,513 TFLOPS sparse"),
    "H100 NVL": (835.5, "NVIDIA H100 datasheet, H100 NVL: BFLOAT16 1,671 TFLOPS sparse"),
    "A100": (312.0, "NVIDIA A100 datasheet: BFLOAT16 Tensor Core 312 TFLOPS (624 sparse)"),
    "L40S": (362.05, "NVIDIA L40S datasheet: BFLOAT16 Tensor Core 362.05 TFLOPS (733 sparse)"),
    "L40": (181.05, "NVIDIA L40 datasheet: BFLOAT16 Tensor Core 181.05 TFLOPS (362.1 sparse)"),
    "L4": (121.0, "NVIDIA L4 datasheet: FP16 / BF16 Tensor Core 242 TFLOPS sparse"),
}

# What each row measures and its target: the summary's and the README's rows.
ROWS: dict[str, tuple[str, str]] = {
    "throughput": ("AlexNet 227 px, batch 256: training images/s, share of dense bf16 peak", ">= 30 %"),
    "packing": ("4 packed trials vs 1, the same images (FlatAlexNet x0.25, 64 px): images/s", ">= 2x"),
    "streaming": ("4 packed AlexNet 227 px trials, streamed vs resident: images/s per trial", ">= 0.9x"),
    "syncs": ("host-device syncs per training step, resident and streamed", "0"),
}  # fmt: skip


# --- the verdicts: pure arithmetic, tested on made-up timings -----------------------------------


def _tokens(name: str) -> set[str]:
    return {t for t in re.split(r"[\s\-_/()]+", name.upper()) if t}


def peak_entry(name: str) -> tuple[str, float | None, str] | None:
    """(key, dense bf16 TFLOP/s or None, source) of the device `name`, or None when unknown."""
    tokens = _tokens(name)
    found = [key for key in BF16_PEAKS if set(key.split()) <= tokens]
    if not found:
        return None
    most = max(len(key.split()) for key in found)
    best = [key for key in found if len(key.split()) == most]
    if len({BF16_PEAKS[key][0] for key in best}) > 1:
        return None  # two equally specific figures disagree: no guess
    return best[0], *BF16_PEAKS[best[0]]


def peak_tflops(name: str) -> float | None:
    """The dense bf16 peak of the device `name` (TFLOP/s), or None when not known here."""
    entry = peak_entry(name)
    return entry[1] if entry else None


@dataclass(frozen=True)
class Verdict:
    value: float | None
    target: float
    status: str  # "met", "NOT met" or "inconclusive"
    at_most: bool = False
    reason: str = ""

    def text(self) -> str:
        if self.status == "inconclusive":
            sign = "<=" if self.at_most else ">="
            return f"target {sign} {self.target:.3g}: inconclusive ({self.reason})"
        return verdict(self.value, self.target, at_most=self.at_most)


def judge(value: float | None, target: float, *, timed_s: float, at_most: bool = False) -> Verdict:
    """met / NOT met, or inconclusive without a figure or with under MIN_TIMED_S of steps."""
    if value is None or not math.isfinite(value):
        return Verdict(None, target, "inconclusive", at_most, "no figure")
    if not timed_s >= MIN_TIMED_S:
        reason = f"{timed_s:.2f} s of timed training steps, under {MIN_TIMED_S:g} s"
        return Verdict(value, target, "inconclusive", at_most, reason)
    met = value <= target if at_most else value >= target
    return Verdict(value, target, "met" if met else "NOT met", at_most)


def mfu(images_per_s: float, macs_per_image: int, peak: float) -> float:
    """Share of a `peak` TFLOP/s device: 3 x 2 x MACs per image (forward + backward)."""
    return 6 * macs_per_image * images_per_s / (peak * 1e12)


def throughput_verdict(
    images_per_s: float, macs_per_image: int, peak: float | None, timed_s: float
) -> Verdict:
    value = mfu(images_per_s, macs_per_image, peak) if peak else None
    v = judge(value, MFU_TARGET, timed_s=timed_s)
    return v if peak else dataclasses.replace(v, reason="peak unknown for this device")


def packing_ratio(
    one_images: int, one_seconds: float, packed_images: int, packed_seconds: float
) -> float:
    """Images/s of the packed trials together over images/s of one trial alone."""
    return (packed_images / packed_seconds) / (one_images / one_seconds)


def packing_verdict(
    one_images: int, one_seconds: float, packed_images: int, packed_seconds: float
) -> Verdict:
    ratio = packing_ratio(one_images, one_seconds, packed_images, packed_seconds)
    return judge(ratio, PACKING_TARGET, timed_s=min(one_seconds, packed_seconds))


def streaming_verdict(
    stream_ips: Sequence[float], resident_ips: Sequence[float], timed_s: Sequence[float] | float
) -> Verdict:
    """Mean training images/s per streamed trial over per resident trial; `timed_s`: each
    trial's timed seconds (both sides), the shortest of which decides a verdict is possible."""
    if not stream_ips or not resident_ips:
        return Verdict(None, STREAMING_TARGET, "inconclusive", reason="a side has no trial")
    shortest = min(timed_s) if isinstance(timed_s, Sequence) else float(timed_s)
    ratio = statistics.mean(stream_ips) / statistics.mean(resident_ips)
    return judge(ratio, STREAMING_TARGET, timed_s=shortest)


def sync_verdict(syncs: int, steps: int) -> Verdict:
    """Host-device syncs per training step: 0 or NOT met (no timing involved)."""
    if steps <= 0:
        return Verdict(None, 0.0, "inconclusive", True, "no training step ran")
    return judge(syncs / steps, 0.0, timed_s=math.inf, at_most=True)


# --- the rows -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    images_227: int  # AlexNet rows: 227 px images
    images_64: int  # packing row: 64 px images
    min_seconds: float  # throughput row: timed steps at least
    packing_seconds: float  # packing, 1 trial: timed steps at least (4 packed: that / ratio)
    stream_seconds: float  # streaming: each packed trial's expected timed steps
    batch_227: int
    packed: int
    timeout_s: float  # one group of trial processes


FULL = Sizes(4096, 8192, 3.0, 8.0, 4.0, 256, PACKED, 150.0)
SMOKE = Sizes(96, 256, 0.0, 0.0, 0.0, 32, 2, 120.0)


def _write_arrays(folder: Path, name: str, n: int, size: int) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    images, labels = folder / f"{name}-images.npy", folder / f"{name}-labels.npy"
    np.save(images, rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8))
    np.save(labels, rng.integers(0, 10, n).astype(np.int64))
    return str(images), str(labels)


def _row(name: str, v: Verdict | None, measured: str, **figures: Any) -> dict[str, Any]:
    what, target = ROWS[name]
    return {
        "row": name, "what": what, "target": target, "measured": measured,
        "verdict": v.status if v else "not measured", "verdict_text": v.text() if v else "",
        "figures": figures,
    }  # fmt: skip


def not_measured(name: str, why: str) -> dict[str, Any]:
    return {**_row(name, None, "not measured"), "error": why}


def measure_throughput(big: tuple[str, str], sizes: Sizes, peak: float | None) -> dict[str, Any]:
    job = TrialJob(
        *big, ALEXNET, 227, sizes.batch_227, 1.0, "always", min_seconds=sizes.min_seconds,
        max_seconds=30.0,
    )  # fmt: skip
    (t,) = run_trials([job], timeout_s=sizes.timeout_s)
    ips = t.images_per_s
    v = throughput_verdict(ips, t.macs, peak, t.seconds)
    share = (
        f", {v.value * 100:.1f} % of the {peak:g} TFLOP/s bf16 peak"
        if v.value is not None
        else ", peak unknown for this device (pass --peak-tflops)"
    )
    measured = (
        f"{ips:,.0f} images/s over {t.seconds:.1f} s of steps, "
        f"{6 * t.macs * ips / 1e12:.1f} TFLOP/s{share}"
    )
    return _row(
        "throughput", v, measured, images_per_s=ips, timed_s=t.seconds, epochs=t.epochs,
        precision=t.precision, placement=t.placement, macs=t.macs, peak_tflops=peak,
        trainer_images_per_s=t.trainer_ips,
    )  # fmt: skip


def measure_packing(small: tuple[str, str], sizes: Sizes) -> dict[str, Any]:
    k = sizes.packed
    alone = TrialJob(
        *small, SMALL, 64, 64, 1.0, "always", min_seconds=sizes.packing_seconds, multiple=k,
    )  # fmt: skip
    (one,) = run_trials([alone], timeout_s=sizes.timeout_s)
    each = dataclasses.replace(alone, gpus=1 / k, epochs=one.epochs // k, min_seconds=0.0)
    packed = run_trials([each] * k, timeout_s=sizes.timeout_s)
    window = max(t.end for t in packed) - min(t.start for t in packed)
    images = sum(t.images for t in packed)
    v = packing_verdict(one.images, one.seconds, images, window)
    measured = (
        f"1 trial {one.images / one.seconds:,.0f} images/s ({one.seconds:.1f} s of steps); "
        f"{k} packed {images / window:,.0f} images/s together ({window:.1f} s); {v.value:.2f}x"
    )
    return _row(
        "packing", v, measured, one_images=one.images, one_seconds=one.seconds,
        packed_images=images, packed_seconds=window, trials=k, epochs_alone=one.epochs,
    )  # fmt: skip


def measure_streaming(big: tuple[str, str], sizes: Sizes, solo_ips: float | None) -> dict:
    k, n = sizes.packed, len(np.load(big[1]))
    # Epochs for `stream_seconds` per trial if k packed trials share what one alone reached.
    epochs = max(1, math.ceil(sizes.stream_seconds * (solo_ips or 8 * n) / (k * n)))
    job = TrialJob(*big, ALEXNET, 227, sizes.batch_227, 1 / k, "always", epochs=epochs)
    resident = run_trials([job] * k, timeout_s=sizes.timeout_s)
    streaming = dataclasses.replace(job, data_on_device="never")
    streamed = run_trials([streaming] * k, timeout_s=sizes.timeout_s)
    v = streaming_verdict(
        [t.images_per_s for t in streamed],
        [t.images_per_s for t in resident],
        [t.seconds for t in (*streamed, *resident)],
    )
    placed = {t.placement for t in streamed}, {t.placement for t in resident}
    if placed != ({"stream"}, {"device"}):
        v = dataclasses.replace(v, status="inconclusive", reason=f"placements {placed}")
    stream_ips = statistics.mean(t.images_per_s for t in streamed)
    resident_ips = statistics.mean(t.images_per_s for t in resident)
    ratio = f"; {v.value:.2f}x" if v.value is not None else ""
    timed = [t.seconds for t in (*streamed, *resident)]
    measured = (
        f"per trial: streamed {stream_ips:,.0f}, resident {resident_ips:,.0f} images/s{ratio} "
        f"({min(timed):.1f}-{max(timed):.1f} s of steps per trial)"
    )
    return _row(
        "streaming", v, measured, epochs=epochs, trials=k,
        stream_images_per_s=[t.images_per_s for t in streamed],
        resident_images_per_s=[t.images_per_s for t in resident],
        stream_seconds=[t.seconds for t in streamed],
        resident_seconds=[t.seconds for t in resident],
    )  # fmt: skip


def measure_syncs(big: tuple[str, str], sizes: Sizes) -> dict[str, Any]:
    job = TrialJob(*big, ALEXNET, 227, sizes.batch_227, 1.0, "always")
    counted = [count_syncs(job), count_syncs(dataclasses.replace(job, data_on_device="never"))]
    syncs, steps = sum(c["syncs"] for c in counted), sum(c["steps"] for c in counted)
    v = sync_verdict(syncs, steps)
    if v.status == "met" and any(c["error_mode"] != "raised nothing" for c in counted):
        v = dataclasses.replace(v, status="NOT met", reason="error mode raised")
    measured = "; ".join(
        f"{c['placement']}: {c['syncs']} in {c['steps']} steps, error mode {c['error_mode']}"
        for c in counted
    )
    return _row("syncs", v, measured, counted=counted)


# --- the summary --------------------------------------------------------------------------------


def default_out() -> Path:
    return Path(os.environ.get("OUT") or "benchmarks/results")


def rows_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table (every row of ROWS; a missing one is "not measured")."""
    by_name = {r["row"]: r for r in rows}
    lines = ["| row | what | measured | target | verdict |", "|---|---|---|---|---|"]
    for name, (what, target) in ROWS.items():
        r = by_name.get(name) or not_measured(name, "not run")
        shown = r["verdict_text"] or r["verdict"]
        if r.get("error"):
            shown += f" ({r['error'].strip().splitlines()[-1][:160]})"
        lines.append(f"| {name} | {what} | {r['measured']} | {target} | {shown} |")
    return "\n".join(lines)


def render_markdown(summary: dict[str, Any]) -> str:
    return (
        f"# bench_gpu, {summary['date']}\n\n"
        f"device {summary['device']}; torch {summary['torch']}, CUDA {summary['cuda']}"
        + ("; smoke sizes: the figures mean nothing" if summary.get("smoke") else "")
        + f"\n\n{rows_table(summary['rows'])}\n"
    )


def write_summary(out: Path, summary: dict[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench_gpu.json", out / "bench_gpu.md"]
    paths[0].write_text(json.dumps(summary, indent=2) + "\n")
    paths[1].write_text(render_markdown(summary))
    return paths


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(
        prog="bench_gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    p.add_argument("--out", type=Path, default=None, help="folder for bench_gpu.json and .md")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "no CUDA device: bench_gpu measures nothing on this machine (GPU figures not "
            "measured: throughput and share of bf16 peak, packing, 227 px streaming, syncs "
            "per step); run it on a machine with an NVIDIA GPU (`make gpu-check`)"
        )
        return
    for key, value in ALLOC_CONF.items():  # as trials' processes have it (Ray sets it there)
        os.environ.setdefault(key, value)
    sizes = SMOKE if args.smoke else FULL
    name = torch.cuda.get_device_name(0)
    entry = peak_entry(name)
    peak = args.peak_tflops or (entry[1] if entry else None)
    header(
        f"AlexNet 227 px batch {sizes.batch_227}, {sizes.images_227} images; packing 1 vs "
        f"{sizes.packed} trials, {sizes.images_64} images at 64 px; streaming {sizes.packed} "
        "packed AlexNet trials; >= 2 s of timed steps a side",
        smoke=args.smoke,
    )
    source = "--peak-tflops" if args.peak_tflops else (entry[2] if entry else "unknown")
    print(f"device   {name}, torch.version.cuda {torch.version.cuda}; bf16 peak {peak} ({source})")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_gpu-") as tmp:
        big = _write_arrays(Path(tmp), "227", sizes.images_227, 227)
        small = _write_arrays(Path(tmp), "64", sizes.images_64, 64)
        steps = (
            ("throughput", lambda: measure_throughput(big, sizes, peak)),
            ("packing", lambda: measure_packing(small, sizes)),
            ("streaming", lambda: measure_streaming(big, sizes, _solo(rows))),
            ("syncs", lambda: measure_syncs(big, sizes)),
        )
        for row, measure in steps:
            t0 = time.perf_counter()
            try:
                rows.append(measure())
            except Exception:  # noqa: BLE001 (the other rows still run; exit status 1 below)
                traceback.print_exc()
                rows.append(not_measured(row, traceback.format_exc()))
            r, took = rows[-1], time.perf_counter() - t0
            print(f"{row:<9}{r['measured']}", flush=True)
            print(f"         {r['verdict_text'] or r['verdict']} ({took:.0f} s)", flush=True)
    summary = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
        "peak_tflops": peak, "peak_source": source, "smoke": args.smoke, "rows": rows,
    }  # fmt: skip
    out = args.out or (None if args.smoke else default_out())
    if out is not None:
        print("wrote " + ", ".join(str(p) for p in write_summary(out, summary)))
    if any(r.get("error") for r in rows):
        raise SystemExit(1)


def _solo(rows: Sequence[dict[str, Any]]) -> float | None:
    """The throughput row's images/s, to size the streaming row's epochs."""
    found = [r for r in rows if r["row"] == "throughput" and "images_per_s" in r["figures"]]
    return found[0]["figures"]["images_per_s"] if found else None
