"""The seed's studies: k-fold error estimates, same-init optimizer comparison, and a smoke run
of every experiment file with tiny overrides."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hpsearch.search.cli import main

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted(p.stem for p in (REPO / "hpsearch" / "experiments").glob("*.yaml"))
# Files that run as a whole search through the CLI and Ray (each has its own protocol: same-init,
# k-fold after the search, transfer learning, the demo's whole answer) ...
SEARCHED = ["demo", "full", "kfold", "optimizers", "transfer"]
# ... and files that differ from those only in their search space: their first feasible trial
# trains in-process, the path a Tune trial takes (the Tune side is the same as above).
SPACE_ONLY = [
    "architectures",
    "batchnorm",
    "dropout",
    "kernels",
    "mlp",
    "regularization",
    "strides",
]


def tiny(folder: Path, cache: Path, storage: Path) -> list[str]:
    """Overrides that make any experiment file run in seconds on the small test folder."""
    return [
        f"--data={folder}",
        f"--storage={storage}",
        "--set",
        f"data.cache={cache}",
        "--set",
        "data.image_size=16",
        "--set",
        "train.epochs=1",
        "--set",
        "train.batch_size=27",
        "--set",
        "resources.cpus=1",
        "--set",
        "resources.gpus=0",
        "--set",
        "scheduler.grace_period=1",
    ]


def test_fold_splits_partition_the_data(tiny_data):
    folds = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, -1])
    data = tiny_data(n=10)
    data = dataclasses.replace(data, folds=folds, train_idx=np.arange(9), val_idx=np.array([9]))
    seen = []
    for k in range(3):
        train, test = data.split(k)
        assert set(train).isdisjoint(test)
        assert set(train) | set(test) == set(range(9))  # unassigned rows take no part
        seen.extend(test)
    assert sorted(seen) == list(range(9))  # every sample is in exactly one test fold
    train, val = data.split(None)
    assert list(val) == [9]


@pytest.mark.slow  # over 3 s: make test runs it, make check does not
def test_kfold_and_its_warmups_never_train_on_what_they_evaluate(
    tmp_path, small_folder, cache_root, monkeypatch
):
    """Every image a fold's model and its same-init warm-up trained on lies outside the fold it
    is evaluated on, and no fold (nor its warm-up) touches the held-out test part."""
    import types

    import ray
    from ray import tune

    from hpsearch.search.driver.kfold import fold_trial
    from hpsearch.search.experiment.schema import load_experiment
    from hpsearch.search.trial import trainable, warmup
    from hpsearch.search.trial.inputs import TrialSettings, load_data, load_final_data
    from hpsearch.search.trial.same_init import fold_init_files

    exp = load_experiment(
        REPO / "hpsearch" / "experiments" / "optimizers.yaml",
        [
            f"data.folder={small_folder}",
            f"data.cache={cache_root}",
            "data.image_size=16",
            "train.epochs=1",
            "train.batch_size=27",
            "search.space.arch=FlatAlexNet",
            "search.space.width=0.125",
            "resources.gpus=0",  # the file's 0.5 would need CUDA: a trial never trains on the CPU
        ],
    )
    k = 3
    data = load_data(exp, folds=k, progress=False)
    test_part = set(load_final_data(exp, progress=False).val_idx.tolist())
    assert test_part and not test_part & set(np.flatnonzero(data.folds >= 0).tolist())
    seen: list[tuple[set, set]] = []

    class Recorded(trainable.Trainer):
        def __init__(self, *args, train_idx, val_idx, **kwargs):
            seen.append((set(np.asarray(train_idx).tolist()), set(np.asarray(val_idx).tolist())))
            super().__init__(*args, train_idx=train_idx, val_idx=val_idx, **kwargs)

    monkeypatch.setattr(trainable, "Trainer", Recorded)
    monkeypatch.setattr(warmup, "Trainer", Recorded)  # the same-init warm-ups train too
    monkeypatch.setattr(tune, "report", lambda result, checkpoint=None: None)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(
        ray, "get_runtime_context", lambda: types.SimpleNamespace(get_node_id=lambda: "n")
    )
    settings = TrialSettings.from_experiment(exp)
    files = fold_init_files(exp, data, settings, tmp_path / "kfold", k)
    warmups = list(seen)
    assert sorted(files) == list(range(k)) and len(warmups) == k
    config = {"arch": "FlatAlexNet", "width": 0.125, "optimizer": "adam", "lr": 0.001}
    for fold in range(k):
        fold_trial(
            {"config_id": "a", "fold": fold},
            data=data,
            settings=settings,
            configs={"a": config},
            init_files=files,
        )
    trained = seen[k:]
    assert len(trained) == k
    for fold, ((warm_train, _), (train, evaluated)) in enumerate(
        zip(warmups, trained, strict=True)
    ):
        assert evaluated == set(np.flatnonzero(data.folds == fold).tolist())
        assert not warm_train & evaluated and not train & evaluated
        assert not (warm_train | train | evaluated) & test_part
    # the folds' warm-ups differ (each saw other images), and each is kept for a rerun
    states = [torch.load(files[f], weights_only=True) for f in range(k)]
    assert not all(torch.equal(states[0][n], states[1][n]) for n in states[0])
    before = (tmp_path / "kfold" / "init_weights-fold0.pt").stat().st_mtime_ns
    fold_init_files(exp, data, settings, tmp_path / "kfold", k)
    assert (tmp_path / "kfold" / "init_weights-fold0.pt").stat().st_mtime_ns == before


@pytest.mark.slow
def test_kfold_after_a_search_and_resumable(
    ray_session, tmp_path, small_folder, cache_root, capsys
):
    args = [
        "run",
        str(REPO / "hpsearch" / "experiments" / "architectures.yaml"),
        "--name",
        "arch",
        *tiny(small_folder, cache_root, tmp_path),
        "--set",
        "search.space.arch=[FlatAlexNet,NarrowAlexNet]",
        "--set",
        "search.num_trials=2",
        "--set",
        "search.space.width=0.125",
    ]
    assert main(args) == 0
    run_dir = tmp_path / "arch"
    assert main(["kfold", str(run_dir), "--top", "2", "--k", "3", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "whisker_low" in out and "macro_precision" in out
    folds = pd.read_parquet(run_dir / "folds.parquet")
    assert {"config_id", "trial_id", "fold", "split", "accuracy", "macro_precision", "loss"} <= set(
        folds.columns
    )
    assert len(folds) == 2 * 3 * 2
    assert (
        folds.groupby(["config_id", "split"])["fold"]
        .apply(sorted)
        .map(lambda f: f == [0, 1, 2])
        .all()
    )
    assert folds[["accuracy", "macro_precision"]].stack().between(0, 1).all()
    assert set(folds["arch"]) == {"FlatAlexNet", "NarrowAlexNet"}
    trials = json.loads((run_dir / "kfold" / "kfold.json").read_text())
    assert trials["k"] == 3 and len(trials["configs"]) == 2
    # each image's out-of-sample probabilities: train + validation from the model that held its
    # fold out, once per config; the test part from every fold's model
    preds = pd.read_parquet(run_dir / "predictions.parquet")
    from hpsearch.search.experiment.schema import load_run_experiment
    from hpsearch.search.trial.inputs import load_cache_and_data

    cache, _ = load_cache_and_data(load_run_experiment(run_dir), folds=3, progress=False)
    manifest = pd.read_parquet(cache.path / "manifest.parquet")
    manifest = manifest[manifest["row"] >= 0]
    parts = manifest.set_index("path")["split"].map({"train": "train", "val": "validation"})
    for _, own in preds.groupby("config_id"):
        held = own[own["part"] != "test"]
        assert held["path"].is_unique and set(held["path"]) == set(parts.dropna().index)
        assert (held["part"] == parts[held["path"]].to_numpy()).all()
        assert (held["fold"] == manifest.set_index("path")["fold"][held["path"]].to_numpy()).all()
        test = own[own["part"] == "test"]
        assert test.groupby("path")["fold"].apply(sorted).map(lambda f: f == [0, 1, 2]).all()
        assert set(test["path"]) == set(manifest.loc[manifest["split"] == "test", "path"])
    probs = np.stack(preds["probs"].to_numpy())
    assert probs.shape[1] == manifest["class_name"].nunique() and np.allclose(
        probs.sum(1), 1, atol=1e-4
    )
    # the audit reads them, and the cache: a table, the suggestion files, the commands
    assert main(["audit", str(run_dir)]) == 0
    out = capsys.readouterr().out
    audit = pd.read_parquet(run_dir / "audit.parquet")
    assert list(audit.columns) == [
        "path", "issue", "score", "given", "suggested", "duplicate_of", "part", "duplicate_part"
    ]  # fmt: skip
    assert f"findings in {run_dir}/audit.parquet" in out
    assert pd.read_csv(run_dir / "audit" / "relabel.csv").columns.tolist() == ["path", "class"]
    assert pd.read_csv(run_dir / "audit" / "exclude.csv").columns.tolist() == ["path"]

    # again: the finished k-fold run is kept, not re-trained
    before = folds.sort_values(["config_id", "fold", "split"]).reset_index(drop=True)
    assert main(["kfold", str(run_dir), "--top", "2", "--k", "3", "--epochs", "1"]) == 0
    after = (
        pd.read_parquet(run_dir / "folds.parquet")
        .sort_values(["config_id", "fold", "split"])
        .reset_index(drop=True)
    )
    pd.testing.assert_frame_equal(before, after)
    # other options on the same run directory are refused, saying how to start over
    assert main(["kfold", str(run_dir), "--k", "5"]) == 2
    assert "delete" in capsys.readouterr().err

    # the recommendation, trained on train + validation, evaluated once on the test part
    comparison = pd.read_parquet(run_dir / "comparison.parquet")
    assert set(comparison["config_id"]) == set(folds["config_id"])
    assert main(["final", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "Which CNN to train" in out and "evaluation 1" in out and "WARNING" not in out
    final = pd.read_parquet(run_dir / "final.parquet")
    assert len(final) == 1 and final["evaluation"].tolist() == [1]
    assert final["config_id"].iloc[0] in set(folds["config_id"])
    n_test = int(final["test_images"].iloc[0])
    per_class = pd.read_parquet(run_dir / "final_classes.parquet")
    assert per_class["support"].sum() == n_test and per_class["recall"].between(0, 1).all()
    assert pd.read_parquet(run_dir / "final_confusion.parquet")["count"].sum() == n_test
    saved = torch.load(run_dir / "final" / "model-1.pt", weights_only=True)
    assert set(saved) == {"config", "classes", "state_dict"}
    # a second use of the test part is allowed, and flagged
    other = sorted(set(folds["config_id"]) - {final["config_id"].iloc[0]})[0]
    assert main(["final", str(run_dir), "--trial", other]) == 0
    out = capsys.readouterr().out
    assert "already used 1 time" in out and "used 2 times" in out
    assert pd.read_parquet(run_dir / "final.parquet")["evaluation"].tolist() == [1, 2]
    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / "report" / "index.html").read_text()
    first = html.index("Which CNN to train")
    assert first < html.index("Top ") and "used 2 times" in html
    assert "<h2>Audit</h2>" in html
    assert main(["final", str(run_dir), "--trial", "nope"]) == 2
    assert "no such trial" in capsys.readouterr().err


def test_kfold_input_errors(tmp_path, capsys):
    assert main(["kfold", str(tmp_path), "--k", "3"]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["final", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    # a run made before the three-part split: its search selected on today's test part
    old = tmp_path / "old"
    old.mkdir()
    (old / "experiment.yaml").write_text("name: old\ndata:\n  test_fraction: 0.1\n")
    (old / "tuner.pkl").write_bytes(b"")
    for verb in (["kfold", str(old)], ["final", str(old)], ["resume", str(old)]):
        assert main(verb) == 2
        assert "before hpsearch split the images into train / validation / test" in (
            capsys.readouterr().err
        ), verb
    assert main(["kfold", str(tmp_path), "--k", "1"]) == 2
    assert "at least 2 folds" in capsys.readouterr().err
    # the audit before kfold (or after a kfold that kept no predictions) says what to run
    run = tmp_path / "run"
    run.mkdir()
    (run / "experiment.yaml").write_text("name: run\ndata:\n  val_fraction: 0.1\n")
    assert main(["audit", str(run)]) == 2
    assert f"run `hpsearch kfold {run}` first" in capsys.readouterr().err
    (run / "kfold").mkdir()
    (run / "kfold" / "kfold.json").write_text("{}")
    assert main(["audit", str(run)]) == 2
    assert "no out-of-sample predictions" in (err := capsys.readouterr().err) and "delete" in err


@pytest.mark.slow
def test_same_init_trials_start_from_identical_weights(
    ray_session, tmp_path, small_folder, cache_root, capsys
):
    args = [
        "run",
        str(REPO / "hpsearch" / "experiments" / "optimizers.yaml"),
        "--name",
        "opt",
        *tiny(small_folder, cache_root, tmp_path),
        "--set",
        "search.space.arch=FlatAlexNet",
        "--set",
        "search.space.width=0.125",
        "--set",
        "search.space.optimizer={sgd: {lr: 0.01}, adam: {lr: 0.001}}",
        "--set",
        "search.num_trials=2",
        "--set",
        "train.epochs=2",
    ]
    assert main(args) == 0
    run_dir = tmp_path / "opt"
    init = torch.load(run_dir / "init_weights.pt", weights_only=True)
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert sorted(trials["optimizer"]) == ["adam", "sgd"] and set(trials["status"]) == {"completed"}
    digests = set()
    for trial_id in trials["trial_id"]:
        first = json.loads(
            (run_dir / f"trial_{trial_id}" / "result.json").read_text().splitlines()[0]
        )
        digests.add(first["init_digest"])
    assert len(digests) == 1  # every trial started from the same weights ...
    import hashlib

    h = hashlib.sha1()
    for name, tensor in sorted(init.items()):
        h.update(name.encode())
        h.update(tensor.contiguous().numpy().tobytes())
    assert digests == {h.hexdigest()}  # ... the warm-up's
    losses = pd.read_parquet(run_dir / "steps.parquet").groupby("trial_id")["loss"]
    first_losses = losses.first()
    assert first_losses.nunique() == 1  # the same start and the same first batch ...
    assert losses.apply(list).map(tuple).nunique() == 2  # ... and then only the optimizer differs

    # no k-fold here: `final` needs a named trial, and warms up again on train + validation
    assert main(["final", str(run_dir)]) == 2
    assert "hpsearch kfold" in capsys.readouterr().err
    assert main(["final", str(run_dir), "--trial", trials["trial_id"].iloc[0]]) == 0
    assert (run_dir / "final" / "init_weights.pt").exists()
    final_init = torch.load(run_dir / "final" / "init_weights.pt", weights_only=True)
    assert not all(torch.equal(final_init[n], init[n]) for n in init)


def test_same_init_requires_a_fixed_architecture(capsys):
    path = REPO / "hpsearch" / "experiments" / "optimizers.yaml"
    assert main(["validate", str(path), "--set", "search.space.arch=[AlexNet,FlatAlexNet]"]) == 2
    assert "train.same_init needs a fixed architecture" in capsys.readouterr().err


def test_every_experiment_file_is_run_by_a_test():
    assert sorted(SEARCHED + SPACE_ONLY) == EXPERIMENTS


@pytest.mark.parametrize("name", SPACE_ONLY)
def test_the_first_feasible_trial_of_each_study_trains(
    tmp_path, small_folder, cache_root, name, monkeypatch, capsys
):
    """The file validates, its space proposes (Optuna, as the search would), and the first
    feasible configuration trains an epoch in the trainable with tune's calls recorded."""
    import types

    import optuna
    import ray
    from ray import tune

    from hpsearch.models import InfeasibleArchitecture
    from hpsearch.search.experiment.schema import load_experiment
    from hpsearch.search.experiment.space import build_space, grid_points, model_config
    from hpsearch.search.trial.inputs import TrialSettings, load_data
    from hpsearch.search.trial.trainable import train_trial

    path = REPO / "hpsearch" / "experiments" / f"{name}.yaml"
    overrides = [
        f"data.folder={small_folder}",
        f"data.cache={cache_root}",
        "data.image_size=16",
        "train.epochs=1",
        "train.batch_size=27",
        "resources.cpus=1",
        "resources.gpus=0",
        "scheduler.grace_period=1",
    ]
    if name == "mlp":  # the seed's widths up to 4096: a slow epoch that proves nothing more
        overrides.append("search.space.mlp_width={low: 16, high: 64, log: true}")
    assert main(["validate", str(path), *(f"--set={o}" for o in overrides)]) == 0, (
        capsys.readouterr().err
    )
    exp = load_experiment(path, overrides)
    grid = exp.search.algorithm == "grid"
    sampler = (
        optuna.samplers.GridSampler(grid_points(exp.search.space), seed=0)
        if grid
        else optuna.samplers.RandomSampler(seed=0)
    )
    study = optuna.create_study(sampler=sampler)
    data = load_data(exp, progress=False)
    for _ in range(20):
        config = build_space(exp.search.space, grid=grid)(study.ask())
        try:
            model_config(config, image_size=16, num_classes=data.num_classes)
            break
        except InfeasibleArchitecture:
            continue
    else:
        pytest.fail(f"{name}: no feasible configuration at 16 px in 20 proposals")
    reports: list[dict] = []
    monkeypatch.setattr(tune, "report", lambda result, checkpoint=None: reports.append(result))
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(
        ray, "get_runtime_context", lambda: types.SimpleNamespace(get_node_id=lambda: "n")
    )
    train_trial(config, data=data, settings=TrialSettings.from_experiment(exp))
    assert [r["epoch"] for r in reports] == [1] and reports[0]["status"] == "running", reports
    assert 0 <= reports[0]["val_accuracy"] <= 1 and reports[0]["params"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", SEARCHED)
def test_every_experiment_runs_with_tiny_overrides(
    ray_session, tmp_path, small_folder, cache_root, name, capsys
):
    extra = ["--set", "search.num_trials=1"]
    if name in ("mlp", "full"):
        extra += ["--set", "search.space.mlp_width={low: 16, high: 64, log: true}"]
    if name == "full":
        extra += [
            "--set",
            "search.space.width={low: 0.1, high: 0.3}",
            "--set",
            "kfold.k=2",
            "--set",
            "kfold.top=1",
        ]
    if name == "kfold":
        extra += [
            "--set",
            "kfold.k=2",
            "--set",
            "kfold.top=1",
            "--set",
            "search.space.arch=[FlatAlexNet,NarrowAlexNet]",
        ]
    if name == "demo":
        extra = ["--set", "search.num_trials=1", "--set", "search.space.width=0.25"]
    if name == "transfer":  # no weights offline: a small backbone from random weights
        extra += [
            "--set",
            "search.space.arch=tv/mobilenet_v3_small",
            "--set",
            "search.space.pretrained=none",
            "--set",
            "data.image_size=32",
            "--set",
            "kfold=null",  # k-fold after a search is tested with kfold.yaml and full.yaml
        ]
    args = [
        "run",
        str(REPO / "hpsearch" / "experiments" / f"{name}.yaml"),
        "--name",
        name,
        *tiny(small_folder, cache_root, tmp_path),
        *extra,
    ]
    assert main(args) == 0, capsys.readouterr().err
    trials = pd.read_parquet(tmp_path / name / "trials.parquet")
    assert len(trials) == 1 and trials["status"].isin(["completed", "stopped"]).all(), trials[
        ["status", "error"]
    ]
    if name in ("kfold", "full"):
        assert (
            len(pd.read_parquet(tmp_path / name / "folds.parquet")) == 2 * 2
        )  # 1 config x 2 folds x train/test
    if name == "demo":  # the whole answer on the demo: k-fold, then the final evaluation
        run_dir = tmp_path / name
        assert main(["kfold", str(run_dir), "--top", "1", "--k", "2", "--epochs", "1"]) == 0
        assert main(["final", str(run_dir)]) == 0
        out = capsys.readouterr().out
        assert "Which CNN to train" in out and "test part" in out
        assert pd.read_parquet(run_dir / "final.parquet")["evaluation"].tolist() == [1]
