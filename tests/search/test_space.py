from __future__ import annotations

import contextlib

import optuna
import pytest

from hpsearch.models import InfeasibleArchitecture, count_params, get_config
from hpsearch.search.errors import ExperimentError
from hpsearch.search.experiment.dimensions import decode_layers, encode_layers
from hpsearch.search.experiment.schema import SearchSpace
from hpsearch.search.experiment.space import build_space, check_space, grid_points, model_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


def ask(space: SearchSpace, n: int = 30, seed: int = 0) -> list[dict]:
    """Sample configs the way OptunaSearch does (ask, run the define-by-run fn, tell)."""
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed)
    )
    define = build_space(space)
    out = []
    for _ in range(n):
        trial = study.ask()
        config = {**define(trial)}
        config.update(trial.params)
        study.tell(trial, 0.5)
        out.append(config)
    return out


def test_fixed_dimensions_are_not_sampled():
    space = SearchSpace(arch="NarrowAlexNet", dropout=0.25, optimizer="adam")
    study = optuna.create_study()
    trial = study.ask()
    config = build_space(space)(trial)
    assert config["arch"] == "NarrowAlexNet" and config["dropout"] == 0.25
    assert config["optimizer"] == "adam" and config["lr"] == pytest.approx(1e-3)
    assert "momentum" not in config
    assert trial.params == {}  # nothing for the sampler to learn


def test_choices_ranges_and_conditional_optimizer_parameters():
    space = SearchSpace(
        arch=["AlexNet", "FlatAlexNet"],
        mlp_layers={"low": 0, "high": 3},
        mlp_width={"low": 16, "high": 256, "log": True},
        dropout={"low": 0.0, "high": 0.5},
        batchnorm=[True, False],
        optimizer={
            "sgd": {
                "lr": {"low": 1e-3, "high": 1e-1, "log": True},
                "momentum": {"low": 0.5, "high": 0.99},
            },
            "adam": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}},
            "rmsprop": {},
        },
    )
    configs = ask(space, n=60)
    assert {c["arch"] for c in configs} == {"AlexNet", "FlatAlexNet"}
    assert {c["optimizer"] for c in configs} == {"sgd", "adam", "rmsprop"}
    for c in configs:
        assert 0.0 <= c["dropout"] <= 0.5
        widths = decode_layers(c["mlp"])
        assert len(widths) == c["mlp_layers"] and all(16 <= w <= 256 for w in widths)
        if c["optimizer"] == "sgd":
            assert (
                1e-3 <= c["lr"] <= 1e-1 and c["lr"] == c["sgd_lr"] and 0.5 <= c["momentum"] <= 0.99
            )
            assert "adam_lr" not in c
        elif c["optimizer"] == "adam":
            assert 1e-4 <= c["lr"] <= 1e-2 and "momentum" not in c and "sgd_lr" not in c
        else:
            assert c["lr"] == pytest.approx(1e-3) and "rmsprop_lr" not in c  # defaults, not sampled


def test_per_layer_choices_travel_as_strings():
    space = SearchSpace(arch="FlatAlexNet", strides=[[4, 1, 1], [2, 1, 1]], kernels=[11, 5, 3])
    configs = ask(space, n=20)
    assert {c["strides"] for c in configs} == {"4-1-1", "2-1-1"}
    assert {c["kernels"] for c in configs} == {"11-5-3"}
    assert (
        encode_layers([4, 1, 1]) == "4-1-1"
        and decode_layers("4-1-1") == (4, 1, 1)
        and decode_layers("") == ()
    )


def test_grid_points_enumerate_listed_values():
    space = SearchSpace(
        arch=["AlexNet", "FlatAlexNet"],
        dropout={"low": 0.0, "high": 0.5, "step": 0.25},
        optimizer={"sgd": {"lr": [0.01, 0.1]}},
    )
    points = grid_points(space)
    assert points["arch"] == ["AlexNet", "FlatAlexNet"]
    assert points["dropout"] == pytest.approx([0.0, 0.25, 0.5])
    assert points["sgd_lr"] == [0.01, 0.1]
    sampler = optuna.samplers.GridSampler(points, seed=0)
    study = optuna.create_study(sampler=sampler)
    define = build_space(space, grid=True)
    seen = set()
    for _ in range(12):
        trial = study.ask()
        c = define(trial)
        seen.add((c["arch"], round(c["dropout"], 2), c["lr"]))
        with contextlib.suppress(RuntimeError):  # GridSampler stops the study after the last point
            study.tell(trial, 0.0)
    assert len(seen) == 12  # every grid point once


def test_model_config_applies_every_dimension():
    config = {
        "arch": "FlatAlexNet",
        "width": 0.5,
        "mlp": "64-32",
        "dropout": 0.3,
        "batchnorm": True,
    }
    cfg = model_config(config, image_size=32, num_classes=10)
    base = get_config("FlatAlexNet", image_size=32, num_classes=10)
    assert [c.out_channels for c in cfg.convs] == [
        max(1, round(c.out_channels * 0.5)) for c in base.convs
    ]
    assert cfg.mlp == (64, 32) and cfg.dropout == 0.3 and cfg.batchnorm and cfg.num_classes == 10
    assert count_params(cfg) < count_params(base)
    no_mlp = model_config({"arch": "FlatAlexNet", "mlp": ""}, image_size=32, num_classes=10)
    assert no_mlp.mlp == ()
    preset = model_config({"arch": "AlexNet"}, image_size=227, num_classes=28)
    assert preset == get_config("AlexNet", num_classes=28)


def test_model_config_reports_infeasible_architectures():
    with pytest.raises(InfeasibleArchitecture, match="conv"):
        model_config({"arch": "FlatAlexNet", "kernels": "15-15-15"}, image_size=8, num_classes=3)


def test_check_space_lists_infeasible_combinations_and_fails_when_none_is_feasible():
    space = SearchSpace(arch="FlatAlexNet", kernels=[[3, 3, 3], [15, 15, 15]])
    reasons = check_space(space, image_size=16, num_classes=3)
    assert len(reasons) == 1 and "kernels=15-15-15" in reasons[0]
    with pytest.raises(
        ExperimentError, match="no architecture it can produce is feasible at data.image_size=8"
    ):
        check_space(
            SearchSpace(arch="FlatAlexNet", kernels=[15, 15, 15]), image_size=8, num_classes=3
        )
