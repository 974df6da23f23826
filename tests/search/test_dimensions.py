"""Every search dimension, tested from the table (as timm tests every model of list_models()):
accepted in YAML in each of its forms, sampled by the Optuna space, in the trial's config, in
trials.parquet, taking effect on the model / optimizer / batches, and rejected with its field
path when malformed. A dimension added to the table is tested here the day it is added."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from hpsearch.rundir import CONFIG_REPORT_COLUMNS
from hpsearch.search.driver.export import collect
from hpsearch.search.driver.tune_setup import shown_params
from hpsearch.search.errors import ExperimentError
from hpsearch.search.experiment.dimensions import (
    BOOL,
    DIMENSIONS,
    FLOAT,
    INT,
    LAYERS,
    OPTIMIZER,
    STR,
    Choices,
    Fixed,
    Range,
)
from hpsearch.search.experiment.schema import load_experiment
from hpsearch.search.experiment.space import build_space, model_config

optuna.logging.set_verbosity(optuna.logging.WARNING)
DIMS = list(DIMENSIONS.values())
IDS = [d.name for d in DIMS]


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def forms(dim) -> dict[str, object]:
    a, b = (_plain(v) for v in dim.examples)
    out = {"fixed": a, "choices": [a, b]}
    if dim.kind.ranges:
        out["range"] = {"low": min(a, b), "high": max(a, b)}
    return out


def doc_with(dim, value) -> dict:
    """An experiment document with `dim` set to `value` (and what it needs to be sampled)."""
    space: dict = {"arch": "FlatAlexNet"}
    if dim is OPTIMIZER:
        space["optimizer"] = value
    elif dim.per_optimizer is not None:
        space["optimizer"] = {opt: {dim.name: value} for opt in dim.per_optimizer}
    else:
        space[dim.name] = value
    if dim.width_of:
        space[dim.width_of] = 2
    return {
        "name": "t",
        "data": {"folder": "imgs", "image_size": 64},
        "search": {"num_trials": 2, "space": space},
        "train": {"epochs": 2},
    }


def load(tmp_path: Path, doc: dict):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_experiment(path)


def field_path(dim) -> str:
    if dim is OPTIMIZER:
        return "search.space.optimizer"
    if dim.per_optimizer is not None:
        return f"search.space.optimizer.{next(iter(dim.per_optimizer))}.{dim.name}"
    return f"search.space.{dim.name}"


def domain_of(exp, dim):
    space = exp.search.space
    if dim is OPTIMIZER:
        return Choices(tuple(space.optimizer))
    if dim.per_optimizer is not None:
        return getattr(next(iter(space.optimizer.values())), dim.name)
    return getattr(space, dim.name)


def sample(exp, n: int = 24) -> list[tuple[dict, dict]]:
    """(config, Optuna params) of n trials drawn the way OptunaSearch draws them."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    define = build_space(exp.search.space)
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((define(trial), dict(trial.params)))
        study.tell(trial, 0.5)
    return out


def test_the_reports_columns_are_the_dimensions_report_columns():
    """analysis reads runs without importing search: rundir holds the report's column list,
    and it is the dimension table's, in its order."""
    assert CONFIG_REPORT_COLUMNS == tuple(d.report for d in DIMENSIONS.values() if d.report)


def test_the_table_is_consistent():
    for dim in DIMS:
        assert len(dim.examples) == 2 and dim.examples[0] != dim.examples[1], dim.name
        for v in dim.examples:
            assert dim.parse(_plain(v)) == Fixed(v), dim.name
        if dim.widths:
            assert DIMENSIONS[dim.widths].width_of == dim.name
        assert dim.kind in (FLOAT, INT, BOOL, STR, LAYERS)
    keys = [d.key for d in DIMS if not d.width_of]
    assert len(keys) == len(set(keys)), "two dimensions share a trial-config key"


@pytest.mark.parametrize("dim", DIMS, ids=IDS)
def test_accepted_in_each_form_and_written_back_as_given(tmp_path, dim):
    for form, value in forms(dim).items():
        exp = load(tmp_path, doc_with(dim, value))
        domain = domain_of(exp, dim)
        expected = {"fixed": Fixed, "choices": Choices, "range": Range}[form]
        if dim is OPTIMIZER:  # written as a mapping of optimizers to their parameters
            assert domain.values() == (value if isinstance(value, list) else [value])
            continue
        assert isinstance(domain, expected), (form, domain)
        assert domain.to_data() == ({"log": False, **value} if form == "range" else value)
        again = tmp_path / "resolved.yaml"
        again.write_text(exp.to_yaml())
        assert load_experiment(again) == exp


@pytest.mark.parametrize("dim", DIMS, ids=IDS)
def test_sampled_into_the_config_and_the_trials_table(tmp_path, dim):
    exp = load(tmp_path, doc_with(dim, forms(dim)["choices"]))
    drawn = sample(exp)
    allowed = {dim.kind.categorical(v) for v in dim.examples}
    if dim.width_of:
        param = f"{dim.name}_0"
        seen = {p[param] for _, p in drawn}
        assert all(len(c[DIMENSIONS[dim.width_of].key].split("-")) == 2 for c, _ in drawn)
    elif dim.per_optimizer is not None:
        param = None  # sampled per optimizer, as sgd_lr, adam_lr, ...
        seen = {c[dim.key] for c, _ in drawn}
        assert all(f"{c['optimizer']}_{dim.name}" in p for c, p in drawn)
    elif dim.widths:
        param = dim.name
        seen = {p[param] for _, p in drawn}
        assert {len(c[dim.key].split("-")) if c[dim.key] else 0 for c, _ in drawn} == seen
    else:
        param = dim.name
        seen = {c[dim.key] for c, _ in drawn}
    assert seen == allowed, (dim.name, seen)
    if param is not None:
        assert all(param in p for _, p in drawn), param

    # the trials table has the config key as a column, with the value the trial ran with
    run = tmp_path / "run"
    config = drawn[0][0]
    d = run / "trial_t0"
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(config))
    (d / "result.json").write_text(json.dumps({"epoch": 1, "train_loss": 1.0}) + "\n")
    trials = collect(run, epochs=1, classes=["a", "b"])["trials"]
    key = DIMENSIONS[dim.width_of].key if dim.width_of else dim.key
    assert trials.loc[0, key] == config[key]


@pytest.mark.parametrize("dim", DIMS, ids=IDS)
def test_takes_effect_where_the_table_says(dim, tiny_data, tiny_settings):
    import numpy as np

    from hpsearch.search.trial.trainable import Trainer

    def config(v) -> dict:
        c = {"arch": "FlatAlexNet", "optimizer": "sgd", "mlp": "16"}
        if dim.backbone_only:  # presets ignore it: a small torchvision backbone
            c = {**c, "arch": "tv/mobilenet_v3_small", "lr": 0.01}
        if dim.width_of:
            return {**c, DIMENSIONS[dim.width_of].key: f"{v}-{v}"}
        if dim.widths:
            return {**c, dim.key: "-".join(["16"] * v)}
        return {**c, dim.key: dim.kind.categorical(v)}

    a, b = (config(v) for v in dim.examples)
    if dim.reaches == "model":
        ma, mb = (model_config(c, image_size=64, num_classes=3) for c in (a, b))
        assert ma != mb, f"{dim.name} does not change the model"
        return
    data = tiny_data(size=32)
    digests: list[str] = []
    for value, c in zip(dim.examples, (a, b), strict=True):
        cfg = model_config(c, image_size=32, num_classes=3)
        trainer = Trainer(
            cfg,
            c,
            data,
            tiny_settings(image_size=32),
            train_idx=np.arange(32),
            val_idx=np.arange(32, 48),
        )
        if dim.reaches == "optimizer":
            if dim is OPTIMIZER:
                assert type(trainer.optimizer).__name__.lower() == value
            elif dim.name == "backbone_lr_scale":
                backbone, head = trainer.optimizer.param_groups
                assert backbone["lr"] == pytest.approx(0.01 * value) and head["lr"] == 0.01
            else:
                assert trainer.optimizer.param_groups[0][dim.name] == value
        elif dim.reaches == "loss":
            assert trainer.l1 == value
        elif dim.reaches == "noise":  # the training seed: initial weights (and batch order)
            assert trainer.seed == value
            digests.append(trainer.weights_digest())
        else:
            assert trainer.train_batches.batch_size == value
    if dim.reaches == "noise":
        assert digests[0] != digests[1], f"{dim.name} does not change the initial weights"


@pytest.mark.parametrize("dim", DIMS, ids=IDS)
def test_malformed_values_are_rejected_with_the_field_path(tmp_path, dim):
    wrong_type = {FLOAT: "many", INT: 1.5, BOOL: "sometimes", STR: 7, LAYERS: "x"}[dim.kind]
    bad = [wrong_type, []]
    if dim.bounds is not None:
        beyond = dim.bounds.high + 1 if dim.bounds.high is not None else dim.bounds.low - 1
        bad.append(int(beyond) if dim.kind is INT else float(beyond))
    if dim.allowed is not None:
        bad.append("NoSuchName")
    if not dim.kind.ranges:
        bad.append({"low": 0, "high": 1})
    for value in bad:
        with pytest.raises(ExperimentError) as err:
            load(tmp_path, doc_with(dim, value))
        assert f"  {field_path(dim)}" in str(err.value), (value, str(err.value))


def test_the_console_shows_the_console_dimensions_that_every_trial_has(tmp_path):
    exp = load(tmp_path, doc_with(DIMENSIONS["dropout"], [0.0, 0.5]))
    shown = shown_params(exp)
    assert shown[:3] == ["arch", "width", "dropout"] and {"optimizer", "lr"} <= set(shown)
    assert "mlp" not in shown and "momentum" not in shown  # unset; adam has no momentum


def test_the_training_seed_repeats_a_trial_and_another_seed_does_not(tiny_data, tiny_settings):
    """search.space.seed: the same seed trains the same curve whatever train.seed says; another
    seed starts from other weights and draws other batches."""
    import numpy as np

    from hpsearch.search.trial.trainable import Trainer

    data = tiny_data(size=16)

    def curve(seed: int, train_seed: int = 0) -> list[float]:
        config = {"arch": "FlatAlexNet", "width": 0.125, "mlp": "16", "dropout": 0.5}
        config.update(optimizer="sgd", lr=0.05, seed=seed)
        cfg = model_config(config, image_size=16, num_classes=3)
        trainer = Trainer(
            cfg,
            config,
            data,
            tiny_settings(seed=train_seed),
            train_idx=np.arange(32),
            val_idx=np.arange(32, 48),
        )
        return [loss for epoch in (1, 2) for loss in trainer.train_epoch(epoch)["step_loss"]]

    assert curve(1) == curve(1, train_seed=7)
    assert curve(0) != curve(1)
