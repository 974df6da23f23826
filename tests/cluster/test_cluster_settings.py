"""What `run` says, before any trial, when a cluster setting cannot work (a storage URI other
than s3:// or gs://, a relative storage path inside a Ray job, a cluster it cannot join) or needs a hand (the trial
concurrency of an autoscaling cluster that has no workers yet)."""

from __future__ import annotations

import pytest
import yaml

from hpsearch.search.cli import main
from hpsearch.search.driver import session, tune_setup, tuner
from hpsearch.search.experiment.schema import Experiment, ExperimentError


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
