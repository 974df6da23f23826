"""The grid (`search.algorithm: grid`): every distinct configuration of a discrete space once,
conditional parameters only where they are drawn, counted before a run; `search.space.seed`
repeats each configuration with other training seeds. Driven through Optuna's ask / tell without
training, then once through a real `hpsearch run` on a tiny folder."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import yaml

from hpsearch.search.cli import main
from hpsearch.search.driver.grid_sampler import DistinctGridSampler
from hpsearch.search.driver.validate import format_validation, grid_coverage
from hpsearch.search.errors import ExperimentError
from hpsearch.search.experiment.schema import SearchSpace, load_experiment
from hpsearch.search.experiment.space import build_space, grid_points, grid_size

optuna.logging.set_verbosity(optuna.logging.WARNING)


class _Path:
    """A stand-in for an Optuna trial that answers the define-by-run function's choices from a
    list of indices (0 past its end) and records how many options each choice had."""

    def __init__(self, picks: list[int]) -> None:
        self.picks, self.options = picks, []

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        i = len(self.options)
        self.options.append(len(choices))
        return choices[self.picks[i] if i < len(self.picks) else 0]


def grid_configs(space: SearchSpace) -> Iterator[dict[str, Any]]:
    """The oracle of `grid_size`: every distinct configuration of a discrete space once, as trial configs (what the grid's
    define-by-run function returns): the tree of its choices walked depth first, so conditional
    parameters appear only where they are drawn (an MLP width only for the layers a depth has,
    an optimizer's lr only with that optimizer). `grid_size` counts them."""
    grid_points(space)  # names a continuous range
    define = build_space(space, grid=True)
    picks: list[int] = []
    while True:
        path = _Path(picks)
        yield define(path)
        picks = picks + [0] * (len(path.options) - len(picks))
        # the next leaf: advance the deepest choice that has an option left, reset those below
        deepest = max((i for i, n in enumerate(path.options) if picks[i] + 1 < n), default=None)
        if deepest is None:
            return
        picks = picks[:deepest] + [picks[deepest] + 1]


REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "benchmarks" / "tables" / "record.yaml"

CONDITIONAL = {
    "arch": ["FlatAlexNet", "NarrowAlexNet"],
    "mlp_layers": [0, 1, 2],  # widths: 1 + 2 + 4 = 7 variants
    "mlp_width": [16, 32],
    "seed": [0, 1],
    "optimizer": {"sgd": {"lr": [0.01, 0.05], "momentum": [0.0, 0.9]}, "adam": {"lr": [1e-3]}},
}
SPACES = {
    "conditional": (CONDITIONAL, 2 * 7 * 2 * (4 + 1)),
    "stepped": ({"dropout": {"low": 0.0, "high": 0.5, "step": 0.25}, "optimizer": "sgd"}, 3),
    "fixed": ({"arch": "FlatAlexNet", "width": 0.5}, 1),
    "no hidden layer": ({"mlp_layers": 0, "mlp_width": [16, 32], "optimizer": "adam"}, 1),
    "no hidden layer, widths left out": ({"mlp_layers": 0, "optimizer": ["sgd", "adam"]}, 2),
}


def _key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def _doc(space: dict, **search) -> dict:
    return {
        "name": "g",
        "data": {"folder": "imgs", "image_size": 16},
        "search": {"algorithm": "grid", "space": space, **search},
        "scheduler": {"type": "none"},
        "train": {"epochs": 1},
    }


def _load(tmp_path: Path, doc: dict):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_experiment(path)


@pytest.mark.parametrize("name", SPACES)
def test_grid_configs_are_distinct_and_counted(name):
    raw, expected = SPACES[name]
    space = SearchSpace(**raw)
    configs = list(grid_configs(space))
    assert grid_size(space) == len(configs) == expected
    assert len({_key(c) for c in configs}) == expected


def test_a_continuous_range_has_no_grid():
    space = SearchSpace(dropout={"low": 0.0, "high": 0.5})
    for fn in (grid_size, lambda s: list(grid_configs(s))):
        with pytest.raises(ValueError, match="search.space.dropout: a grid search needs"):
            fn(space)


def test_optunas_product_grid_repeats_configurations_the_distinct_grid_does_not():
    """GridSampler's product over every parameter, conditional ones included, is larger than the
    space: its trials repeat configurations. DistinctGridSampler, asked as Ray's OptunaSearch
    asks it (two trials running at a time, told outside study.optimize), proposes every
    configuration once and never raises when the grid is spent."""
    space = SearchSpace(**CONDITIONAL)
    product = 1
    for values in grid_points(space).values():
        product *= len(values)
    assert product > grid_size(space)  # 2*3*2*2*2*2*2*2 = 384 points for 140 configurations

    study = optuna.create_study(direction="maximize", sampler=DistinctGridSampler(seed=0))
    define = build_space(space, grid=True)
    running, seen = [], []
    for _ in range(grid_size(space)):
        trial = study.ask()
        seen.append(_key(define(trial)))
        running.append(trial)
        if len(running) == 2:
            study.tell(running.pop(0), 0.5)
    for trial in running:
        study.tell(trial, 0.5)  # the grid's last: BruteForceSampler would stop() and raise here
    assert sorted(seen) == sorted(_key(c) for c in grid_configs(space))


def test_num_trials_defaults_to_the_grid_and_may_not_exceed_it(tmp_path, capsys):
    assert _load(tmp_path, _doc(CONDITIONAL)).search.num_trials == 140
    with pytest.raises(ExperimentError, match=r"exceeds the grid's 140 distinct configurations"):
        _load(tmp_path, _doc(CONDITIONAL, num_trials=141))

    part = _load(tmp_path, _doc(CONDITIONAL, num_trials=20))
    assert "covers only part of the grid: 20 of its 140" in grid_coverage(part)
    assert "grid: search.num_trials (20) covers only part" in format_validation(part, "f", [])
    whole = _load(tmp_path, _doc(CONDITIONAL, num_trials=140))
    assert grid_coverage(whole) == "the grid's 140 distinct configurations, each once"
    # the resolved file (written into the run directory) loads as the same experiment
    again = tmp_path / "resolved.yaml"
    again.write_text(whole.to_yaml())
    assert load_experiment(again) == whole

    assert main(["validate", str(RECIPE)]) == 0
    assert "grid: the grid's 288 distinct configurations, each once" in capsys.readouterr().out


def test_the_recipe_records_144_configurations_with_two_seeds():
    exp = load_experiment(RECIPE)
    space = exp.search.space
    assert exp.search.num_trials == grid_size(space) == 288
    assert grid_size(space.model_copy(update={"seed": None})) == 144
    assert exp.scheduler.type == "none" and exp.search.algorithm == "grid"
    assert (exp.data.image_size, exp.data.val_fraction, exp.train.epochs) == (16, 0.5, 9)


@pytest.mark.slow  # a real 12-trial grid, one epoch each (about 20 s)
def test_a_conditional_grid_with_two_seeds_runs_each_configuration_once(
    ray_session, tmp_path, small_folder, cache_root, write_experiment, reports
):
    space = {
        "arch": "FlatAlexNet",
        "width": 0.25,
        "mlp_layers": [0, 1],
        "mlp_width": [16, 32],
        "seed": [0, 1],
        "optimizer": {"sgd": {"lr": [0.05]}, "adam": {"lr": [0.001]}},
    }
    doc = _doc(space, max_concurrent=2)  # num_trials: the grid's 3 x 2 x 2 = 12
    doc["data"] = {"folder": str(small_folder), "image_size": 16, "cache": str(cache_root)}
    doc["train"] = {"epochs": 1, "batch_size": 16}
    doc["storage"] = str(tmp_path / "runs")
    path = write_experiment(doc, tmp_path)
    assert main(["run", str(path), "--name", "grid", "-q"]) == 0
    run_dir = tmp_path / "runs" / "grid"
    trials = pd.read_parquet(run_dir / "trials.parquet")
    keys = ["mlp", "seed", "optimizer", "lr"]
    assert len(trials) == 12 and set(trials["status"]) == {"completed"}
    assert not trials.duplicated(keys).any(), trials[keys]
    assert trials.groupby("seed").size().to_dict() == {0: 6, 1: 6}

    # the seed draws the initial weights: the same architecture and seed start alike whatever
    # the optimizer, another seed starts elsewhere
    digest = {
        row.trial_id: reports(run_dir / f"trial_{row.trial_id}" / "result.json")[0]["init_digest"]
        for row in trials.itertuples()
    }
    trials["init"] = trials["trial_id"].map(digest)
    by_arch = trials.groupby(["mlp", "seed"])["init"].nunique()
    assert (by_arch == 1).all(), by_arch
    assert trials.groupby("mlp")["init"].nunique().eq(2).all()
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert {"val_accuracy", "seconds", "time_total_s"} <= set(epochs.columns)
