"""A trial's checkpoints, and which one a restarted trial continues from.

A checkpoint is one folder per epoch with the weights and optimizer state (`state.pt`, a plain
state dict) and the trial's reports up to that epoch (`reports.json`). Ray Tune restores a trial
from the checkpoint its experiment snapshot names, and the snapshot (with the trials' result
files, synced with it) is written every >= 10 s: after a crash it can name an older checkpoint
than the trial had persisted, one Tune has since deleted (one is kept per trial), or none. A
restarted trial therefore continues from the newest checkpoint in its own folder that loads, and
reports its epochs again, marked `replayed`, so that the epochs the result file lacks are there
and Tune, the scheduler and the searcher know where it stands (the export keeps an epoch's first
report over a replayed one). Before `resume`, a checkpoint the snapshot names but Tune deleted
is put back as a copy of the trial's newest one (Tune would otherwise refuse to restore it)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from ray import cloudpickle, tune
from ray.train._internal.session import get_session

from hpsearch.rundir import TUNE_STATE_GLOB

STATE_FILE = "state.pt"
REPORTS_FILE = "reports.json"  # the trial's reports, oldest first
CHECKPOINT_PREFIX = "checkpoint_"  # Tune's folder names: checkpoint_000000, checkpoint_000001, ...


@dataclass(frozen=True)
class Restored:
    state: dict[str, Any]  # model, optimizer, epoch (0-based) as saved
    reports: list[dict[str, Any]]  # the trial's reports up to that epoch, to send again


def report_with_checkpoint(
    result: dict[str, Any], model, optimizer, epoch: int, reports: list[dict[str, Any]]
) -> None:
    """tune.report(result) with this epoch's checkpoint; `reports` are the trial's reports so
    far, `result` the last of them (Ray copies the folder into the run's storage during
    report(), so the temporary folder can go after)."""
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    import torch

    with tempfile.TemporaryDirectory(prefix="hpsearch-ckpt-") as tmp:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
        torch.save(state, os.path.join(tmp, STATE_FILE))
        with open(os.path.join(tmp, REPORTS_FILE), "w") as f:
            json.dump(reports, f)
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))


def write_trial_file(name: str, data: bytes) -> bool:
    """Write `data` as the file `name` in the running trial's folder, where its result file
    is (in the run's storage, local or s3://): written whole, then renamed, where the storage
    can rename. False (nothing written) outside a Tune trial, e.g. a trial function called
    in-process."""
    found = _trial_folder(None)
    if found is None:
        return False
    fs, folder = found
    path = f"{folder}/{name}"
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(folder, recursive=True)
        part = f"{path}.part"
        with fs.open_output_stream(part) as f:
            f.write(data)
        fs.move(part, path)
    else:  # an object store: an object appears whole or not at all
        with fs.open_output_stream(path) as f:
            f.write(data)
    return True


def _trial_folder(fallback) -> tuple[Any, str] | None:
    """(pyarrow filesystem, path) of the folder this trial's checkpoints persist to."""
    try:  # Ray's storage context of the running trial: the one place that knows the folder
        storage = get_session().storage
        return storage.storage_filesystem, storage.trial_fs_path
    except Exception:  # noqa: BLE001 (a Ray without it: the folder of Tune's checkpoint)
        if fallback is None:
            return None
        return fallback.filesystem, os.path.dirname(fallback.path.rstrip("/"))


def _candidates(fs, folder: str) -> list[str]:
    """Checkpoint folders in `folder`, newest epoch first, by their reports (a folder whose
    report is missing or unreadable, e.g. cut by a crash while it was copied, is skipped)."""

    try:
        infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    except OSError:
        return []
    found = []
    for info in infos:
        if info.type != pafs.FileType.Directory or not info.base_name.startswith(CHECKPOINT_PREFIX):
            continue
        try:
            with fs.open_input_stream(f"{info.path}/{REPORTS_FILE}") as f:
                epoch = int(json.loads(f.read())[-1]["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        found.append((epoch, info.path))
    return [path for _, path in sorted(found, reverse=True)]


def local_checkpoints(trial_dir: str | os.PathLike[str]) -> list[Path]:
    """The checkpoint folders of a trial folder on this machine, newest epoch first (those whose
    reports load; `hpsearch export` reads the newest one's STATE_FILE)."""
    return [Path(p) for p in _candidates(pafs.LocalFileSystem(), os.path.abspath(trial_dir))]


def restore(device: str) -> Restored | None:
    """The state this trial continues from, or None to start from scratch: the newest checkpoint
    in its folder that loads (Tune's own when that is the newest)."""
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    import torch

    known = tune.get_checkpoint()
    folder = _trial_folder(known)
    paths = _candidates(*folder) if folder else []
    known_path = known.path.rstrip("/") if known is not None else None
    if known_path is not None and known_path not in paths:
        paths.append(known_path)  # last: only when no newer folder loads
    for path in paths:
        checkpoint = known if path == known_path else tune.Checkpoint(path, folder[0])
        try:
            with checkpoint.as_directory() as d:
                state = torch.load(
                    os.path.join(d, STATE_FILE), map_location=device, weights_only=True
                )
                reports = []
                if os.path.exists(os.path.join(d, REPORTS_FILE)):  # (checkpoints before it)
                    with open(os.path.join(d, REPORTS_FILE)) as f:
                        reports = json.load(f)
        except Exception:  # noqa: BLE001 (a folder cut by a crash: try the next older one)
            continue
        return Restored(state=state, reports=reports)
    return None


def repair_lost_checkpoints(run_dir: Path) -> list[str]:
    """Put back each checkpoint that Tune's newest snapshot in `run_dir` (a local folder) names
    but that is gone (Tune deletes a trial's older checkpoint before its next snapshot names the
    newer one), as a copy of the trial's newest checkpoint; the trial then goes on from there.
    Returns the trials repaired. Reads Tune's pickled checkpoint bookkeeping: a state it cannot
    read is left alone (`resume` then restarts such a trial from scratch)."""

    states = sorted(glob.glob(str(Path(run_dir) / TUNE_STATE_GLOB)))
    repaired: list[str] = []
    try:
        trials = json.loads(Path(states[-1]).read_text())["trial_data"] if states else []
    except (OSError, ValueError, KeyError):
        return repaired
    for trial_json, meta_json in trials:
        try:
            trial = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
            meta = json.loads(meta_json) if isinstance(meta_json, str) else meta_json
            manager = cloudpickle.loads(bytes.fromhex(meta["checkpoint_manager"]["value"]))
            latest = manager.latest_checkpoint_result
            named = latest.checkpoint.path if latest is not None else None
        except Exception:  # noqa: BLE001 (another Ray's format: nothing to repair here)
            continue
        if named is None or os.path.exists(named):
            continue
        newest = _candidates(pafs.LocalFileSystem(), os.path.dirname(named.rstrip("/")))
        if newest:
            shutil.copytree(newest[0], named)
            repaired.append(str(trial.get("trial_id")))
    return repaired
