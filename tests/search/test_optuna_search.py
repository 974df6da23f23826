"""Resuming after a crash between Ray Tune's trial snapshot and its searcher snapshot."""

from __future__ import annotations

import logging

import optuna
import pytest
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from hpsearch.search.driver.searcher import ResumableOptunaSearch


def _searcher(cls):
    return cls(
        space={"lr": tune.loguniform(1e-3, 1e-1)},
        metric="val_accuracy",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )


RESULT = {"val_accuracy": 0.5, "training_iteration": 1}


def test_stock_searcher_fails_on_a_trial_its_state_never_saw():
    """The bug being worked around: one unknown trial's result ends the whole search."""
    with pytest.raises(KeyError):
        _searcher(OptunaSearch).on_trial_result("restored", RESULT)


def test_unknown_trial_runs_on_with_a_warning(caplog):
    searcher = _searcher(ResumableOptunaSearch)
    with caplog.at_level(logging.WARNING, logger="search.optuna_search"):
        searcher.on_trial_result("restored", RESULT)
        searcher.on_trial_result("restored", {**RESULT, "training_iteration": 2})
        searcher.on_trial_complete("restored", result=RESULT)
    warnings = [r for r in caplog.records if "restored" in r.getMessage()]
    assert len(warnings) == 1 and "TPE does not learn from it" in warnings[0].getMessage()


def test_known_trials_still_reach_the_study():
    searcher = _searcher(ResumableOptunaSearch)
    config = searcher.suggest("a")
    assert 1e-3 <= config["lr"] <= 1e-1
    searcher.on_trial_result("a", RESULT)
    searcher.on_trial_complete("a", result={**RESULT, "val_accuracy": 0.75})
    done = searcher._ot_study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert [t.value for t in done] == [0.75]


def test_trials_stopped_early_are_pruned_with_their_intermediate_values():
    searcher = ResumableOptunaSearch(
        space={"lr": tune.loguniform(1e-3, 1e-1)},
        metric="val_accuracy",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
        max_epochs=3,
    )
    for trial_id, epochs, status in [("full", 3, "running"), ("asha", 1, "running")]:
        searcher.suggest(trial_id)
        for e in range(1, epochs + 1):
            result = {
                "val_accuracy": 0.2 * e,
                "training_iteration": e,
                "epoch": e,
                "status": status,
            }
            searcher.on_trial_result(trial_id, result)
        searcher.on_trial_complete(trial_id, result=result)
    searcher.suggest("diverged")
    bad = {"val_accuracy": 0.0, "training_iteration": 1, "epoch": 1, "status": "diverged"}
    searcher.on_trial_result("diverged", bad)
    searcher.on_trial_complete("diverged", result=bad)
    trials = {t.number: t for t in searcher._ot_study.get_trials()}
    full, asha, diverged = trials[0], trials[1], trials[2]
    assert full.state == optuna.trial.TrialState.COMPLETE and full.value == pytest.approx(0.6)
    assert asha.state == optuna.trial.TrialState.PRUNED
    assert asha.intermediate_values == {1: pytest.approx(0.2)}
    # the worst score on purpose: TPE learns to avoid it
    assert diverged.state == optuna.trial.TrialState.COMPLETE and diverged.value == 0.0
