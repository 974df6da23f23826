from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hpsearch.search.cli import main
from hpsearch.search.errors import ExperimentError
from hpsearch.search.experiment.dimensions import BOOL, FLOAT, INT, LAYERS, STR
from hpsearch.search.experiment.schema import apply_overrides, load_experiment

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def base() -> dict:
    return {
        "name": "t",
        "data": {"folder": "imgs", "image_size": 32},
        "search": {
            "num_trials": 2,
            "space": {"arch": ["FlatAlexNet"], "dropout": {"low": 0.0, "high": 0.5}},
        },
        "train": {"epochs": 2},
    }


def test_demo_file_validates():
    exp = load_experiment(REPO / "hpsearch" / "experiments" / "demo.yaml")
    assert exp.search.metric == "val_accuracy" and exp.search.mode == "max"
    assert exp.search.num_trials >= 12
    assert exp.scheduler.type == "asha"
    assert len(exp.search.space.arch.values()) >= 2 and len(exp.search.space.optimizer) >= 2


def test_defaults_and_mode_follow_the_metric(tmp_path):
    doc = base()
    doc["search"]["metric"] = "val_loss"
    exp = load_experiment(write(tmp_path, doc))
    assert exp.search.mode == "min"
    assert exp.search.algorithm == "tpe" and exp.train.precision == "auto"


@pytest.mark.parametrize(
    ("mutate", "field", "hint"),
    [
        (lambda d: d.update(colour="red"), "colour", "unknown key"),
        (lambda d: d["train"].update(epoch=3), "train.epoch", "unknown key"),
        (
            lambda d: d["search"]["space"].update(dropout={"low": 0.6, "high": 0.2}),
            "search.space.dropout",
            "below high",
        ),
        (
            lambda d: d["search"]["space"].update(dropout={"low": 0.0, "high": 1.5}),
            "search.space.dropout",
            "[0, 1)",
        ),
        (
            lambda d: d["search"]["space"].update(arch=["AlexNet", "VGG"]),
            "search.space.arch",
            "FlatAlexNet",
        ),
        (
            lambda d: d["search"]["space"].update(optimizer=["sgd", "lion"]),
            "search.space.optimizer",
            "rmsprop",
        ),
        (
            lambda d: d["search"]["space"].update(mlp_layers=[0, 7]),
            "search.space.mlp_layers",
            "between 0 and 4",
        ),
        (
            lambda d: d["search"]["space"].update(lr_scale={"low": 1, "high": 2}),
            "search.space.lr_scale",
            "unknown key",
        ),
        (lambda d: d["search"].update(algorithm="bayes"), "search.algorithm", "'tpe'"),
        (lambda d: d["search"].update(metric="val_f1"), "search.metric", "val_accuracy"),
        (lambda d: d["search"].update(metric="val_loss", mode="max"), "search", "'min'"),
        (
            lambda d: d["search"].update(num_trials=0),
            "search.num_trials",
            "greater than or equal to 1",
        ),
        (
            lambda d: d["resources"] if False else d.update(resources={"cpus": 0}),
            "resources.cpus",
            "greater than 0",
        ),
        (lambda d: d["train"].update(precision="fp16"), "train.precision", "'bf16'"),
        (
            lambda d: d.update(data={"test_fraction": 0.5, "val_fraction": 0.5}),
            "data",
            "leave no training images",
        ),
        (lambda d: d.update(data={"val_fraction": 0}), "data.val_fraction", "greater than 0"),
        (
            lambda d: d.update(scheduler={"brackets": 0}),
            "scheduler.brackets",
            "greater than or equal to 1",
        ),
        (lambda d: d["search"]["space"].update(strides=[4, 0]), "search.space.strides", ">= 1"),
        (
            lambda d: d.update(scheduler={"grace_period": 5}),
            "scheduler.grace_period",
            "exceeds train.epochs",
        ),
    ],
)
def test_invalid_files_name_the_field(tmp_path, mutate, field, hint):
    doc = base()
    mutate(doc)
    with pytest.raises(ExperimentError) as err:
        load_experiment(write(tmp_path, doc))
    text = str(err.value)
    assert f"  {field}" in text, text
    assert hint in text, text


def test_grid_rejects_continuous_ranges(tmp_path):
    doc = base()
    doc["search"]["algorithm"] = "grid"
    with pytest.raises(ExperimentError, match="search.space.dropout: a grid search needs"):
        load_experiment(write(tmp_path, doc))
    doc["search"]["space"]["dropout"] = {"low": 0.0, "high": 0.5, "step": 0.25}
    assert load_experiment(write(tmp_path, doc)).search.algorithm == "grid"


def test_overrides_apply_before_validation(tmp_path):
    path = write(tmp_path, base())
    exp = load_experiment(
        path,
        [
            "train.epochs=3",
            "search.space.arch=[AlexNet, NarrowAlexNet]",
            "data.merge={People: [Celebrities]}",
        ],
    )
    assert exp.train.epochs == 3
    assert exp.search.space.arch.to_data() == ["AlexNet", "NarrowAlexNet"]
    assert exp.data.merge == {"People": ["Celebrities"]}
    with pytest.raises(ExperimentError, match="train.epochs: Input should be a valid integer"):
        load_experiment(path, ["train.epochs=many"])
    with pytest.raises(ExperimentError, match="expected key.path=value"):
        apply_overrides({}, ["train.epochs"])
    with pytest.raises(ExperimentError, match="name is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.first=y"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ExperimentError, match="no such experiment file"):
        load_experiment(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ExperimentError, match="not valid YAML"):
        load_experiment(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ExperimentError, match="top level must be a mapping"):
        load_experiment(bad)


def test_resolved_experiment_round_trips(tmp_path):
    exp = load_experiment(write(tmp_path, base()))
    again = tmp_path / "resolved.yaml"
    again.write_text(exp.to_yaml())
    assert load_experiment(again) == exp


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        (0.3, FLOAT, 0.3),
        ([1, 2], INT, [1, 2]),
        ({"low": 1e-4, "high": 0.1, "log": True}, FLOAT, {"low": 1e-4, "high": 0.1, "log": True}),
        ([4, 1, 1], LAYERS, [4, 1, 1]),
        ([[4, 1], [2, 1]], LAYERS, [[4, 1], [2, 1]]),
        ([True, False], BOOL, [True, False]),
    ],
)
def test_dimension_forms(value, kind, expected):
    assert kind.parse(value).to_data() == expected


@pytest.mark.parametrize(
    ("value", "kind", "message"),
    [
        ({"low": 0, "high": 1, "log": True}, FLOAT, "log range needs low > 0"),
        ({"low": 1}, FLOAT, "needs both low and high"),
        ([], STR, "empty list"),
        (1.5, INT, "expected an integer"),
        ({"low": 1, "high": 2}, BOOL, "range is not allowed"),
        ("x", LAYERS, "one value per conv layer"),
    ],
)
def test_dimension_form_errors(value, kind, message):
    with pytest.raises(ValueError, match=message):
        kind.parse(value)


def test_validate_cli_exit_codes(tmp_path, capsys):
    path = write(tmp_path, base())
    assert main(["validate", str(path)]) == 0
    assert "ok" in capsys.readouterr().out
    doc = base()
    doc["search"]["space"]["arch"] = "Inception"
    assert main(["validate", str(write(tmp_path, doc))]) == 2
    assert "search.space.arch: unknown preset" in capsys.readouterr().err


def test_validate_cli_rejects_an_infeasible_only_space(tmp_path, capsys):
    doc = base()
    doc["data"]["image_size"] = 8
    doc["search"]["space"]["kernels"] = [[9, 9, 9]]
    assert main(["validate", str(write(tmp_path, doc))]) == 2
    err = capsys.readouterr().err
    assert "search.space: no architecture it can produce is feasible" in err
    assert "conv1" in err


def test_every_experiment_file_validates(capsys, tmp_path, monkeypatch):
    from hpsearch.models import weights_file
    from hpsearch.search.driver import gpus

    files = sorted((REPO / "hpsearch" / "experiments").glob("*.yaml"))
    assert files
    # The seed's files give trials half a GPU each: validated as on a machine with one.
    monkeypatch.setattr(gpus, "cuda_problem", lambda: None)
    # transfer.yaml's pretrained weights: missing on this offline machine, then present
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    transfer = REPO / "hpsearch" / "experiments" / "transfer.yaml"
    assert main(["validate", str(transfer)]) == 2
    err = capsys.readouterr().err
    assert "hpsearch weights fetch tv/" in err and str(tmp_path / "torch") in err
    for name in ("resnet18", "mobilenet_v3_large", "efficientnet_b0"):
        path = weights_file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")  # validation checks the file is there; loading is tested apart
    for path in files:
        assert main(["validate", str(path)]) == 0, capsys.readouterr().err


def test_brackets_make_asha_asynchronous_hyperband(tmp_path):
    from hpsearch.search.driver.tune_setup import scheduler

    doc = base()
    doc["scheduler"] = {"type": "asha", "brackets": 3}
    asha = scheduler(load_experiment(write(tmp_path, doc)))
    assert len(asha._brackets) == 3
    doc["scheduler"] = {"type": "asha"}
    assert len(scheduler(load_experiment(write(tmp_path, doc)))._brackets) == 1


@pytest.mark.parametrize("name", ["../outside", "a/b", ".hidden"])
def test_run_names_stay_inside_storage(tmp_path, name, capsys):
    """`hpsearch run --name ../x` wrote outside --storage; now it exits 2 naming --name."""
    storage = tmp_path / "runs"
    code = main(["run", str(write(tmp_path, base())), "--name", name, "--storage", str(storage)])
    assert code == 2
    assert "--name" in capsys.readouterr().err
    assert not (tmp_path / "outside").exists() and not storage.exists()
    doc = base()
    doc["name"] = name
    with pytest.raises(ExperimentError, match="name"):
        load_experiment(write(tmp_path, doc))


def test_run_directories_of_others_are_refused(tmp_path, capsys):
    """resume / kfold / final unpickle Tune's state from a run directory: one that every user
    may write to, or that another user owns, is refused (it must be trusted like code)."""
    import os

    run = tmp_path / "run"
    run.mkdir()
    doc = base()
    doc["data"] = {"val_fraction": 0.1}
    (run / "experiment.yaml").write_text(yaml.safe_dump(doc))
    (run / "tuner.pkl").write_bytes(b"")
    (run / "tuner.pkl").chmod(0o666)
    for verb in ("resume", "kfold", "final"):
        assert main([verb, str(run)]) == 2
        assert "writable by every user" in capsys.readouterr().err, verb
    (run / "tuner.pkl").chmod(0o644)
    if os.getuid() == 0:  # as root (CI), hand the folder to another user
        os.chown(run, 65534, 65534)
        assert main(["resume", str(run)]) == 2
        assert "belongs to another user" in capsys.readouterr().err
