"""Faults a search survives: its driver SIGKILLed and the run resumed, and trial workers killed
while they train (a chaos drill, as in Ray's own release tests). Both check what a user relies
on: every trial goes on from its own newest checkpoint (not from epoch 1, not from an older
checkpoint), the whole budget completes, and nothing a trial had reported is lost or changed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

from hpsearch.rundir import TUNE_STATE_GLOB
from hpsearch.search.cli import main
from hpsearch.search.driver.export import collect, tune_statuses
from hpsearch.search.trial.checkpoints import REPORTS_FILE

pytestmark = pytest.mark.slow

CLASSES = ["class_0", "class_1", "class_2"]  # tests/conftest.py's small_folder
BASE = {
    "name": "faults",
    "search": {
        "algorithm": "random",
        "space": {
            "arch": "FlatAlexNet",
            "width": 0.25,
            "mlp_layers": 0,
            "optimizer": {"sgd": {"lr": {"low": 0.01, "high": 0.1, "log": True}}},
        },
    },
    "scheduler": {"type": "none"},
    "train": {"batch_size": 16},
    "resources": {"cpus": 1, "gpus": 0},
    "failure": {"max_retries": 3},
}


def _experiment(write_experiment, tmp_path, folder, cache, **changes) -> Path:
    return write_experiment(
        BASE,
        tmp_path,
        **{
            "data": {"folder": str(folder), "image_size": 16, "cache": str(cache)},
            "storage": str(tmp_path / "runs"),
            **changes,
        },
    )


def _persisted_epoch(trial_dir: Path) -> int:
    """The newest epoch whose checkpoint is complete on disk: its state loads and its reports
    are there (0: none)."""
    epochs = [0]
    for state in trial_dir.glob("checkpoint_*/state.pt"):
        try:
            epoch = torch.load(state, weights_only=True)["epoch"] + 1
            reports = json.loads((state.parent / REPORTS_FILE).read_text())
        except Exception:  # noqa: BLE001 (a checkpoint still being copied)
            continue
        if reports[-1]["epoch"] == epoch:
            epochs.append(epoch)
    return max(epochs)


def _trial_workers(root: int) -> list[psutil.Process]:
    """Ray's trial actor processes under `root` (Ray names them ray::ImplicitFunc...)."""
    found = []
    for p in psutil.Process(root).children(recursive=True):
        try:
            if "ImplicitFunc" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _last_epochs(run_dir: Path, reports) -> dict[str, int]:
    return {
        d.name: (rows[-1].get("epoch", 0) if (rows := reports(d / "result.json")) else 0)
        for d in run_dir.glob("trial_*")
    }


def _fresh_epochs(rows: list[dict]) -> list[int]:
    """The epochs a trial trained, leaving out the reports it replayed from a checkpoint."""
    return [r["epoch"] for r in rows if not r.get("replayed")]


def _snapshot_time(run_dir: Path) -> tuple[str, int]:
    """Which Tune experiment snapshot is the newest, and when it was written."""
    newest = max(run_dir.glob(TUNE_STATE_GLOB))
    return newest.name, newest.stat().st_mtime_ns


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _no_duplicate_steps(run_dir: Path) -> None:
    steps = pd.read_parquet(run_dir / "steps.parquet")
    assert not steps.duplicated(["trial_id", "step"]).any()


def test_a_killed_driver_resumes_each_trial_from_its_newest_checkpoint(
    ray_session, tmp_path, small_folder, cache_root, write_experiment, reports
):
    epochs = 4
    path = _experiment(
        write_experiment,
        tmp_path,
        small_folder,
        cache_root,
        **{"search.num_trials": 4, "search.max_concurrent": 1, "train.epochs": epochs},
    )
    run_dir = tmp_path / "runs" / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpsearch", "run", str(path), "--name", "killed"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # Freeze the trial workers once a trial has finished and another is part-way, then
        # wait for Tune's snapshot to list them: the state `resume` starts from.
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no trial got part-way in time"
            last = _last_epochs(run_dir, reports)
            if epochs in last.values() and any(0 < e < epochs for e in last.values()):
                workers = _trial_workers(proc.pid)
                for w in workers:
                    w.suspend()
                last = _last_epochs(run_dir, reports)
                midway = [t for t, e in last.items() if 0 < e < epochs]
                if midway and _persisted_epoch(run_dir / midway[0]) < epochs:
                    break
                for w in workers:  # it finished meanwhile: wait for the next one
                    w.resume()
            time.sleep(0.05)
        listed = set(last) - {t for t, e in last.items() if e == 0}
        while not {f"trial_{t}" for t in tune_statuses(run_dir)} >= listed:
            assert time.monotonic() < deadline, "Tune's snapshot never listed the trials"
            time.sleep(0.2)
        # Up to two more epochs, short of the last one (a finished trial makes Tune write a
        # snapshot), then freeze again: Tune's snapshot (every >= 10 s) and the result file
        # synced with it now lag the checkpoint on disk, and Tune may have deleted the
        # checkpoint its snapshot names (it keeps one).
        snapshot = _snapshot_time(run_dir)
        now = _persisted_epoch(run_dir / midway[0])
        target = min(now + 2, epochs - 1) if now + 1 < epochs else epochs
        for w in workers:
            w.resume()
        while _persisted_epoch(run_dir / midway[0]) < target:
            assert time.monotonic() < deadline, "the part-way trial made no progress"
            time.sleep(0.005)
        for w in _trial_workers(proc.pid):
            w.suspend()
        stale = _snapshot_time(run_dir) == snapshot
    finally:
        # The driver, its Ray instance and the frozen workers: Ray's processes are not all in
        # the driver's process group, and a stopped orphan would hold its memory for good.
        family = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
        for p in family:
            try:
                p.kill()  # SIGKILL ends a stopped process too
            except psutil.Error:
                pass
        proc.wait()
        psutil.wait_procs(family, timeout=30)
    # What the kill left: the result files Tune had synced, an export of them, the checkpoints.
    before = {d.name: (d / "result.json").read_text() for d in run_dir.glob("trial_*")}
    exported = collect(run_dir, epochs=epochs, classes=CLASSES)
    persisted = {d.name: _persisted_epoch(d) for d in run_dir.glob("trial_*")}
    assert not (run_dir / "trials.parquet").exists()
    assert persisted[midway[0]] == target, persisted
    if not stale:  # rare: the kill came right after a snapshot; what follows holds all the same
        print("Tune's snapshot was rewritten before the kill: not the stale case")

    assert main(["resume", str(run_dir)]) == 0
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 4 and set(trials["status"]) == {"completed"}, trials[
        ["trial_id", "status", "error"]
    ]
    table = pd.read_parquet(run_dir / "epochs.parquet")
    assert table.groupby("trial_id")["epoch"].apply(sorted).map(lambda e: e == [1, 2, 3, 4]).all()
    _no_duplicate_steps(run_dir)
    for name, k in persisted.items():
        text = (run_dir / name / "result.json").read_text()
        assert text.startswith(before[name]), name  # nothing reported before is rewritten
        rows = reports(run_dir / name / "result.json")
        new = rows[len(_lines(before[name])) :]
        # It went on with the epoch after its newest checkpoint: not from epoch 1, not again.
        assert _fresh_epochs(new) == list(range(k + 1, epochs + 1)), (name, k, _fresh_epochs(rows))

    # The trials that had finished: every row as an export just before the kill wrote it.
    last = exported["epochs"].groupby("trial_id")["epoch"].max()
    done = list(last[last == epochs].index)
    assert done
    after = {name: pd.read_parquet(run_dir / f"{name}.parquet") for name in exported}
    for name, frame in exported.items():
        key = ["trial_id", "epoch"] if "epoch" in frame else ["trial_id"]
        old = frame[frame["trial_id"].isin(done)]
        if name == "trials":
            old = old[old["status"] == "completed"]  # those Tune's snapshot saw finish
        new = after[name].merge(old[key].drop_duplicates(), on=key)[old.columns]
        pd.testing.assert_frame_equal(
            old.sort_values(list(old.columns)).reset_index(drop=True),
            new.sort_values(list(old.columns)).reset_index(drop=True),
            obj=name,
        )


def test_chaos_killed_trial_workers_go_on_from_their_checkpoints(
    ray_session, tmp_path, small_folder, cache_root, write_experiment, reports
):
    """Kill the worker of a part-way trial every 0.5 s, 3 times, during an 8-trial search."""
    epochs, kills_wanted = 3, 3
    path = _experiment(
        write_experiment,
        tmp_path,
        small_folder,
        cache_root,
        **{"search.num_trials": 8, "search.max_concurrent": 2, "train.epochs": epochs},
    )
    run_dir = tmp_path / "runs" / "chaos"
    kills: list[tuple[str, int, int]] = []  # trial folder, its worker's pid, persisted epoch
    stop = threading.Event()

    def chaos() -> None:
        workers = {p.pid for p in _trial_workers(os.getpid())}
        while not stop.is_set() and len(kills) < kills_wanted:
            for trial_dir in sorted(run_dir.glob("trial_*")):
                rows = reports(trial_dir / "result.json")
                if not rows or not 0 < rows[-1].get("epoch", 0) < epochs:
                    continue
                pid = rows[-1]["pid"]
                workers |= {p.pid for p in _trial_workers(os.getpid())}
                if pid not in workers or any(k[1] == pid for k in kills):
                    continue
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                try:
                    psutil.Process(pid).wait(5)
                except psutil.Error:
                    pass  # gone already
                kills.append((trial_dir.name, pid, _persisted_epoch(trial_dir)))
                stop.wait(0.5)
                break
            stop.wait(0.05)

    killer = threading.Thread(target=chaos, daemon=True)
    killer.start()
    try:
        assert main(["run", str(path), "--name", "chaos"]) == 0
    finally:
        stop.set()
        killer.join()
    assert len(kills) >= 2, kills  # several workers died mid-trial

    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 8 and set(trials["status"]) == {"completed"}, trials[
        ["trial_id", "status", "error"]
    ]
    assert (trials["epochs"] == epochs).all()
    table = pd.read_parquet(run_dir / "epochs.parquet")
    assert table.groupby("trial_id")["epoch"].apply(sorted).map(lambda e: e == [1, 2, 3]).all()
    _no_duplicate_steps(run_dir)
    for name, pid, k in kills:
        rows = reports(run_dir / name / "result.json")
        cut = max(i for i, r in enumerate(rows) if r["pid"] == pid) + 1
        # The retry (a new worker) went on from the epoch after the newest checkpoint.
        assert _fresh_epochs(rows[cut:]) == list(range(k + 1, epochs + 1)), (name, k, rows)
        assert all(r["pid"] != pid for r in rows[cut:])
    for trial_dir in run_dir.glob("trial_*"):  # no trial trained an epoch twice
        fresh = _fresh_epochs(reports(trial_dir / "result.json"))
        assert fresh == sorted(set(fresh)), (trial_dir.name, fresh)
