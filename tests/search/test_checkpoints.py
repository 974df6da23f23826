"""Which checkpoint a restarted trial continues from (no Ray: Tune's checkpoint is faked)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs as pafs
import pytest
import torch
from ray import tune

from hpsearch.search.driver.export import collect, read_results
from hpsearch.search.trial import checkpoints
from hpsearch.search.trial.checkpoints import repair_lost_checkpoints, restore
from hpsearch.search.trial.report import REPLAYED, replayed


def _save(trial: Path, index: int, epoch: int) -> Path:
    d = trial / f"checkpoint_{index:06d}"
    d.mkdir(parents=True)
    torch.save({"model": {"w": torch.full((2,), float(epoch))}, "epoch": epoch - 1}, d / "state.pt")
    reports = [{"epoch": e, "val_accuracy": e / 10} for e in range(1, epoch + 1)]
    (d / "reports.json").write_text(json.dumps(reports))
    return d


@pytest.fixture
def trial(tmp_path, monkeypatch):
    """A trial folder (`.path`); `.known(path)` makes `path` the checkpoint Tune restores from."""
    folder = tmp_path / "trial_a"
    folder.mkdir()
    monkeypatch.setattr(
        checkpoints, "_trial_folder", lambda _: (pafs.LocalFileSystem(), str(folder))
    )
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)

    def known(path: Path | None) -> None:
        value = None if path is None else tune.Checkpoint(str(path))
        monkeypatch.setattr(tune, "get_checkpoint", lambda: value)

    return SimpleNamespace(path=folder, known=known)


def test_tunes_own_checkpoint_when_it_is_the_newest(trial):
    _save(trial.path, 0, 1)
    trial.known(_save(trial.path, 1, 2))
    got = restore("cpu")
    assert got.state["epoch"] == 1
    assert [r["epoch"] for r in got.reports] == [1, 2]  # the history the trial goes on with


def test_a_newer_checkpoint_than_tunes_snapshot_wins_and_is_replayed(trial):
    trial.known(_save(trial.path, 0, 1))
    _save(trial.path, 1, 2)
    _save(trial.path, 2, 3)
    got = restore("cpu")
    assert got.state["epoch"] == 2 and torch.equal(got.state["model"]["w"], torch.full((2,), 3.0))
    assert [r["epoch"] for r in got.reports] == [1, 2, 3]  # to send again, marked
    assert replayed(got.reports)[-1] == {"epoch": 3, "val_accuracy": 0.3, REPLAYED: True}


def test_the_newest_epoch_wins_over_the_newest_folder_name(trial):
    """After a restart Tune numbers the next checkpoint from its snapshot: a lower folder number
    can hold a later epoch."""
    _save(trial.path, 3, 2)
    _save(trial.path, 1, 4)
    assert restore("cpu").state["epoch"] == 3


def test_a_deleted_snapshot_checkpoint_falls_back_to_what_is_on_disk(trial):
    trial.known(trial.path / "checkpoint_000000")  # Tune deleted it after a newer one
    _save(trial.path, 1, 2)
    got = restore("cpu")
    assert got.state["epoch"] == 1


def test_a_checkpoint_cut_by_a_crash_falls_back_to_the_one_before(trial):
    trial.known(_save(trial.path, 0, 1))
    cut = _save(trial.path, 1, 2)
    (cut / "state.pt").write_bytes((cut / "state.pt").read_bytes()[:20])
    got = restore("cpu")
    assert got.state["epoch"] == 0
    (trial.path / "checkpoint_000002").mkdir()  # copied without its report yet
    assert restore("cpu").state["epoch"] == 0


def test_nothing_to_restore_starts_from_scratch(trial):
    assert restore("cpu") is None


def test_the_export_keeps_an_epochs_first_report_over_its_replay(tmp_path):
    lines = [
        {"epoch": 1, "val_accuracy": 0.1, "timestamp": 1},
        {"epoch": 2, "val_accuracy": 0.2, "timestamp": 2},
        {"epoch": 2, "val_accuracy": 0.2, "timestamp": 9, REPLAYED: True},  # after a restart
        {"epoch": 3, "val_accuracy": 0.3, "timestamp": 10},
    ]
    (tmp_path / "result.json").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert [(r["epoch"], r["timestamp"]) for r in read_results(tmp_path)] == [
        (1, 1),
        (2, 2),
        (3, 10),
    ]
    # a replay is the only report of an epoch whose line the crash cut off: it stands in
    lines.pop(1)
    (tmp_path / "result.json").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert [(r["epoch"], r["timestamp"]) for r in read_results(tmp_path)] == [
        (1, 1),
        (2, 9),
        (3, 10),
    ]


def test_the_export_survives_a_params_file_the_kill_cut(tmp_path):
    """A kill while Tune writes a new trial's params.json leaves it empty; the export still
    builds the tables, and the other trials keep their configs."""
    for trial_id, params in (("a", '{"lr": 0.1}'), ("b", ""), ("c", '{"lr": 0.')):
        trial_dir = tmp_path / f"trial_{trial_id}"
        trial_dir.mkdir()
        (trial_dir / "params.json").write_text(params)
        (trial_dir / "result.json").write_text(json.dumps({"epoch": 1, "val_accuracy": 0.5}) + "\n")
    trials = collect(tmp_path, epochs=2, classes=["x", "y"])["trials"].set_index("trial_id")
    assert list(trials.index) == ["a", "b", "c"]
    assert trials.loc["a", "lr"] == 0.1


def test_a_checkpoint_the_snapshot_names_but_tune_deleted_is_put_back(tmp_path):
    """Tune deletes a trial's older checkpoint before its next snapshot names the newer one;
    resume would then refuse the trial. The named folder comes back as the newest's copy."""
    from ray import cloudpickle
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult

    run = tmp_path / "run"
    trial = run / "trial_a"
    named = trial / "checkpoint_000001"
    manager = _CheckpointManager(tune.CheckpointConfig(num_to_keep=1))
    manager.register_checkpoint(_TrainingResult(tune.Checkpoint(str(named)), {"epoch": 2}))
    meta = {"checkpoint_manager": {"value": cloudpickle.dumps(manager).hex()}}
    state = {"trial_data": [[json.dumps({"trial_id": "a"}), json.dumps(meta)]]}
    (run).mkdir()
    (run / "experiment_state-2026-12-02_00-00-00.json").write_text(json.dumps(state))
    newest = _save(trial, 3, 4)
    assert repair_lost_checkpoints(run) == ["a"]
    assert (named / "state.pt").read_bytes() == (newest / "state.pt").read_bytes()
    assert repair_lost_checkpoints(run) == []  # there now: nothing to do
