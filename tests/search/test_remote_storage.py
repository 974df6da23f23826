"""Run directories in object storage (`--storage s3://...`, search.remote) against a local
S3-compatible server: moto's standalone server on 127.0.0.1, started once for the session and
stopped at the end. Credentials are per-test random strings, so a leak can be searched for."""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from hpsearch.search.cli import main
from hpsearch.search.errors import ExperimentError
from hpsearch.search.storage import remote
from hpsearch.search.storage.run_store import RunStore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 for the whole session; its URL."""
    port = _free_port()
    log = (tmp_path_factory.mktemp("moto") / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"moto's server exited (log: {log.name})"
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto's server did not answer in 60 s"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class S3:
    """One test's bucket on the server, its credentials and a boto3 client."""

    def __init__(self, endpoint: str, bucket: str, key_id: str, secret: str):
        import boto3

        self.endpoint, self.bucket, self.key_id, self.secret = endpoint, bucket, key_id, secret
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
        )

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def parquet(self, key: str) -> pd.DataFrame:
        return pd.read_parquet(io.BytesIO(self.read(key)))


def _clear_aws_env(monkeypatch) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)


@pytest.fixture
def s3(s3_endpoint, monkeypatch, tmp_path) -> S3:
    """A fresh bucket, the AWS_* environment pyarrow and boto3 read (restored afterwards) and
    a working-copy root of this test's own."""
    _clear_aws_env(monkeypatch)
    key_id, secret = f"AKIA{secrets.token_hex(8).upper()}", secrets.token_hex(20)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv(remote.ROOT_ENV, str(tmp_path / "working"))
    store = S3(s3_endpoint, f"hps-{secrets.token_hex(4)}", key_id, secret)
    store.client.create_bucket(Bucket=store.bucket)
    return store


# --- URIs and working copies: no server -----------------------------------------------------


def test_uris_parse_into_bucket_and_prefix():
    uri = remote.parse_uri("s3://my-bucket/runs/")
    assert (uri.scheme, uri.bucket, uri.prefix, uri.path) == (
        "s3",
        "my-bucket",
        "runs",
        "my-bucket/runs",
    )
    assert str(uri.child("demo-1")) == "s3://my-bucket/runs/demo-1"
    assert uri.child("demo-1").parent == uri and uri.child("demo-1").name == "demo-1"
    assert str(remote.parse_uri("gs://b.example/a/b")) == "gs://b.example/a/b"
    assert str(remote.parse_uri("s3://bucket")) == "s3://bucket"


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("ftp://bucket/runs", "s3://BUCKET/PREFIX or gs://BUCKET/PREFIX"),
        ("file:///tmp/runs", "s3://BUCKET/PREFIX or gs://BUCKET/PREFIX"),
        ("s3:///runs", "names no bucket"),
        ("s3://127.0.0.1:9000/runs", "AWS_ENDPOINT_URL"),
        ("s3://bucket/runs/../other", "'..'"),
    ],
)
def test_a_bad_storage_uri_says_what_to_change(uri, says):
    with pytest.raises(ExperimentError, match="storage: ") as e:
        remote.parse_uri(uri)
    assert says in str(e.value)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://AKIAEXAMPLEKEY:TOPSECRET@bucket/runs",
        "s3://TOPSECRET@bucket/runs",
        "s3://bucket/runs?access_key=AKIAEXAMPLEKEY&secret_key=TOPSECRET",
        "s3://bucket/runs#TOPSECRET",
        "gs://bucket/runs?access_token=TOPSECRET",
    ],
)
def test_credentials_in_a_uri_are_refused_without_repeating_them(
    uri, tmp_path, monkeypatch, capsys
):
    with pytest.raises(ExperimentError) as e:
        remote.parse_uri(uri)
    assert "TOPSECRET" not in str(e.value) and "AKIAEXAMPLEKEY" not in str(e.value)
    assert "AWS_ACCESS_KEY_ID" in str(e.value) or "AWS_ENDPOINT_URL" in str(e.value)
    # Through the CLI: refused before anything is written (experiment.yaml would hold it)
    monkeypatch.setenv(remote.ROOT_ENV, str(tmp_path / "working"))
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"name": "t", "data": {"folder": str(tmp_path)}}))
    assert main(["run", str(exp), "--storage", uri, "--name", "r"]) == 2
    assert main(["resume", uri]) == 2
    captured = capsys.readouterr()
    assert "TOPSECRET" not in captured.out + captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "working").exists()


def test_the_working_copy_is_keyed_by_the_uri(tmp_path, monkeypatch):
    monkeypatch.setenv(remote.ROOT_ENV, str(tmp_path / "wc"))
    uri = remote.parse_uri("s3://bkt/team/runs/demo-1")
    local = remote.working_copy(uri)
    assert local == (tmp_path / "wc" / "s3" / "bkt" / "team" / "runs" / "demo-1").resolve()
    assert remote.working_copy(remote.parse_uri("gs://bkt/team/runs/demo-1")) != local
    # ... and maps back, so a working copy names its run
    assert remote.uri_of_working_copy(local) == uri
    assert remote.display(local) == "s3://bkt/team/runs/demo-1"
    assert remote.local_path("s3://bkt/team/runs/demo-1") == local
    assert remote.uri_of_working_copy(tmp_path / "runs" / "demo-1") is None
    assert remote.display(tmp_path / "runs" / "demo-1") == str(tmp_path / "runs" / "demo-1")
    # default: under the user's cache directory
    monkeypatch.delenv(remote.ROOT_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert remote.working_copy_root() == (tmp_path / "cache" / "hpsearch-runs").resolve()


def test_an_endpoint_that_does_not_answer_is_named(monkeypatch, tmp_path, capsys):
    _clear_aws_env(monkeypatch)
    port = _free_port()  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv(remote.ROOT_ENV, str(tmp_path / "working"))
    assert main(["resume", "s3://bkt/runs/r"]) == 2
    err = capsys.readouterr().err
    assert f"http://127.0.0.1:{port}" in err and "AWS_ENDPOINT_URL" in err
    assert "Traceback" not in err


# --- against the server, without Ray ---------------------------------------------------------


def test_a_missing_bucket_or_run_is_named(s3, tmp_path, capsys):
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"name": "t", "data": {"folder": str(tmp_path)}}))
    assert main(["run", str(exp), "--storage", "s3://no-such-bucket/runs", "--name", "r"]) == 2
    err = capsys.readouterr().err
    assert "'no-such-bucket' does not exist" in err and s3.endpoint in err
    assert main(["report", f"s3://{s3.bucket}/runs/nothing"]) == 2
    assert "holds no run" in capsys.readouterr().err


def test_download_mirrors_what_the_driver_reads_and_upload_replaces_or_deletes(s3):
    uri = remote.parse_uri(f"s3://{s3.bucket}/runs/r")
    put = {
        "runs/r/experiment.yaml": b"name: r\n",
        "runs/r/experiment_state-2026.json": b"{}",
        "runs/r/tuner.pkl": b"pickle",
        "runs/r/trial_a/result.json": b'{"epoch": 1}\n',
        "runs/r/trial_a/params.json": b"{}",
        "runs/r/trial_a/params.pkl": b"not read",
        "runs/r/trial_a/checkpoint_000000/state.pt": b"weights",
        "runs/r/kfold/trial_b/result.json": b'{"epoch": 1}\n',
        "runs/r/report/index.html": b"<html>",
        "runs/r/final/model-1.pt": b"weights",
        "runs/r/.validate_storage_marker": b"",
    }
    for key, body in put.items():
        s3.client.put_object(Bucket=s3.bucket, Key=key, Body=body)
    run = remote.RemoteRun.open(uri)
    assert run.exists() and run.local == remote.working_copy(uri)

    assert run.download(results_only=True) == 3  # Tune's state and the trial's results only
    assert sorted(
        p.relative_to(run.local).as_posix() for p in run.local.rglob("*") if p.name[0] != "."
    ) == [
        "experiment_state-2026.json",
        "trial_a",
        "trial_a/params.json",
        "trial_a/result.json",
    ]
    assert run.download() == 3  # the rest, never checkpoints, the report or final models
    files = {p.relative_to(run.local).as_posix() for p in run.local.rglob("*") if p.is_file()}
    assert files == {
        ".remote-manifest.json",
        "experiment.yaml",
        "experiment_state-2026.json",
        "tuner.pkl",
        "trial_a/result.json",
        "trial_a/params.json",
        "kfold/trial_b/result.json",
    }
    assert run.download() == 0  # unchanged: nothing fetched again
    (run.local / "experiment.yaml").write_text("name: changed here\n")  # same size or not:
    assert run.download() == 1  # a local change is undone: storage is what a resume trusts
    assert (run.local / "experiment.yaml").read_text() == "name: r\n"

    # a grown result is fetched again; a file gone from storage goes from the copy too
    s3.client.put_object(
        Bucket=s3.bucket, Key="runs/r/trial_a/result.json", Body=b'{"epoch": 1}\n{"epoch": 2}\n'
    )
    s3.client.delete_object(Bucket=s3.bucket, Key="runs/r/tuner.pkl")
    assert run.download() == 1
    assert (run.local / "trial_a" / "result.json").read_text().count("epoch") == 2
    assert not (run.local / "tuner.pkl").exists()

    # upload: files and folders replace their objects; a file missing locally is deleted
    (run.local / "trials.parquet").write_bytes(b"table")
    (run.local / "report").mkdir()
    (run.local / "report" / "index.html").write_bytes(b"<html>new")
    (run.local / "experiment.yaml").unlink()
    run.upload(["trials.parquet", "report", "experiment.yaml"])
    assert s3.read("runs/r/trials.parquet") == b"table"
    assert s3.read("runs/r/report/index.html") == b"<html>new"
    assert "runs/r/experiment.yaml" not in s3.keys("runs/r/")
    assert run.download() == 0  # what was just uploaded is not downloaded back


def test_a_run_store_is_one_interface_for_local_and_stored_runs(s3, tmp_path):
    """The verbs open a run once and call upload / download without asking where it lives:
    for a local run both change nothing; for a stored one they move files."""
    local = tmp_path / "runs" / "here"
    local.mkdir(parents=True)
    (local / "folds.parquet").write_bytes(b"table")
    store = RunStore.checkout(local)
    assert store.remote is None and store.path == local and store.shown == str(local)
    assert store.tune_path("kfold") == local / "kfold"
    store.upload(["folds.parquet"])  # nothing to store, nothing raised
    store.download()
    assert sorted(p.name for p in local.iterdir()) == ["folds.parquet"]

    s3.client.put_object(Bucket=s3.bucket, Key="runs/r/experiment.yaml", Body=b"name: r\n")
    uri = f"s3://{s3.bucket}/runs/r"
    stored = RunStore.checkout(uri)
    assert stored.shown == uri and stored.tune_path("kfold") == f"{uri}/kfold"
    assert (stored.path / "experiment.yaml").read_bytes() == b"name: r\n"  # the working copy
    (stored.path / "folds.parquet").write_bytes(b"table")
    stored.upload(["folds.parquet"])
    body = s3.client.get_object(Bucket=s3.bucket, Key="runs/r/folds.parquet")["Body"].read()
    assert body == b"table"
    assert RunStore.of_working_copy(stored.path).shown == uri
    with pytest.raises(ExperimentError, match="holds no run"):
        RunStore.checkout(f"s3://{s3.bucket}/runs/nothing")


def test_each_snapshot_uploads_the_study_and_new_results_first(s3, tmp_path):
    # Tune calls get_state while it writes a snapshot, before uploading it: what the snapshot
    # refers to (the study's trials, the trials' reports) must be on storage by then.
    import pickle
    from types import SimpleNamespace

    from hpsearch.search.storage.remote_tune import UploadOnSnapshot

    uri = f"s3://{s3.bucket}/runs/r"
    callback = UploadOnSnapshot(uri)
    callback.get_state()  # nothing yet: nothing to upload, no error
    assert s3.keys("runs/r/") == []

    db = remote.local_path(uri) / "optuna.db"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"study v1")
    staging = tmp_path / "driver_artifacts" / "trial_a"  # Tune's driver folder of the trial
    staging.mkdir(parents=True)
    (staging / "params.json").write_text("{}")
    (staging / "result.json").write_text('{"epoch": 1}\n')
    trial = SimpleNamespace(local_path=str(staging))
    callback.on_trial_result(iteration=1, trials=[trial], trial=trial, result={})
    assert callback.get_state() is None  # Tune writes no callback state for it
    assert s3.read("runs/r/optuna.db") == b"study v1"
    assert s3.read("runs/r/trial_a/result.json") == b'{"epoch": 1}\n'
    assert s3.read("runs/r/trial_a/params.json") == b"{}"

    (staging / "result.json").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    db.write_bytes(b"study v2, longer")
    callback.get_state()  # without a new report: the result is not sent again
    assert s3.read("runs/r/trial_a/result.json") == b'{"epoch": 1}\n'
    assert s3.read("runs/r/optuna.db") == b"study v2, longer"
    callback.on_trial_result(iteration=2, trials=[trial], trial=trial, result={})
    callback.on_experiment_end(trials=[trial])
    assert s3.read("runs/r/trial_a/result.json").count(b"epoch") == 2

    restored = pickle.loads(pickle.dumps(callback))  # as Tune keeps it in tuner.pkl
    assert pickle.dumps(callback).count(str(tmp_path).encode()) == 0
    assert restored.run_uri == uri and restored._reported == {}

    # resumed in a new driver folder: the stored results come first, so the logger appends
    resumed = tmp_path / "new_driver_artifacts"
    for name in ("trial_a", "trial_new"):
        t = SimpleNamespace(local_path=str(resumed / name))
        restored.on_trial_start(iteration=0, trials=[t], trial=t)
    assert (resumed / "trial_a" / "result.json").read_bytes().count(b"epoch") == 2
    assert not (resumed / "trial_new").exists()  # nothing stored for a new trial
    (resumed / "trial_a" / "result.json").write_text("local\n")
    restored.on_trial_start(
        iteration=0, trials=[t], trial=SimpleNamespace(local_path=str(resumed / "trial_a"))
    )
    assert (resumed / "trial_a" / "result.json").read_text() == "local\n"  # never replaced


def test_the_drivers_aws_keys_stay_out_of_the_trials_runtime_env(monkeypatch):
    from ray.tune.execution import class_cache

    from hpsearch.search.storage.remote_tune import keep_credentials_out_of_ray

    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE", class_cache.ENV_VARS_TO_PROPAGATE)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "TOPSECRET")
    keep_credentials_out_of_ray()

    class Trainable:
        pass

    options = class_cache._ActorClassCache().get(Trainable)._default_options
    env_vars = options["runtime_env"]["env_vars"]  # Ray's agent logs these in plain text
    assert "PL_DISABLE_FORK" in env_vars  # what else Tune propagates is left alone
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env_vars)


# --- a whole search on S3 (Ray) ---------------------------------------------------------------


def _experiment(tmp_path: Path, folder: Path, cache: Path) -> Path:
    doc = {
        "name": "tiny",
        "data": {"folder": str(folder), "image_size": 16, "cache": str(cache)},
        "search": {
            "num_trials": 3,
            "max_concurrent": 1,
            "space": {
                "arch": "FlatAlexNet",
                "width": 0.25,
                "mlp_layers": [0, 1],
                "mlp_width": [32],
                "optimizer": {"sgd": {"lr": {"low": 0.01, "high": 0.1, "log": True}}},
            },
        },
        "scheduler": {"type": "none"},
        "train": {"epochs": 3, "batch_size": 16},
        # `resume` runs it once the search is complete: k-fold on the same storage
        "kfold": {"top": 1, "k": 2, "epochs": 1},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _epochs(text: str) -> list[int]:
    return [json.loads(line)["epoch"] for line in text.splitlines() if line.strip()]


@pytest.mark.slow
def test_a_search_on_s3_survives_sigkill_and_resumes_from_s3(
    s3, tmp_path, small_folder, cache_root, capsys
):
    storage = f"s3://{s3.bucket}/runs"
    run_uri = f"{storage}/killed"
    ray_tmp = tempfile.mkdtemp(prefix="hps", dir="/tmp")  # short: Ray's socket paths
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": ray_tmp}
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        with (logs / "run.txt").open("wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hpsearch",
                    "run",
                    str(_experiment(tmp_path, small_folder, cache_root)),
                    "--storage",
                    storage,
                    "--name",
                    "killed",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            try:  # killed once a trial has reported: its result.json is on S3
                deadline = time.monotonic() + 240
                while not [k for k in s3.keys("runs/killed/trial_") if k.endswith("/result.json")]:
                    assert proc.poll() is None, (logs / "run.txt").read_text()
                    assert time.monotonic() < deadline, "no trial reported to S3 in time"
                    time.sleep(0.2)
                before = {
                    k: s3.read(k).decode()
                    for k in s3.keys("runs/killed/")
                    if k.endswith("/result.json")
                }
            finally:
                os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray instance it started
                proc.wait()
        keys = s3.keys("runs/killed/")
        assert "runs/killed/experiment.yaml" in keys and "runs/killed/tuner.pkl" in keys
        assert "runs/killed/trials.parquet" not in keys  # no export ran
        stored = yaml.safe_load(s3.read("runs/killed/experiment.yaml"))
        assert stored["storage"] == storage

        # A new driver machine: nothing local survives; resume works from S3 alone.
        shutil.rmtree(remote.working_copy_root())
        resumed = subprocess.run(
            [sys.executable, "-m", "hpsearch", "resume", run_uri],
            capture_output=True,
            text=True,
            env=env,
            timeout=400,
        )
        (logs / "resume.txt").write_text(resumed.stdout + resumed.stderr)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert f"results: {run_uri}" in resumed.stdout

        # The tables, read back from S3: every trial, every epoch once
        trials = s3.parquet("runs/killed/trials.parquet")
        assert len(trials) == 3 and set(trials["status"]) == {"completed"}, trials
        epochs = s3.parquet("runs/killed/epochs.parquet")
        assert set(epochs["trial_id"]) == set(trials["trial_id"])
        assert epochs.groupby("trial_id")["epoch"].apply(sorted).map(lambda e: e == [1, 2, 3]).all()
        finished_before = [k for k, text in before.items() if _epochs(text)[-1:] == [3]]
        for key in finished_before:  # trials that had finished are kept as they were
            assert s3.read(key).decode().startswith(before[key]), key
        # the study, uploaded with every snapshot and the export, opens from its S3 copy
        import optuna

        db = tmp_path / "optuna.db"
        db.write_bytes(s3.read("runs/killed/optuna.db"))
        study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(done) >= 2 and all(t.value is not None for t in done)
        # k-fold (the experiment's kfold: section) ran on the same storage
        folds = s3.parquet("runs/killed/folds.parquet")
        assert len(folds) == 2 * 2 and set(folds["fold"]) == {0, 1}
        assert any(k.startswith("runs/killed/kfold/trial_") for k in s3.keys("runs/killed/kfold/"))
        # its out-of-sample predictions too, which the audit reads from S3 and answers into it
        preds = s3.parquet("runs/killed/predictions.parquet")
        assert len(preds) and set(preds["fold"]) == {0, 1}
        assert main(["audit", run_uri]) == 0
        assert {"runs/killed/audit.parquet", "runs/killed/audit/exclude.csv"} <= set(s3.keys())

        # final and report read the run from S3 and upload what they write
        assert main(["final", run_uri]) == 0
        assert len(s3.parquet("runs/killed/final.parquet")) == 1
        assert main(["report", run_uri]) == 0
        assert "runs/killed/report/index.html" in s3.keys("runs/killed/report/")
        out = capsys.readouterr()
        (logs / "in-process.txt").write_text(out.out + out.err)

        # No credential anywhere: not in the bucket, the working copy, the output or Ray's logs
        secrets_ = (s3.key_id.encode(), s3.secret.encode())
        for key in s3.keys():
            body = s3.read(key)
            assert not any(x in body for x in secrets_), key
        for root in (remote.working_copy_root(), logs, Path(ray_tmp)):
            for path in root.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    body = path.read_bytes()
                    assert not any(x in body for x in secrets_), path
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
