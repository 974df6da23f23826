"""`search.budget`: its forms in the file, the rejection before any training (no model built,
the worst score, the reason) and `validate`'s check that some configuration of the space fits.
The search end to end is in test_run_e2e.py."""

from __future__ import annotations

import pickle
import warnings

import pytest
import yaml
from pydantic import ValidationError

from hpsearch import models
from hpsearch.search.cli import main
from hpsearch.search.experiment.budget import Budget, OverBudget, format_count, parse_count
from hpsearch.search.experiment.schema import Experiment, load_experiment
from hpsearch.search.experiment.space import check_budget, model_config
from hpsearch.search.trial.report import INFEASIBLE, worst_value

# At 16 px, width 0.25, no hidden layer, 3 classes (the test folder's): MACs per image.
SPACE = {
    "arch": ["AlexNet", "FlatAlexNet", "NarrowAlexNet"],
    "width": 0.25,
    "mlp_layers": 0,
    "optimizer": {"sgd": {"lr": 0.05}},
}


def _cost(arch: str, classes: int = 3) -> models.Cost:
    config = {"arch": arch, "width": 0.25, "mlp": ""}
    return models.cost(model_config(config, image_size=16, num_classes=classes))


@pytest.mark.parametrize(
    ("written", "count"),
    [
        (300_000_000, 300_000_000),
        (3.0e8, 300_000_000),
        ("300e6", 300_000_000),  # PyYAML reads 300e6 (no dot) as a string
        ("300M", 300_000_000),
        ("300 m", 300_000_000),
        ("1.5G", 1_500_000_000),
        ("750k", 750_000),
        ("1_000_000", 1_000_000),
    ],
)
def test_a_count_is_a_number_or_a_string_with_an_si_suffix(written, count):
    assert parse_count(written) == count
    doc = yaml.safe_load(f"name: t\nsearch: {{budget: {{macs: {written}}}}}")
    assert Experiment.model_validate(doc).search.budget.macs == count


@pytest.mark.parametrize("bad", [0, -5, 0.4, "300X", "M", "", True, None, [300], float("inf")])
def test_anything_else_is_refused_saying_what_to_write(bad):
    with pytest.raises(ValueError, match="not a positive count: write a number, e.g. 300000000"):
        parse_count(bad)


def test_the_section_needs_a_limit_and_knows_no_other_key(tmp_path):
    for budget, message in (
        ({}, "needs macs, params or both"),
        ({"flops": "1G"}, "unknown key"),
        ({"macs": "0"}, "not a positive count"),
    ):
        path = tmp_path / "e.yaml"
        path.write_text(yaml.safe_dump({"name": "t", "search": {"budget": budget}}))
        with pytest.raises(Exception, match=message) as err:
            load_experiment(path)
        assert "search.budget" in str(err.value)
    assert load_experiment(path, ["search.budget.macs=2M"]).search.budget.macs == 2_000_000
    with pytest.raises(ValidationError):
        Budget()


def test_the_resolved_experiment_keeps_the_budget_as_integers():
    exp = Experiment.model_validate({"name": "t", "search": {"budget": {"macs": "300M"}}})
    again = Experiment.model_validate(yaml.safe_load(exp.to_yaml()))
    assert again.search.budget == Budget(macs=300_000_000)
    assert yaml.safe_load(exp.to_yaml())["search"]["budget"] == {"macs": 300000000, "params": None}


def test_counts_read_in_three_digits_and_a_limit_rounds_up():
    assert format_count(412_345_678) == "412 M" and format_count(412_345_678, up=True) == "413 M"
    assert format_count(53_491) == "53.5 k" and format_count(950) == "950"
    assert format_count(999_999) == "1 M" and format_count(1.5e9) == "1.5 G"


def test_the_reason_names_each_limit_exceeded():
    cost = models.Cost(params=61_100_000, macs=412_000_000)
    with pytest.raises(OverBudget) as err:
        Budget(macs="300M", params="5M").check(cost)
    assert str(err.value) == (
        "over budget: 412 M MACs > search.budget.macs 300 M, "
        "61.1 M parameters > search.budget.params 5 M"
    )
    assert (err.value.params, err.value.macs) == (61_100_000, 412_000_000)
    again = pickle.loads(pickle.dumps(err.value))  # Ray ships it between processes
    assert str(again) == str(err.value) and again.macs == 412_000_000
    Budget(macs="412M").check(cost)  # at the limit: fits
    with pytest.raises(OverBudget, match=r"412,000,001 MACs > search.budget.macs 412,000,000"):
        Budget(macs=412_000_000).check(cost._replace(macs=412_000_001))  # digits tell them apart


def test_model_config_rejects_an_over_budget_configuration_by_arithmetic():
    config = {"arch": "AlexNet", "width": 0.25, "mlp": ""}
    macs = _cost("AlexNet").macs
    with pytest.raises(OverBudget, match="over budget: 2.59 M MACs > search.budget.macs 1 M"):
        model_config(config, image_size=16, num_classes=3, budget=Budget(macs="1M"))
    cfg = model_config(config, image_size=16, num_classes=3, budget=Budget(macs=macs))
    assert models.cost(cfg).macs == macs


def test_an_over_budget_trial_ends_before_any_model_is_built(monkeypatch, tiny_data, tiny_settings):
    """The trainable reports the infeasible path's result (worst score, status, reason,
    epoch 0) plus the cost, and builds no model and no Trainer."""
    from ray import tune

    from hpsearch.search.trial import trainable

    def refuse(*args, **kwargs):
        raise AssertionError("an over-budget trial built a model")

    monkeypatch.setattr(trainable, "Trainer", refuse)
    monkeypatch.setattr(models, "build", refuse)
    reports = []
    monkeypatch.setattr(tune, "report", lambda result, checkpoint=None: reports.append(result))
    config = {"arch": "AlexNet", "width": 0.25, "mlp": "", "optimizer": "sgd", "lr": 0.05}
    settings = tiny_settings(budget=Budget(macs="1M"))
    trainable.train_trial(config, data=tiny_data(), settings=settings)
    cost = _cost("AlexNet")
    assert reports == [
        {
            "val_accuracy": worst_value("max"),
            "status": INFEASIBLE,
            "reason": "over budget: 2.59 M MACs > search.budget.macs 1 M",
            "epoch": 0,
            "params": cost.params,
            "macs": cost.macs,
        }
    ]


def test_k_fold_trains_what_it_is_given_whatever_the_budget():
    from hpsearch.search.trial.inputs import TrialSettings

    exp = Experiment.model_validate({"name": "t", "search": {"budget": {"macs": "1M"}}})
    assert TrialSettings.from_experiment(exp).budget == Budget(macs=1_000_000)
    assert TrialSettings.from_experiment(exp, budget=None).budget is None


def _space(**changes):
    return Experiment.model_validate(
        {"name": "t", "search": {"space": {**SPACE, **changes}}}
    ).search.space


def test_check_budget_counts_what_fits_and_names_the_cheapest():
    fit = check_budget(_space(), Budget(macs="1M"), image_size=16, num_classes=3)
    assert (fit.fits, fit.total) == (1, 3)
    assert fit.cheapest == "arch=NarrowAlexNet, width=0.25, mlp=none"
    assert fit.cost == _cost("NarrowAlexNet")
    assert [r.split(":")[0] for r in fit.over] == [
        "arch=AlexNet, width=0.25, mlp=none",
        "arch=FlatAlexNet, width=0.25, mlp=none",
    ]
    # each MLP depth at the space's narrowest width: 0 or 2 hidden layers of 8 or 512 units
    deep = check_budget(
        _space(mlp_layers=[0, 2], mlp_width=[8, 512]), Budget(params="1M"), image_size=16,
        num_classes=3,
    )  # fmt: skip
    assert deep.total == 6 and deep.fits == 6


def _write(tmp_path, folder, budget, **space) -> str:
    doc = {
        "name": "b",
        "data": {"folder": str(folder), "image_size": 16},
        "search": {"budget": budget, "space": {**SPACE, **space}},
        "scheduler": {"type": "none"},
        "train": {"epochs": 1},
        "storage": str(tmp_path / "runs"),
    }
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_validate_refuses_a_budget_that_nothing_fits(tmp_path, small_folder, capsys):
    path = _write(tmp_path, small_folder, {"macs": "100k"})
    assert main(["validate", path]) == 2
    err = capsys.readouterr().err
    cheapest = _cost("NarrowAlexNet")
    assert "search.budget: no configuration of search.space fits macs <= 100 k" in err
    assert "(costs for 3 classes at data.image_size=16)" in err
    assert (
        f"the cheapest, arch=NarrowAlexNet, width=0.25, mlp=none, costs "
        f"{format_count(cheapest.macs)} MACs per image" in err
    )
    assert f"Raise search.budget.macs to at least {format_count(cheapest.macs, up=True)}" in err
    assert "add cheaper configurations to search.space" in err
    # run refuses it too, before any data is read or Ray started
    assert main(["run", path, "--name", "never"]) == 2
    assert "no configuration of search.space fits" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "never").exists()


def test_validate_says_how_much_fits_and_warns_when_little_does(tmp_path, small_folder, capsys):
    path = _write(tmp_path, small_folder, {"macs": "1M"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["validate", path]) == 0
    out = capsys.readouterr().out
    assert "budget: macs <= 1 M: 1 of 3 architecture combination(s) fit; the others end" in out
    assert not caught  # a third fits: no warning
    path = _write(
        tmp_path, small_folder, {"macs": "1M"}, arch=["AlexNet", "FlatAlexNet", "NarrowAlexNet"],
        width=[0.25, 0.5],
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["validate", path]) == 0
    (warning,) = [w for w in caught if "search.budget" in str(w.message)]
    assert "only 1 of 6 architecture combinations of search.space fit" in str(warning.message)
    assert "arch=AlexNet, width=0.25, mlp=none: over budget" in str(warning.message)
