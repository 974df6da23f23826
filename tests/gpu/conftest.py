"""Helpers for the CUDA tests (each module is marked `cuda` and skips without a CUDA device, so
a CPU machine only collects them), as fixtures: `cuda_kit` (learnable image arrays, trial
settings, a sleep kernel that makes a copy or a step slow on purpose, the memory a process holds,
a check that a trainer's steps make no host-device sync) and `trial_run` (a trial outside Ray
that keeps its checkpoints as Tune would)."""

from __future__ import annotations

import dataclasses
import gc
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import ray
import torch
from ray import tune

from benchmarks._gpu_trials import SyncWatched
from hpsearch.search.trial.images import ImageSource
from hpsearch.search.trial.inputs import TrialData, TrialSettings


def sleep_ms(ms: float) -> None:
    """Queue a kernel that spins `ms` milliseconds (or longer) on the current CUDA stream."""
    if ms > 0:
        torch.cuda._sleep(int(ms * 2_000_000))  # clock cycles; SM clocks are at most ~2 GHz


def learnable_data(n: int = 768, size: int = 64, classes: int = 4, seed: int = 0) -> TrialData:
    """Each class a colour plus noise: a small model learns it within an epoch or two, so a
    trial's loss falls visibly from epoch to epoch. Three quarters train, a quarter validates."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    colours = rng.integers(40, 216, (classes, 3))
    noisy = colours[labels][:, :, None, None] + rng.normal(0, 40, (n, 3, size, size))
    images = np.clip(noisy, 0, 255).astype(np.uint8)
    cut = n * 3 // 4
    return TrialData(
        source=ImageSource(images),
        labels=labels.astype(np.int64),
        train_idx=np.arange(cut),
        val_idx=np.arange(cut, n),
        folds=np.full(n, -1),
        classes=tuple(f"c{c}" for c in range(classes)),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )


def gpu_settings(**changes: Any) -> TrialSettings:
    base = TrialSettings(
        epochs=3, batch_size=64, eval_batch_size=128, precision="auto", seed=0, augment=False,
        image_size=64, metric="val_accuracy", mode="max", cpus=2, gpus=0.5,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def allocated() -> int:
    """Bytes the caching allocator holds for live tensors, after a collection. cuBLAS keeps a
    workspace per stream that counts as allocated and outlives any trial: dropped first."""
    gc.collect()
    torch.cuda.synchronize()
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()
    return torch.cuda.memory_allocated()


class TrialRun:
    """`train_trial` outside Ray: `tune.report` records each report and keeps each checkpoint
    in `folder` (checkpoint_000000, ...), as Tune persists them; with `resume`, Tune's
    checkpoint is the newest one already there."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, folder: Path, *, resume: bool) -> None:
        self.folder, self.reports = folder, []
        folder.mkdir(parents=True, exist_ok=True)
        kept = sorted(folder.glob("checkpoint_*"))
        known = tune.Checkpoint(str(kept[-1])) if resume and kept else None
        node = SimpleNamespace(get_node_id=lambda: "node")
        monkeypatch.setattr(tune, "report", self.report)
        monkeypatch.setattr(tune, "get_checkpoint", lambda: known)
        monkeypatch.setattr(ray, "get_runtime_context", lambda: node)

    def report(self, result: dict[str, Any], checkpoint: Any = None) -> None:
        self.reports.append(result)
        if checkpoint is not None:  # its folder is temporary: Tune copies it during report()
            n = len(list(self.folder.glob("checkpoint_*")))
            shutil.copytree(checkpoint.path, self.folder / f"checkpoint_{n:06d}")


@pytest.fixture
def trial_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """trial_run(name, resume=False): a TrialRun whose checkpoints go to tmp_path/name."""
    return lambda name, resume=False: TrialRun(monkeypatch, tmp_path / name, resume=resume)


@pytest.fixture(autouse=True)
def _sync_debug_mode_put_back() -> Iterator[None]:
    """A step that raised inside SyncWatched leaves "error" mode on until its frame is freed:
    no other test inherits it."""
    if not torch.cuda.is_available():
        yield
        return
    before = torch.cuda.get_sync_debug_mode()
    yield
    torch.cuda.set_sync_debug_mode(before)


@pytest.fixture
def cuda_kit() -> SimpleNamespace:
    return SimpleNamespace(
        sleep_ms=sleep_ms,
        learnable_data=learnable_data,
        gpu_settings=gpu_settings,
        allocated=allocated,
        SyncChecked=SyncWatched,  # mode "error": a sync in a training step raises
    )
