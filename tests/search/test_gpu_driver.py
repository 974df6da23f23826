"""The driver's side of the GPU path, checked on the CPU: a command that asks for a GPU this
machine cannot use stops at once (exit 2, the reason and the fix, no traceback) before any data
is loaded or Ray starts; a trial trains on one GPU at most; every trial's process starts with
expandable segments; the driver's own training (the same-init warm-up, `final`) hands its
device memory back when it ends, also when it fails. (The cluster's side: tests/cluster.)"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from hpsearch.search.cli import main
from hpsearch.search.driver import final, gpus, session
from hpsearch.search.errors import ExperimentError
from hpsearch.search.experiment.schema import Experiment
from hpsearch.search.trial import device, warmup
from hpsearch.search.trial.device import ALLOC_CONF

ALLOC = "PYTORCH_CUDA_ALLOC_CONF"
CONFIG = {"arch": "FlatAlexNet", "width": 0.125, "mlp": "16", "optimizer": "sgd", "lr": 0.05}


@pytest.fixture
def no_cuda(monkeypatch):
    """This process as on a machine whose GPU CUDA cannot use (also on one where it can)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _write(tmp_path: Path, **resources) -> Path:
    doc = {
        "name": "g",
        "data": {"folder": str(tmp_path / "images"), "image_size": 16},
        "search": {"num_trials": 1, "space": {"arch": "FlatAlexNet", "width": 0.25}},
        "resources": {"cpus": 1, **resources},
        "storage": str(tmp_path / "runs"),
    }
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# --- no CPU fallback: this machine ----------------------------------------------------------


def test_validate_refuses_a_gpu_this_machine_cannot_use(tmp_path, capsys, no_cuda):
    path = _write(tmp_path, gpus=0.5)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "resources.gpus is 0.5" in err and "CUDA" in err  # the reason, torch's own words
    assert "--set resources.gpus=0" in err and "--address" in err  # what to change
    assert err.strip().count("\n") == 0  # one paragraph
    assert main(["validate", str(path), "--set", "resources.gpus=0"]) == 0


def test_validate_passes_where_cuda_works(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gpus, "cuda_problem", lambda: None)
    assert main(["validate", str(_write(tmp_path, gpus=0.5))]) == 0
    assert "ok" in capsys.readouterr().out


@pytest.mark.slow  # a CLI process of its own (4 s on 2 cores, most of it importing torch)
def test_run_without_a_usable_gpu_exits_2_at_once_naming_it(tmp_path, small_folder, cache_root):
    """The acceptance test of the issue: the real CLI in its own process, no traceback, no run
    directory left behind, well within a minute (no data is decoded, no Ray is started)."""
    path = _write(tmp_path, gpus=0)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no usable GPU, also on a GPU machine
    args = ["run", str(path), "--data", str(small_folder), "--name", "g"]
    args += ["--set", f"data.cache={cache_root}", "--set", "resources.gpus=0.5"]
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "hpsearch", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "GPU" in out.stderr and "CUDA" in out.stderr
    assert "Traceback" not in out.stderr
    assert "--set resources.gpus=0" in out.stderr
    assert not (tmp_path / "runs" / "g").exists()
    assert time.monotonic() - started < 60


def _run_dir(tmp_path: Path, gpus: float) -> Path:
    """A run directory as far as resume, kfold and final read it before training."""
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    exp = Experiment.model_validate(
        {"name": "r", "data": {"image_size": 16}, "resources": {"gpus": gpus}}
    )
    (run_dir / "experiment.yaml").write_text(exp.to_yaml())
    (run_dir / "tuner.pkl").write_bytes(b"")  # never read: the check comes first
    return run_dir


@pytest.mark.parametrize(
    ("verb", "fix"),
    [
        ("resume", "Resume the run on a machine whose GPU CUDA can use"),
        ("kfold", "Run kfold on a machine whose GPU CUDA can use"),
        ("final", "hpsearch final RUN_DIR --cpu"),
    ],
)
def test_resume_kfold_and_final_refuse_a_gpu_run_here(tmp_path, capsys, no_cuda, verb, fix):
    run_dir = _run_dir(tmp_path, gpus=0.25)
    assert main([verb, str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "resources.gpus is 0.25" in err and "CUDA" in err and fix in err


def test_final_with_cpu_trains_on_this_machines_cpu(tmp_path, capsys, no_cuda):
    run_dir = _run_dir(tmp_path, gpus=0.25)
    assert main(["final", str(run_dir), "--cpu"]) == 2  # past the GPU check, to the next one
    err = capsys.readouterr().err
    assert "CUDA" not in err and "hpsearch kfold" in err


def test_check_local_gpu_leaves_cpu_runs_and_cluster_runs_alone(no_cuda):
    gpus.check_local_gpu(0, None, "run")
    gpus.check_local_gpu(0.5, "auto", "run")  # the cluster's GPUs are checked once joined
    with pytest.raises(ExperimentError, match=r"resources.gpus is 0.5.*--set resources.gpus=0"):
        gpus.check_local_gpu(0.5, None, "run")


# --- one GPU per trial at most -------------------------------------------------------------


def test_more_than_one_gpu_per_trial_is_refused_naming_what_to_set(tmp_path, capsys):
    path = _write(tmp_path, gpus=0)
    assert main(["validate", str(path), "--set", "resources.gpus=2"]) == 2
    err = capsys.readouterr().err
    assert "resources.gpus: a trial trains on one GPU" in err
    assert "resources.gpus: 1" in err and "0.5" in err
    for fine in (1, 0.5, 0):
        assert Experiment.model_validate({"name": "t", "resources": {"gpus": fine}})


# --- expandable segments in every trial's environment --------------------------------------


def test_the_trials_env_vars_give_way_to_the_users_and_the_jobs(monkeypatch):
    monkeypatch.delenv(ALLOC, raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert session.trial_env_vars() == ALLOC_CONF
    monkeypatch.setenv(ALLOC, "max_split_size_mb:128")  # the user's, in the driver's shell
    assert session.trial_env_vars() == {ALLOC: "max_split_size_mb:128"}
    job = {"runtime_env": {"env_vars": {ALLOC: "max_split_size_mb:64"}}}  # `ray job submit`'s
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert session.trial_env_vars() == {}  # the job's value reaches the workers unmerged


# Runs in its own process: a driver that joins `address` (or, with "", starts a local Ray) the
# way `hpsearch run` does, and prints what a task's process finds in its environment.
PROBE = """
import json, os, sys
import ray
from hpsearch.search.driver import session
owns = session._start(sys.argv[1] or None)
names = ("PYTORCH_CUDA_ALLOC_CONF", "OTHER")
probe = ray.remote(num_cpus=0)(lambda: {k: os.environ.get(k) for k in names})
print(json.dumps(ray.get(probe.remote())))
if owns:
    ray.shutdown()
"""


def _probe(address: str, env: dict[str, str]) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in (ALLOC, "RAY_JOB_CONFIG_JSON_ENV_VAR")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, address],
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a second driver (2 s each on 2 cores)
@pytest.mark.parametrize(
    ("job_env", "seen"),
    [
        ({}, ALLOC_CONF[ALLOC]),
        ({"OTHER": "1"}, ALLOC_CONF[ALLOC]),  # merged with the job's other variables
        ({ALLOC: "max_split_size_mb:64"}, "max_split_size_mb:64"),  # the job's wins
    ],
)
def test_a_joined_clusters_trials_start_with_expandable_segments(ray_session, job_env, seen):
    """A driver joining the test session's Ray as `--address` does, as a `ray job submit` job
    whose runtime_env sets `job_env`: Ray merges both without a conflict."""
    address = ray_session.get_runtime_context().gcs_address
    job = json.dumps({"runtime_env": {"env_vars": job_env}})
    found = _probe(address, {"RAY_JOB_CONFIG_JSON_ENV_VAR": job})
    assert found[ALLOC] == seen
    assert found["OTHER"] == job_env.get("OTHER")


def test_a_local_start_sets_expandable_segments_before_ray_starts(monkeypatch):
    """A local Ray's workers inherit the environment the raylet starts with, so ALLOC_CONF must
    be in the driver's environment when `ray.init` runs (checked without starting a second
    Ray: the test session has one); a value the user set wins."""
    seen = []
    fake_ray = type(
        "FakeRay", (), {"init": staticmethod(lambda **kw: seen.append((os.environ.get(ALLOC), kw)))}
    )
    monkeypatch.setenv(ALLOC, "max_split_size_mb:128")
    session._init(fake_ray, None)
    assert seen[-1][0] == "max_split_size_mb:128" and "runtime_env" not in seen[-1][1]
    monkeypatch.delenv(ALLOC)
    session._init(fake_ray, None)
    assert seen[-1][0] == ALLOC_CONF[ALLOC]


# --- the driver hands its device memory back -----------------------------------------------


@pytest.fixture
def released(monkeypatch) -> list:
    """What the driver's training did, in order: ("init", gpus), "close", "release"."""
    events: list = []
    monkeypatch.setattr(device, "release_device_memory", lambda: events.append("release"))
    return events


def _fake_trainer(events: list, *, fail: Exception | None = None, on: str = "epoch"):
    class FakeTrainer:
        def __init__(self, cfg, config, data, settings, *, train_idx, val_idx, **_):
            if fail is not None and on == "init":
                raise fail
            events.append(("init", settings.gpus))
            self.model = torch.nn.Linear(2, 2)

        def train_epoch(self, epoch):
            if fail is not None and on == "epoch":
                raise fail
            return {"step_loss": [math.nan] if on == "diverge" else [1.0]}

        def close(self):
            events.append("close")

    return FakeTrainer


def _same_init_experiment() -> Experiment:
    return Experiment.model_validate(
        {
            "name": "w",
            "data": {"image_size": 16},
            "search": {"space": {"arch": "FlatAlexNet", "width": 0.125, "mlp_layers": 0}},
            "train": {"same_init": {"epochs": 1}},
        }
    )


def test_the_warmup_releases_its_memory_when_it_ends(
    tmp_path, monkeypatch, released, tiny_data, tiny_settings
):
    monkeypatch.setattr(warmup, "Trainer", _fake_trainer(released))
    state = warmup.warmup_weights(_same_init_experiment(), tiny_data(), tiny_settings(), tmp_path)
    assert set(state) == {"weight", "bias"} and (tmp_path / "init_weights.pt").exists()
    assert released == [("init", 0.0), "close", "release"]


@pytest.mark.parametrize(
    ("fail", "on", "error"),
    [
        (RuntimeError("CUDA error: an illegal memory access"), "epoch", RuntimeError),
        (None, "diverge", ExperimentError),
        (torch.cuda.OutOfMemoryError("CUDA out of memory"), "init", torch.cuda.OutOfMemoryError),
    ],
    ids=["error", "diverged", "no-trainer"],
)
def test_the_warmup_releases_its_memory_when_it_fails(
    tmp_path, monkeypatch, released, tiny_data, tiny_settings, fail, on, error
):
    monkeypatch.setattr(warmup, "Trainer", _fake_trainer(released, fail=fail, on=on))
    with pytest.raises(error):
        warmup.warmup_weights(_same_init_experiment(), tiny_data(), tiny_settings(), tmp_path)
    assert released[-1] == "release"
    assert ("close" in released) == (on != "init")  # closed whenever it was built
    assert not (tmp_path / "init_weights.pt").exists()


def test_the_warmup_takes_the_whole_gpu_or_says_it_trains_on_the_cpu(
    monkeypatch, capsys, tiny_settings
):
    assert warmup.warmup_gpus(tiny_settings(gpus=0)) == 0.0
    monkeypatch.setattr(device, "cuda_problem", lambda: None)
    assert warmup.warmup_gpus(tiny_settings(gpus=0.25)) == 1.0  # alone on the device
    assert capsys.readouterr().out == ""
    # a driver joined to a cluster from a head without a GPU: said, not silent
    monkeypatch.setattr(device, "cuda_problem", lambda: "CUDA cannot be used: no driver; more")
    assert warmup.warmup_gpus(tiny_settings(gpus=0.25)) == 0.0
    out = capsys.readouterr().out
    assert "warm-up" in out and "on its CPU" in out and "no driver" in out


def _final_run(tmp_path: Path, monkeypatch, tiny_data) -> Path:
    """run_final's inputs without a search: the run's experiment, the trial's config, data."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    exp = Experiment.model_validate(
        {"name": "f", "data": {"image_size": 16}, "train": {"epochs": 1, "batch_size": 16}}
    )
    monkeypatch.setattr(final, "load_run_experiment", lambda _: exp)
    monkeypatch.setattr(final, "trial_config", lambda *_: dict(CONFIG))
    monkeypatch.setattr(final, "load_final_data", lambda *_, **__: tiny_data())
    return run_dir


def test_final_releases_its_memory_after_training(tmp_path, monkeypatch, released, tiny_data):
    run_dir = _final_run(tmp_path, monkeypatch, tiny_data)

    class Recorded(final.Trainer):
        def close(self):
            released.append("close")
            super().close()

    monkeypatch.setattr(final, "Trainer", Recorded)
    result = final.run_final(run_dir, trial_id="t1", progress=False, log=lambda _: None)
    assert result.model_file.exists() and (run_dir / "final.parquet").exists()
    assert released == ["close", "release"]


def test_final_releases_its_memory_when_training_fails(tmp_path, monkeypatch, released, tiny_data):
    run_dir = _final_run(tmp_path, monkeypatch, tiny_data)
    boom = torch.cuda.OutOfMemoryError("CUDA out of memory")
    monkeypatch.setattr(final, "Trainer", _fake_trainer(released, fail=boom))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        final.run_final(run_dir, trial_id="t1", progress=False, log=lambda _: None)
    assert released == [("init", 0.0), "close", "release"]
    assert not (run_dir / "final.parquet").exists()
