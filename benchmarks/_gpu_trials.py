"""The trials bench_gpu times, outside Ray: each in its own spawned process (as Ray runs trials
in worker processes), its images memory-mapped from a .npy file (as trials map the cache), the
trial's own `Trainer`; and the host-device syncs of a trainer's steps. Not a benchmark itself."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import statistics
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmarks._common import trial_data, trial_settings
from hpsearch.models import count_macs
from hpsearch.search.experiment.space import model_config
from hpsearch.search.trial.device import release_device_memory
from hpsearch.search.trial.trainable import Trainer


@dataclass(frozen=True)
class TrialJob:
    images: str  # .npy of uint8 [N, 3, S, S], memory-mapped read-only
    labels: str  # .npy of int64 [N]
    config: dict[str, Any]
    size: int
    batch: int
    gpus: float  # resources.gpus: the trial's share, as Ray packs it
    data_on_device: str  # train.data_on_device: always / never
    epochs: int = 0  # timed epochs after the warm-up; 0: until min_seconds
    min_seconds: float = 0.0
    multiple: int = 1  # with min_seconds: stop after a multiple of this many epochs
    max_seconds: float = 60.0  # with min_seconds: stop (at a multiple) after this long


@dataclass(frozen=True)
class TrialTiming:
    placement: str
    precision: str
    macs: int  # per image, forward
    epochs: int  # timed
    images: int  # trained in the timed epochs
    seconds: float  # the timed epochs, each between two device syncs
    start: float  # time.monotonic() (system-wide) when the timed epochs began
    end: float
    trainer_ips: float  # the epochs' own images_per_s, mean

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def _trainer(job: TrialJob) -> tuple[Trainer, Any]:
    images = np.load(job.images, mmap_mode="r")
    labels = np.load(job.labels)
    n = len(labels)
    data = trial_data(images, labels, np.arange(n), np.arange(min(n, job.batch)), 10)
    cfg = model_config(job.config, image_size=job.size, num_classes=data.num_classes)
    settings = trial_settings(
        precision="auto", cpus=2, gpus=job.gpus, batch_size=job.batch, eval_batch_size=job.batch,
        image_size=job.size, data_on_device=job.data_on_device,
    )  # fmt: skip
    trainer = Trainer(
        cfg, job.config, data, settings, train_idx=data.train_idx, val_idx=data.val_idx
    )
    return trainer, cfg


def time_trial(job: TrialJob, barrier: Any = None) -> TrialTiming:
    """One trial: build, one warm-up epoch, wait for the others (`barrier`), timed epochs."""
    trainer, cfg = _trainer(job)
    sync = torch.cuda.synchronize if trainer.device.startswith("cuda") else lambda: None
    trainer.train_epoch(0)
    sync()
    if barrier is not None:
        barrier.wait(timeout=300)
    start = time.monotonic()
    seconds, own = 0.0, []
    while True:
        t0 = time.perf_counter()
        own.append(trainer.train_epoch(len(own) + 1)["images_per_s"])
        sync()
        seconds += time.perf_counter() - t0
        if job.epochs and len(own) >= job.epochs:
            break
        enough = seconds >= job.min_seconds or time.monotonic() - start >= job.max_seconds
        if not job.epochs and enough and len(own) % job.multiple == 0:
            break
    timing = TrialTiming(
        placement=trainer.data_placement,
        precision=trainer.precision,
        macs=count_macs(cfg),
        epochs=len(own),
        images=len(own) * trainer.train_batches.num_images,
        seconds=seconds,
        start=start,
        end=time.monotonic(),
        trainer_ips=statistics.mean(own),
    )
    trainer.close()
    return timing


def _trial_process(job: TrialJob, barrier: Any, results: Any, slot: int) -> None:
    try:
        results.put((slot, time_trial(job, barrier), None))
    except BaseException:  # noqa: BLE001 (reported to the parent, which raises)
        results.put((slot, None, traceback.format_exc()))
        with contextlib.suppress(Exception):
            barrier.abort()  # the others stop waiting


def run_trials(jobs: Sequence[TrialJob], *, timeout_s: float) -> list[TrialTiming]:
    """The jobs at once, one spawned process each (packed on the one GPU)."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(len(jobs)), ctx.Queue()
    procs = [
        ctx.Process(target=_trial_process, args=(job, barrier, results, i), daemon=True)
        for i, job in enumerate(jobs)
    ]
    for p in procs:
        p.start()
    got: dict[int, TrialTiming] = {}
    errors: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) + len(errors) < len(jobs):
            try:
                slot, timing, error = results.get(timeout=1.0)
            except queue.Empty:
                dead = [i for i, p in enumerate(procs) if p.exitcode not in (None, 0)]
                dead = [i for i in dead if i not in got]
                if dead:
                    codes = [procs[i].exitcode for i in dead]
                    errors.append(f"trial process(es) {dead} died, exit codes {codes}")
                    break
                if time.monotonic() > deadline:
                    errors.append(f"{len(jobs) - len(got)} trial(s) not done in {timeout_s:.0f} s")
                    break
                continue
            if error:
                errors.append(f"trial {slot}:\n{error}")
            else:
                got[slot] = timing
    finally:
        for p in procs:
            p.join(timeout=15)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise RuntimeError("\n".join(errors))
    return [got[i] for i in range(len(jobs))]


# --- syncs per training step, in this process ---------------------------------------------------


class SyncWatched:
    """A trainer's training batches with torch's sync debug mode set to `mode` ("warn" counts,
    "error" raises RuntimeError) from the epoch's first batch until its loop asks for one past
    the last: the steps, not the epoch's end (which reads the losses back once, by design).
    `extra(x, y)` runs inside each step's window (the CUDA tests plant a sync with it)."""

    def __init__(self, batches: Any, mode: str = "error", extra: Any = None) -> None:
        self._batches, self.mode, self.extra, self.steps = batches, mode, extra, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batches, name)

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[Any]:
        it = iter(self._batches)
        before = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(self.mode)
        try:
            for batch in it:
                self.steps += 1
                if self.extra is not None:
                    self.extra(*batch)
                yield batch
        finally:
            torch.cuda.set_sync_debug_mode(before)


def count_syncs(job: TrialJob) -> dict[str, Any]:
    """Syncs in one epoch's steps ("warn": counted), and whether "error" mode raises in the next
    epoch's steps (at which step, with what message)."""
    trainer, _cfg = _trainer(job)
    try:
        trainer.train_epoch(0)  # warm-up: first-use syncs (cuDNN autotuning, lazy init)
        batches = trainer.train_batches
        trainer.train_batches = warned = SyncWatched(batches, "warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.train_epoch(1)
        syncs = sum("synchroniz" in str(w.message) for w in caught)
        trainer.train_batches = checked = SyncWatched(batches, "error")
        raised = None
        try:
            trainer.train_epoch(2)
        except RuntimeError as e:
            if "synchroniz" not in str(e):
                raise
            raised = f"step {checked.steps}: {str(e).splitlines()[0]}"
        return {
            "placement": trainer.data_placement,
            "steps": warned.steps,
            "syncs": syncs,
            "error_mode": raised or "raised nothing",
        }
    finally:
        torch.cuda.set_sync_debug_mode(0)  # (a raise leaves the watched generator suspended)
        trainer.close()
        release_device_memory()
