"""What `run` says, before any trial, when a cluster setting cannot work (a storage URI other
than s3:// or gs://, a relative storage path inside a Ray job, a cluster it cannot join, a
cluster that has no GPU and cannot get one) or needs a hand (the trial concurrency of an
autoscaling cluster that has no workers yet; a cluster that has no GPU yet)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from hpsearch.search.cli import main
from hpsearch.search.driver import gpus, session, tune_setup, tuner
from hpsearch.search.experiment.schema import Experiment, ExperimentError

REPO = Path(__file__).resolve().parents[2]


def _experiment(tmp_path, folder, cache, storage) -> Experiment:
    return Experiment.model_validate(
        {
            "name": "t",
            "data": {"folder": str(folder), "image_size": 16, "cache": str(cache)},
            "search": {"num_trials": 1, "space": {"arch": "FlatAlexNet", "width": 0.25}},
            "storage": str(storage),
        }
    )


@pytest.mark.parametrize("uri", ["ftp://bucket/runs", "hdfs://namenode/runs"])
def test_a_storage_uri_of_another_scheme_is_refused_naming_what_works(tmp_path, capsys, uri):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "storage": uri}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert uri in err and "s3://BUCKET/PREFIX" in err and "/mnt/shared/runs" in err
    assert main(["run", str(path), "--data", str(tmp_path)]) == 2
    assert "scheme" in capsys.readouterr().err
    # s3:// and gs:// pass the checks that need no network (the bucket is checked by `run`)
    path.write_text(yaml.safe_dump({"name": "t", "storage": "s3://bucket/runs"}))
    assert main(["validate", str(path)]) == 0


def test_a_relative_storage_is_refused_inside_a_ray_job(monkeypatch):
    session.check_storage("runs")  # fine on one machine
    session.check_storage("/mnt/shared/runs")
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray sets for a job's driver
    session.check_storage("/mnt/shared/runs")
    with pytest.raises(ExperimentError, match="relative.*Ray job.*--storage /mnt/shared/runs"):
        session.check_storage("runs")


def test_a_cluster_that_refuses_the_driver_names_token_authentication(monkeypatch):
    import ray

    def refuse(**_):
        raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(ExperimentError, match="10.0.0.1:6379.*RAY_AUTH_MODE=token"):
        session._start("10.0.0.1:6379")


def test_a_run_that_cannot_join_its_cluster_leaves_no_run_directory(
    monkeypatch, tmp_path, small_folder, cache_root
):
    def refuse(address):
        raise ExperimentError(f"--address {address}: refused")

    monkeypatch.setattr(session, "_start", refuse)
    exp = _experiment(tmp_path, small_folder, cache_root, tmp_path / "runs")
    with pytest.raises(ExperimentError, match="refused"):
        tuner.run(exp, name="r", address="10.0.0.1:6379", progress=False)
    assert not (tmp_path / "runs" / "r").exists()  # so `--name r` works on the next try


def test_an_empty_autoscaling_cluster_runs_one_trial_at_a_time_and_says_so(
    monkeypatch, tmp_path, capsys
):
    import ray

    exp = Experiment.model_validate({"name": "t", "resources": {"cpus": 2, "gpus": 1}})
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})  # the head, no GPU yet
    assert tune_setup.max_concurrent(exp) == 1
    assert "--set search.max_concurrent=" in capsys.readouterr().out
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 2.0})
    assert tune_setup.max_concurrent(exp) == 2
    assert capsys.readouterr().out == ""


# --- how many trials fit: packed as Ray packs them ---------------------------------------------


@pytest.mark.parametrize(
    ("total", "cpus", "gpus", "fits"),
    [
        ({"CPU": 16.0, "GPU": 1.0}, 1, 0.2, 5),  # not 1 // 0.2 == 4
        ({"CPU": 16.0, "GPU": 3.0}, 1, 0.3, 9),  # 3 per GPU; not 3 // 0.3 == 10
        ({"CPU": 16.0, "GPU": 2.0}, 1, 0.25, 8),
        ({"CPU": 16.0, "GPU": 4.0}, 1, 1, 4),
        ({"CPU": 16.0, "GPU": 2.9999999}, 1, 1, 3),  # a sum a hair short of a whole
        ({"CPU": 4.0, "GPU": 4.0}, 2, 0.5, 2),  # the CPUs are what runs out
        ({"CPU": 0.6}, 0.2, 0, 3),  # 0.6 / 0.2 == 2.9999999999999996 in floating point
        ({"CPU": 8.0}, 1, 0.5, 0),  # an autoscaling cluster's head, no GPU worker yet
    ],
)
def test_the_trials_that_fit_pack_fractional_gpus_per_device(total, cpus, gpus, fits):
    assert tune_setup.trials_that_fit(total, cpus=cpus, gpus=gpus) == fits


def test_max_concurrent_counts_the_trials_that_fit_the_cluster(monkeypatch, capsys):
    import ray

    exp = Experiment.model_validate({"name": "t", "resources": {"cpus": 1, "gpus": 0.2}})
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 1.0})
    assert tune_setup.max_concurrent(exp) == 5
    exp = Experiment.model_validate({"name": "t", "resources": {"cpus": 1, "gpus": 0.3}})
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 3.0})
    assert tune_setup.max_concurrent(exp) == 9
    assert capsys.readouterr().out == ""


# --- a cluster without a GPU now: refused only when it provably cannot get one ------------------


def _wait_for_nodes(ray) -> None:
    """Until the GCS lists the session's node (the readonly node type `gpus` looks at)."""
    from ray.autoscaler.v2.sdk import get_cluster_status

    address = ray.get_runtime_context().gcs_address
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = get_cluster_status(address)
        if status.active_nodes or status.idle_nodes:
            return
        time.sleep(0.5)


def test_a_cluster_without_an_autoscaler_or_a_gpu_is_refused(ray_session, tmp_path, monkeypatch):
    """The test session's Ray counts as such a cluster: a local Ray, 0 GPUs, no autoscaler."""
    monkeypatch.setattr(gpus, "BOOTSTRAP_CONFIG", tmp_path / "absent.yaml")
    _wait_for_nodes(ray_session)
    supply = gpus.cluster_gpu_supply()
    assert supply.now == 0 and supply.can_add is False and "no autoscaler" in supply.why
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    with pytest.raises(ExperimentError, match=r"has no GPU and cannot get one.*resources.gpus: 0"):
        with session.ray_session("auto", discard=run_dir, gpus=0.5):
            pytest.fail("the block must not run")
    assert not run_dir.exists()  # `--name r` works once the cluster has a GPU
    assert ray_session.is_initialized()  # a Ray it did not start is left running
    with session.ray_session("auto", gpus=0):  # CPU trials: nothing to check
        pass


def test_validate_with_address_checks_the_clusters_gpus(ray_session, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(gpus, "BOOTSTRAP_CONFIG", tmp_path / "absent.yaml")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # this machine: irrelevant
    _wait_for_nodes(ray_session)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "resources": {"gpus": 0.5}}))
    assert main(["validate", str(path), "--address", "auto"]) == 2
    err = capsys.readouterr().err
    assert "cannot get one" in err and "no autoscaler" in err and "Traceback" not in err
    assert main(["validate", str(path), "--address", "auto", "--set", "resources.gpus=0"]) == 0


def _cluster_yaml_as_ray_up_fills_it(**gpu_worker_resources) -> dict:
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config["available_node_types"]["gpu_worker"]["resources"] = gpu_worker_resources
    return config


def test_the_autoscaling_config_on_the_head_says_whether_a_gpu_node_can_come(tmp_path, monkeypatch):
    # cluster.yaml's GPU workers (g5.2xlarge) as `ray up` fills in their resources: 1 GPU
    config = _cluster_yaml_as_ray_up_fills_it(CPU=8, GPU=1)
    can_add, why = gpus.node_types_gpus(config)
    assert can_add and "gpu_worker" in why
    assert gpus.node_types_gpus(_cluster_yaml_as_ray_up_fills_it(CPU=8))[0] is False
    assert gpus.node_types_gpus(_cluster_yaml_as_ray_up_fills_it()) is None  # not filled in
    no_workers = _cluster_yaml_as_ray_up_fills_it(CPU=8, GPU=1)
    no_workers["available_node_types"]["gpu_worker"]["max_workers"] = 0
    assert gpus.node_types_gpus(no_workers)[0] is False
    # ... read from where `ray up` leaves it on the head
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    bootstrap.write_text(json.dumps(config))  # (`ray up` writes JSON, which is YAML)
    monkeypatch.setattr(gpus, "BOOTSTRAP_CONFIG", bootstrap)
    monkeypatch.setattr(gpus, "_reported_cluster_config", lambda: None)
    assert gpus._bootstrap_config()[0] is True


def test_the_cluster_config_ray_reports_comes_first(monkeypatch):
    from ray._private.state import state

    monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: {"GPU": 4})
    assert gpus._reported_cluster_config() == (True, "its autoscaler can add up to 4 GPUs")
    monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: {"CPU": 64})
    assert gpus._reported_cluster_config()[0] is False
    monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: None)
    assert gpus._reported_cluster_config() is None


@pytest.mark.parametrize(
    ("supply", "said"),
    [
        (gpus.GpuSupply(1.0, None, "n/a"), None),  # a GPU now: nothing to say
        (gpus.GpuSupply(0.0, True, "node type 'gpu_worker' has 1 GPU(s)"), "wait until"),
        (gpus.GpuSupply(0.0, None, "cannot tell"), "WARNING"),
    ],
)
def test_a_cluster_that_has_or_may_get_a_gpu_runs(monkeypatch, supply, said):
    import ray

    monkeypatch.setattr(gpus, "cluster_gpu_supply", lambda: supply)
    monkeypatch.setattr(
        ray, "get_runtime_context", lambda: type("C", (), {"gcs_address": "10.0.0.1:6379"})
    )
    lines: list[str] = []
    gpus.check_cluster_gpus(0.5, log=lines.append)
    if said is None:
        assert lines == []
    else:
        (line,) = lines
        assert said in line and "10.0.0.1:6379" in line and "resources.gpus is 0.5" in line
