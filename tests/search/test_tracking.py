"""The `tracking:` section: the schema, the checks before a run, the two logger callbacks fed with
a trial's real kinds of reports, and one tiny real search that writes TensorBoard event files
and MLflow runs (read back with each library's own reader) and prints its console lines."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from hpsearch.search.cli import main
from hpsearch.search.errors import ExperimentError
from hpsearch.search.experiment.schema import load_experiment

REPO = Path(__file__).resolve().parents[2]
SCALARS = (
    "train_loss",
    "train_accuracy",
    "train_macro_precision",
    "val_loss",
    "val_accuracy",
    "val_macro_precision",
    "seconds",
    "images_per_s",
)


def write(tmp_path: Path, doc: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def base(**tracking) -> dict:
    doc = {
        "name": "t",
        "data": {"folder": "imgs", "image_size": 32},
        "search": {"num_trials": 2, "space": {"arch": ["FlatAlexNet"]}},
        "train": {"epochs": 2},
    }
    if tracking:
        doc["tracking"] = tracking
    return doc


# --- the schema ------------------------------------------------------------------------------


def test_tracking_is_off_by_default_and_round_trips(tmp_path):
    exp = load_experiment(write(tmp_path, base()))
    assert (exp.tracking.tensorboard, exp.tracking.mlflow, exp.tracking.enabled) == (
        False,
        None,
        False,
    )
    uri = "sqlite:////tmp/mlflow.db"
    exp = load_experiment(write(tmp_path, base(tensorboard=True, mlflow=uri)))
    assert exp.tracking.tensorboard and exp.tracking.mlflow == uri and exp.tracking.enabled
    again = load_experiment(write(tmp_path, yaml.safe_load(exp.to_yaml()), "again.yaml"))
    assert again.tracking == exp.tracking
    for good in ("http://host:5000", "https://mlflow.example.org", "databricks", "file:/x/mlruns"):
        assert load_experiment(write(tmp_path, base(mlflow=good))).tracking.mlflow == good


@pytest.mark.parametrize(
    ("tracking", "field", "hint"),
    [
        ({"tensorboard": "sometimes"}, "tracking.tensorboard", "valid boolean"),
        ({"mlflow": "mlruns"}, "tracking.mlflow", "not a tracking URI"),
        ({"mlflow": ""}, "tracking.mlflow", "not a tracking URI"),
        ({"mlflow": True}, "tracking.mlflow", "valid string"),
        ({"mlflow": "https://me:secret@mlflow.example.org"}, "tracking.mlflow", "MLFLOW_TRACKING"),
        ({"wandb": "x"}, "tracking.wandb", "unknown key"),
    ],
)
def test_bad_tracking_values_name_the_field(tmp_path, tracking, field, hint):
    with pytest.raises(ExperimentError) as e:
        load_experiment(write(tmp_path, base(**tracking)))
    line = next(ln for ln in str(e.value).splitlines() if ln.strip().startswith(field + ":"))
    assert hint in line
    assert "secret" not in str(e.value)  # (credentials are not echoed either)


# --- the checks before a run -----------------------------------------------------------------


def test_validate_mentions_tracking(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file:{tmp_path}/mlruns"
    path = write(tmp_path, base(tensorboard=True, mlflow=uri))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "tracking: TensorBoard event files per trial (tensorboard --logdir RUN_DIR)" in out
    assert f"tracking: one MLflow run per trial at {uri}, experiment 't'" in out
    assert not (tmp_path / "mlruns").exists()  # validating writes nothing


def test_a_file_store_mlflow_refuses_is_reported_before_the_run(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    path = write(tmp_path, base(mlflow=f"file:{tmp_path}/mlruns"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "tracking.mlflow:" in err and "MLFLOW_ALLOW_FILE_STORE=true" in err
    assert "sqlite:///" in err


def test_without_the_libraries_only_a_section_that_asks_for_them_fails(tmp_path):
    """As if neither tensorboardX nor mlflow were installed: an experiment without tracking
    validates and gets its Tune callbacks; one that asks exits 2 with the install command."""
    plain = write(tmp_path, base(), "plain.yaml")
    tb = write(tmp_path, base(tensorboard=True), "tb.yaml")
    ml = write(tmp_path, base(mlflow="http://127.0.0.1:5000"), "ml.yaml")
    code = f"""
import json, sys
sys.modules["mlflow"] = sys.modules["tensorboardX"] = None  # not installed
from hpsearch.search.cli import main
from hpsearch.search.experiment.schema import load_experiment
from hpsearch.search.driver.tune_setup import run_config
codes = [main(["validate", p]) for p in ({str(plain)!r}, {str(tb)!r}, {str(ml)!r})]
config = run_config(load_experiment({str(plain)!r}), "r", {str(tmp_path)!r})
print(json.dumps({{"codes": codes, "callbacks": [type(c).__name__ for c in config.callbacks]}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"codes": [0, 2, 2], "callbacks": ["JsonLoggerCallback"]}
    errors = [ln for ln in out.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 2 and all("pip install 'hpsearch[tracking]'" in ln for ln in errors)
    assert "tracking.tensorboard" in errors[0] and "tracking.mlflow" in errors[1]


# --- the callbacks, fed a trial's reports ------------------------------------------------------


class FakeTrial:
    """What Tune's logger callbacks read of a Trial (hashable, like Trial)."""

    def __init__(self, folder: Path, config: dict):
        self.local_path = str(folder)
        self.config = self.evaluated_params = config

    def init_local_path(self):
        Path(self.local_path).mkdir(parents=True, exist_ok=True)

    def __str__(self):
        return "trial_fake"


def epoch_report(epoch: int, **changes) -> dict:
    """A report as search.trainable makes it: lists, strings and bools beside the metrics."""
    report = {
        "epoch": epoch,
        "training_iteration": epoch + 10,  # (not the epoch after a restart from scratch)
        **{m: 0.1 * epoch + i / 100 for i, m in enumerate(SCALARS)},
        "step_loss": [1.0, 0.5],
        "confusion": [[3, 0], [1, 2]],
        "status": "running",
        "model_channels": "64",  # a string float() would read
        "model_batchnorm": True,
        "node_id": "abc",
        "config": {"lr": 0.1},
    }
    report.update(changes)
    return report


REPORTS = [
    epoch_report(1),
    epoch_report(2, val_loss=float("nan")),  # a non-finite metric is left out
    # a restarted trial reports its checkpoint's epoch again: logged once
    epoch_report(2, replayed=True, train_loss=9.0),
    # the epoch it diverged in: no train metrics, the stand-in score, a reason
    {
        **{k: v for k, v in epoch_report(3).items() if not k.startswith("train_")},
        "status": "diverged",
        "val_accuracy": 0.0,
        "reason": "non-finite training loss",
    },
    # an infeasible trial's only report
    {"val_accuracy": 0.0, "status": "infeasible", "reason": "conv3", "epoch": 0},
]
EXPECTED = {  # metric -> [(epoch, value)]
    m: [(e, 0.1 * e + i / 100) for e in (1, 2) if not (m == "val_loss" and e == 2)]
    for i, m in enumerate(SCALARS)
}


def test_epoch_scalars_keep_only_the_epochs_metrics():
    from hpsearch.search.integrations.tracking import EPOCH_SCALARS, epoch_scalars

    assert EPOCH_SCALARS == SCALARS
    assert epoch_scalars(REPORTS[0]) == {m: pytest.approx(v[0][1]) for m, v in EXPECTED.items()}
    assert "val_loss" not in epoch_scalars(REPORTS[1])
    assert epoch_scalars(REPORTS[3]) == {} and epoch_scalars(REPORTS[4]) == {}


def _feed(callback, trial):
    callback.log_trial_start(trial)
    for i, report in enumerate(REPORTS):
        callback.log_trial_result(i + 1, trial, report)
    callback.log_trial_end(trial, failed=False)


def test_the_tensorboard_callback_writes_the_epochs_scalars_stepped_by_epoch(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hpsearch.search.integrations.tracking import EpochTBXLoggerCallback

    trial = FakeTrial(tmp_path / "trial_fake", {"lr": 0.1, "arch": "FlatAlexNet"})
    _feed(EpochTBXLoggerCallback(), trial)
    events = EventAccumulator(trial.local_path)
    events.Reload()
    assert set(events.Tags()["scalars"]) == {f"ray/tune/{m}" for m in SCALARS}
    for m, expected in EXPECTED.items():
        got = [(e.step, e.value) for e in events.Scalars(f"ray/tune/{m}")]
        assert got == [(e, pytest.approx(v, rel=1e-6)) for e, v in expected], m


def test_the_mlflow_callback_logs_params_and_the_epochs_metrics(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from hpsearch.search.integrations.tracking import EpochMLflowLoggerCallback

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file:{tmp_path}/mlruns"
    callback = EpochMLflowLoggerCallback(tracking_uri=uri, experiment_name="fake")
    callback.setup()
    _feed(callback, FakeTrial(tmp_path / "trial_fake", {"lr": 0.1, "arch": "FlatAlexNet"}))
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("fake").experiment_id])
    assert run.info.run_name == "trial_fake" and run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.1", "arch": "FlatAlexNet"}
    assert set(run.data.metrics) == set(SCALARS)
    for m, expected in EXPECTED.items():
        history = sorted((x.step, x.value) for x in client.get_metric_history(run.info.run_id, m))
        assert history == [(e, pytest.approx(v)) for e, v in expected], m


# --- one tiny real search --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tracked_run(ray_session, tmp_path_factory, small_folder, cache_root):
    """A grid of 3 trials (2 epochs, 16 px): two train, one is infeasible (15x15 kernels on 16
    px), with both TensorBoard and an MLflow file store, run through the CLI."""
    tmp = tmp_path_factory.mktemp("tracked")
    uri = f"file:{tmp}/mlruns"
    doc = {
        "name": "tiny",
        "data": {"folder": str(small_folder), "image_size": 16, "cache": str(cache_root)},
        "search": {
            "algorithm": "grid",
            "num_trials": 3,
            "max_concurrent": 2,
            "space": {
                "arch": "FlatAlexNet",
                "width": 0.25,
                "mlp_layers": 0,
                "kernels": [[3, 3, 3], [1, 1, 1], [15, 15, 15]],
                "optimizer": {"sgd": {"lr": 0.05, "momentum": 0.9}},
            },
        },
        "scheduler": {"type": "none"},
        "train": {"epochs": 2, "batch_size": 16},
        "tracking": {"tensorboard": True, "mlflow": uri},
        "storage": str(tmp / "runs"),
    }
    path = write(tmp, doc)
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["run", str(path), "--name", "t1"])
    run_dir = tmp / "runs" / "t1"
    assert code == 0, err.getvalue()
    return {
        "run_dir": run_dir,
        "uri": uri,
        "out": out.getvalue(),
        "trials": pd.read_parquet(run_dir / "trials.parquet"),
        "epochs": pd.read_parquet(run_dir / "epochs.parquet"),
    }


@pytest.mark.slow
def test_tensorboard_shows_every_trials_epochs_side_by_side(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, trials, epochs = tracked_run["run_dir"], tracked_run["trials"], tracked_run["epochs"]
    assert sorted(trials["status"]) == ["completed", "completed", "infeasible"]
    # `tensorboard --logdir RUN_DIR`: one run per trial, each trial's events in its own folder
    folders = {p.parent for p in run_dir.rglob("events.out.tfevents.*")}
    assert folders == {run_dir / f"trial_{t}" for t in trials["trial_id"]}
    for trial_id in trials["trial_id"]:
        events = EventAccumulator(str(run_dir / f"trial_{trial_id}"))
        events.Reload()
        rows = epochs[epochs["trial_id"] == trial_id].sort_values("epoch")
        if rows.empty:  # the infeasible trial: no epoch, no scalars
            assert events.Tags()["scalars"] == []
            continue
        assert set(events.Tags()["scalars"]) == {f"ray/tune/{m}" for m in SCALARS}
        for m in SCALARS:
            got = [(e.step, e.value) for e in events.Scalars(f"ray/tune/{m}")]
            want = [
                (int(e), pytest.approx(v, rel=1e-5))
                for e, v in zip(rows["epoch"], rows[m], strict=True)
            ]
            assert got == want, (trial_id, m)


@pytest.mark.slow
def test_mlflow_has_one_run_per_trial_with_params_and_epoch_metrics(tracked_run, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # (to open the file store)
    run_dir, trials, epochs = tracked_run["run_dir"], tracked_run["trials"], tracked_run["epochs"]
    client = MlflowClient(tracking_uri=tracked_run["uri"])
    experiment = client.get_experiment_by_name("tiny")  # the study's name
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {f"trial_{t}" for t in trials["trial_id"]}
    for trial_id in trials["trial_id"]:
        run = runs[f"trial_{trial_id}"]
        assert run.info.status == "FINISHED"
        assert run.data.tags["hpsearch.part"] == "search"
        assert run.data.tags["hpsearch.experiment_dir"] == str(run_dir.resolve())
        config = json.loads((run_dir / f"trial_{trial_id}" / "params.json").read_text())
        assert run.data.params == {k: str(v) for k, v in config.items()}
        rows = epochs[epochs["trial_id"] == trial_id].sort_values("epoch")
        assert set(run.data.metrics) == (set(SCALARS) if len(rows) else set())
        for m in SCALARS if len(rows) else ():
            history = sorted(
                (h.step, h.value) for h in client.get_metric_history(run.info.run_id, m)
            )
            assert history == [
                (int(e), pytest.approx(v)) for e, v in zip(rows["epoch"], rows[m], strict=True)
            ]


@pytest.mark.slow
def test_the_console_shows_a_line_per_finished_trial_and_the_summary(tracked_run):
    out, trials = tracked_run["out"], tracked_run["trials"].set_index("trial_id")
    lines = re.findall(r"^trial (\w+)\s+(\w+)\s+val_accuracy (\S+)\s+(\d+) epochs?", out, re.M)
    assert sorted(t for t, *_ in lines) == sorted(trials.index)  # one line each
    for trial_id, status, best, n in lines:
        assert status == trials.loc[trial_id, "status"]
        assert int(n) == trials.loc[trial_id, "epochs"]
        want = trials.loc[trial_id, "best_val_accuracy"]
        assert best == ("-" if pd.isna(want) else f"{want:.4f}")
    best = trials["best_val_accuracy"].max()
    summary = f"3/3 trials finished, 0 running, best val_accuracy {best:.4f} (trial "
    assert re.search(rf"^\[\w+\] {re.escape(summary)}", out, re.M), out
    assert "== Status ==" not in out and "INFO" not in out  # not Ray's table, nor its logs
    assert "best 5 by best_val_accuracy" in out and f"results: {tracked_run['run_dir']}" in out
