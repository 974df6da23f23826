"""End to end through the CLI on a small generated folder: a real (tiny) search with Ray Tune."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from hpsearch.search.cli import main

pytestmark = pytest.mark.slow

TABLE_COLUMNS = {
    "trials": {
        "trial_id",
        "status",
        "arch",
        "optimizer",
        "lr",
        "params",
        "macs",
        "epochs",
        "error",
        "final_val_accuracy",
        "best_val_accuracy",
        "best_val_macro_precision",
        "final_train_loss",
    },
    "epochs": {
        "trial_id",
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "val_macro_precision",
        "train_macro_precision",
        "seconds",
        "images_per_s",
    },
    "steps": {"trial_id", "step", "epoch", "loss"},
    "confusion": {
        "trial_id",
        "epoch",
        "true_class",
        "pred_class",
        "true_label",
        "pred_label",
        "count",
    },
}


BASE = {
    "name": "tiny",
    "search": {
        "num_trials": 3,
        "max_concurrent": 2,
        "space": {
            "arch": ["FlatAlexNet", "NarrowAlexNet"],
            "width": 0.25,
            "mlp_layers": [0, 1],
            "mlp_width": [32],
            "optimizer": {"sgd": {"lr": {"low": 0.01, "high": 0.1, "log": True}}, "adam": {}},
        },
    },
    "scheduler": {"type": "none"},
    "train": {"epochs": 2, "batch_size": 16},
}


@pytest.fixture
def experiment(write_experiment):
    """experiment(tmp_path, folder, cache, **{"dotted.key": value}): BASE on `folder`."""

    def write(tmp: Path, folder: Path, cache: Path, **changes) -> Path:
        data = {"folder": str(folder), "image_size": 16, "cache": str(cache)}
        return write_experiment(BASE, tmp, data=data, storage=str(tmp / "runs"), **changes)

    return write


def test_run_writes_every_table(
    ray_session, tmp_path, small_folder, cache_root, capsys, experiment
):
    path = experiment(tmp_path, small_folder, cache_root)
    assert main(["run", str(path), "--name", "r1"]) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "runs" / "r1"
    assert f"results: {run_dir}" in out and "best 5 by best_val_accuracy" in out

    tables = {name: pd.read_parquet(run_dir / f"{name}.parquet") for name in TABLE_COLUMNS}
    for name, columns in TABLE_COLUMNS.items():
        assert columns <= set(tables[name].columns), (name, columns - set(tables[name].columns))
    trials, epochs, steps, confusion = (
        tables[n] for n in ("trials", "epochs", "steps", "confusion")
    )
    assert len(trials) == 3 and set(trials["status"]) == {"completed"}
    assert set(trials["arch"]) <= {"FlatAlexNet", "NarrowAlexNet"}
    assert (trials["epochs"] == 2).all() and (trials["params"] > 0).all()
    # what each trial ran on: fp32 channels-last on a CPU without AMX (the test machines)
    assert set(trials["device"]) == {"cpu"} and trials["channels_last"].all()
    assert len(epochs) == 6 and epochs["val_accuracy"].between(0, 1).all()
    # per-step losses: 48 train images (of 60: 6 validation, 6 test) / 16 = 3 steps per epoch,
    # numbered 1..6 per trial
    assert steps.groupby("trial_id")["step"].max().eq(6).all()
    # the confusion matrix of the last evaluation counts every validation image once
    assert confusion.groupby("trial_id")["count"].sum().eq(6).all()
    assert set(confusion["true_class"]) == {"class_0", "class_1", "class_2"}
    assert trials["best_val_accuracy"].max() >= 0.5  # the classes differ by colour: learnable

    resolved = yaml.safe_load((run_dir / "experiment.yaml").read_text())
    assert resolved["search"]["mode"] == "max" and resolved["train"]["epochs"] == 2
    versions = json.loads((run_dir / "versions.json").read_text())
    assert {"torch", "ray", "optuna"} <= set(versions)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    assert len(study.trials) == 3 and all(t.value is not None for t in study.trials)
    # no pickles of ours: checkpoints are torch state dicts loadable with weights_only=True
    import torch

    ckpts = list(run_dir.glob("trial_*/checkpoint_*/state.pt"))
    assert len(ckpts) == 3
    state = torch.load(ckpts[0], weights_only=True)
    assert state["epoch"] == 1 and "model" in state and "optimizer" in state

    # the same name again is refused, pointing at resume
    assert main(["run", str(path), "--name", "r1"]) == 2
    assert "hpsearch resume" in capsys.readouterr().err


def test_diverging_and_infeasible_trials_end_while_others_finish(
    ray_session, tmp_path, small_folder, cache_root, capsys, experiment
):
    path = experiment(
        tmp_path,
        small_folder,
        cache_root,
        **{
            "search.algorithm": "grid",
            "search.space": {
                "arch": "FlatAlexNet",
                "width": 0.25,
                "kernels": [[3, 3, 3], [15, 15, 15]],
                "optimizer": {"sgd": {"lr": [0.05, 1.0e12], "momentum": 0.9}},
            },
            "search.num_trials": 4,
        },
    )
    assert main(["run", str(path), "--name", "r2"]) == 0
    trials = pd.read_parquet(tmp_path / "runs" / "r2" / "trials.parquet").set_index("trial_id")
    by_status = trials.groupby("status").size().to_dict()
    assert by_status == {"completed": 1, "diverged": 1, "infeasible": 2}, trials[
        ["status", "kernels", "lr", "error"]
    ]
    assert (
        trials.loc[trials.status == "diverged", "error"]
        .str.contains("non-finite training loss")
        .all()
    )
    assert trials.loc[trials.status == "infeasible", "error"].str.contains("conv").all()
    assert (trials.loc[trials.status == "infeasible", "epochs"] == 0).all()


def test_over_budget_configurations_end_at_once_and_teach_tpe_the_worst_score(
    ray_session, tmp_path, small_folder, cache_root, capsys, experiment
):
    """search.budget.macs 1M over three presets at 16 px: AlexNet (2.6 M MACs) and FlatAlexNet
    (1.2 M) end as infeasible without training, NarrowAlexNet (0.7 M) trains; the front is it."""
    path = experiment(
        tmp_path,
        small_folder,
        cache_root,
        **{
            "search.algorithm": "grid",
            "search.budget": {"macs": "1M"},
            "search.space": {
                "arch": ["AlexNet", "FlatAlexNet", "NarrowAlexNet"],
                "width": 0.25,
                "mlp_layers": 0,
                "optimizer": {"sgd": {"lr": 0.05}},
            },
            "train.epochs": 1,
        },
    )
    assert main(["run", str(path), "--name", "budget"]) == 0, capsys.readouterr().err
    run_dir = tmp_path / "runs" / "budget"
    trials = pd.read_parquet(run_dir / "trials.parquet").set_index("arch")
    assert trials["status"].to_dict() == {
        "AlexNet": "infeasible", "FlatAlexNet": "infeasible", "NarrowAlexNet": "completed",
    }  # fmt: skip
    over = trials.loc[["AlexNet", "FlatAlexNet"]]
    assert over["error"].tolist() == [
        "over budget: 2.59 M MACs > search.budget.macs 1 M",
        "over budget: 1.18 M MACs > search.budget.macs 1 M",
    ]
    assert (over["macs"] > 1_000_000).all() and (over["epochs"] == 0).all()
    assert trials.loc["NarrowAlexNet", "macs"] <= 1_000_000
    # nothing trained: no step, epoch or checkpoint of theirs
    ids = set(over["trial_id"])
    for table in ("steps", "epochs"):
        assert not ids & set(pd.read_parquet(run_dir / f"{table}.parquet")["trial_id"])
    assert not [p for t in ids for p in run_dir.glob(f"trial_{t}/checkpoint_*")]
    assert trials["pareto"].to_dict() == {
        "AlexNet": False, "FlatAlexNet": False, "NarrowAlexNet": True,
    }  # fmt: skip
    # Optuna saw the worst score with the reason, as for an infeasible architecture
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    told = {t.params["arch"]: t for t in study.trials}
    for arch in ("AlexNet", "FlatAlexNet"):
        assert told[arch].state == optuna.trial.TrialState.COMPLETE and told[arch].value == 0.0
        assert told[arch].user_attrs["status"] == "infeasible"
        assert told[arch].user_attrs["error"].startswith("over budget:")
    assert told["NarrowAlexNet"].value > 0


def test_resume_rejects_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_run_reports_a_missing_data_folder(tmp_path, cache_root, capsys, experiment):
    path = experiment(tmp_path, tmp_path / "nope", cache_root)
    assert main(["run", str(path)]) == 2
    assert "data.folder" in capsys.readouterr().err


def test_same_config_and_seed_reproduce_the_same_trial(
    ray_session, tmp_path, small_folder, cache_root, capsys, experiment
):
    path = experiment(
        tmp_path,
        small_folder,
        cache_root,
        **{
            "search.algorithm": "random",
            "search.num_trials": 2,
            "search.space": {
                "arch": "FlatAlexNet",
                "width": 0.25,
                "dropout": 0.3,
                "optimizer": "adam",
            },
        },
    )
    assert main(["run", str(path), "--name", "twice"]) == 0
    epochs = pd.read_parquet(tmp_path / "runs" / "twice" / "epochs.parquet")
    a, b = (g.reset_index(drop=True) for _, g in epochs.groupby("trial_id"))
    metrics = ["train_loss", "train_accuracy", "val_loss", "val_accuracy"]
    pd.testing.assert_frame_equal(a[metrics], b[metrics])


def test_a_preset_and_a_torchvision_backbone_in_one_search(
    ray_session, tmp_path, small_folder, cache_root, capsys, experiment
):
    """A torchvision backbone (random weights) next to a preset: both trials land in every
    table and in the report, with their own cost."""
    path = experiment(
        tmp_path,
        small_folder,
        cache_root,
        **{
            "data.image_size": 32,
            "search.algorithm": "grid",
            "search.num_trials": 2,
            "search.space": {
                "arch": ["FlatAlexNet", "tv/mobilenet_v3_small"],
                "width": 0.25,
                "mlp_layers": 1,
                "mlp_width": 32,
                "freeze": "stages:1",
                "backbone_lr_scale": 0.1,
                "optimizer": {"sgd": {"lr": 0.05}},
            },
            "train.epochs": 1,
        },
    )
    assert main(["run", str(path), "--name", "tv"]) == 0, capsys.readouterr().err
    run_dir = tmp_path / "runs" / "tv"
    tables = {name: pd.read_parquet(run_dir / f"{name}.parquet") for name in TABLE_COLUMNS}
    trials = tables["trials"].set_index("arch")
    assert set(trials.index) == {"FlatAlexNet", "tv/mobilenet_v3_small"}
    assert set(trials["status"]) == {"completed"}, trials["error"]
    ids = set(trials["trial_id"])
    for name in ("epochs", "steps", "confusion"):
        assert set(tables[name]["trial_id"]) == ids, name
    tv = trials.loc["tv/mobilenet_v3_small"]
    assert (
        tv["params"] > 0 and tv["macs"] > 0 and tv["params"] != trials.loc["FlatAlexNet", "params"]
    )
    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / "report" / "index.html").read_text()
    assert "tv/mobilenet_v3_small" in html and "FlatAlexNet" in html


def test_a_search_in_which_every_trial_fails_exits_1_and_says_why(
    ray_session, tmp_path, small_folder, cache_root, capsys, experiment
):
    """Every trial raises (the backbone's weights file is no state dict): the search exits 1,
    prints the most common error and where the error files are (with -q too), and still
    writes the tables."""
    weights = tmp_path / "broken.pt"
    weights.write_bytes(b"not a state dict")
    path = experiment(
        tmp_path,
        small_folder,
        cache_root,
        **{
            "search.num_trials": 2,
            "search.space": {"arch": "tv/resnet18", "pretrained": str(weights)},
            "train.epochs": 1,
            "failure": {"max_retries": 0},
        },
    )
    assert main(["run", str(path), "--name", "failed", "-q"]) == 1
    captured = capsys.readouterr()
    run_dir = tmp_path / "runs" / "failed"
    assert "none of its 2 trial(s) finished an epoch" in captured.err
    assert "most common error (2 of 2 trials)" in captured.err
    assert f"{run_dir}/trial_" in captured.err and "error.txt" in captured.err
    assert f"results: {run_dir}" in captured.out
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert list(trials["status"]) == ["error", "error"]
    assert (trials["epochs"] == 0).all()
