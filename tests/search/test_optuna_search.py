"""Resuming after a crash between Ray Tune's trial snapshot and its searcher snapshot."""

from __future__ import annotations

import logging

import optuna
import pytest
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from search.optuna_search import ResumableOptunaSearch


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
