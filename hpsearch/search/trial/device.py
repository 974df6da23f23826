"""The GPU a trial trains on: whether CUDA can be used here (and, when not, why, in words a user
can act on), the trial's share of the device's memory, native bf16, and handing memory back.

A trial given a GPU (`resources.gpus > 0`) trains on CUDA or fails with `GPUUnavailable`: it
never falls back to the CPU, where it would run 10-100x slower with nothing but trials.parquet's
`device` column to show it.
"""

from __future__ import annotations

import gc
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

# The oldest Linux driver branch each CUDA major version runs on (minor version compatibility):
# NVIDIA, "CUDA Compatibility", Minor Version Compatibility, Table 1
# (docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html).
MIN_DRIVER = {11: 450, 12: 525, 13: 580}

# What trials' processes set before CUDA starts (Ray passes it to every worker): the caching
# allocator grows segments instead of fragmenting fixed ones, which packed trials of different
# models would otherwise do until one of them runs out.
ALLOC_CONF = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}


class GPUUnavailable(RuntimeError):
    """A trial (or a run) asked for a GPU that CUDA cannot use here."""


def driver_version() -> str | None:
    """The NVIDIA kernel driver's version on this machine, e.g. '535.183.01'; None when no
    NVIDIA driver is loaded."""
    proc = Path("/proc/driver/nvidia/version")
    try:
        found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)", proc.read_text())
        if found:
            return found.group(1)
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out[0] if out else None


def cuda_problem() -> str | None:
    """None when this process can train on CUDA; else why not, naming torch's CUDA version, the
    driver found and what to install."""
    # lazy: torch takes ~2.5 s to import; `validate` runs this only for experiments with GPUs
    import torch

    built = torch.version.cuda
    if torch.cuda.is_available():
        return None
    if built is None:
        return (
            f"this torch ({torch.__version__}) is a CPU-only build: install a CUDA build "
            "(constraints.txt pins the tested one) or set resources.gpus: 0"
        )
    major = int(built.split(".")[0])
    need = MIN_DRIVER.get(major)
    need_text = f"an NVIDIA driver >= {need}" if need else f"an NVIDIA driver for CUDA {built}"
    found = driver_version()
    fix = (
        f"Install {need_text} (or a torch wheel built for the CUDA version your driver "
        "supports: `nvidia-smi` shows it), or set resources.gpus: 0 to train on the CPU"
    )
    if found is None:
        seen = "no NVIDIA driver is loaded on this machine (no /proc/driver/nvidia, no nvidia-smi)"
    elif need and _major(found) is not None and _major(found) < need:
        seen = f"the NVIDIA driver here is {found}, older than the {need} that CUDA {major} needs"
    else:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        seen = f"the NVIDIA driver here is {found}, new enough, yet torch sees no usable GPU"
        fix = (
            "Check that `nvidia-smi` lists a GPU and that this process may use it "
            f"(CUDA_VISIBLE_DEVICES is {'unset' if visible is None else repr(visible)}), "
            "or set resources.gpus: 0 to train on the CPU"
        )
    return (
        f"CUDA cannot be used: torch {torch.__version__} is built for CUDA {built} and needs "
        f"{need_text}; {seen}. {fix}"
    )


def _major(version: str) -> int | None:
    head = version.split(".")[0]
    return int(head) if head.isdigit() else None


def require_cuda() -> None:
    """Raise GPUUnavailable with `cuda_problem`'s reason unless CUDA works in this process."""
    problem = cuda_problem()
    if problem is not None:
        raise GPUUnavailable(problem)


def native_bf16() -> bool:
    """bf16 runs natively on the current CUDA device (Ampere and later). Not counted: the
    emulation torch offers on older cards (a T4), which is slower than fp32."""
    # lazy: torch takes ~2.5 s to import; only a CUDA trial asks
    import torch

    return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def memory_share(gpus: float) -> float:
    """The share of its GPU's memory a trial with `resources.gpus: gpus` may use: its share of
    the device (a whole one at most)."""
    if not 0 < gpus:
        raise ValueError(f"gpus = {gpus}: a GPU trial has gpus > 0")
    return min(1.0, float(gpus))


def limit_memory(gpus: float, device: str = "cuda") -> float:
    """Cap this process's CUDA allocator at the trial's share of the device; returns the share.
    A trial over its cap gets torch.cuda.OutOfMemoryError instead of starving the trials
    packed next to it."""
    # lazy: torch takes ~2.5 s to import; only a CUDA trial asks
    import torch

    share = memory_share(gpus)
    torch.cuda.set_per_process_memory_fraction(share, torch.device(device))
    return share


def trials_per_device(gpus: float) -> int:
    """How many trials Ray packs on one GPU with `resources.gpus: gpus`: 1 / gpus rounded down
    (with Ray's tolerance for 0.2 + 0.2 + ... not summing to exactly 1), at least 1."""
    return max(1, math.floor(1 / gpus + 1e-6)) if gpus > 0 else 1


def release_device_memory() -> None:
    """Collect what a finished trial (or the driver's warm-up or final training) left
    unreachable and, on CUDA, hand the allocator's cached blocks back to the device, for the
    trials packed on it and for `auto` placement's view of free memory."""
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # (a no-op where this process never started CUDA)
