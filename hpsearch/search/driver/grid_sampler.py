"""The sampler of `search.algorithm: grid`: every distinct configuration of a discrete space once.

Optuna's `GridSampler` takes the product over every parameter the space can draw, conditional
ones included (`sgd_lr` x `adam_lr` x `optimizer`; `mlp_width_0` when `mlp_layers` is 0), so a
conditional space repeats identical configurations. Optuna's `BruteForceSampler` walks the
define-by-run tree instead: a parameter is enumerated only where it is drawn, so a grid of
`search.space.grid_size` trials runs each configuration once.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState


class DistinctGridSampler(optuna.samplers.BruteForceSampler):
    """`BruteForceSampler` without its `study.stop()` once the tree is exhausted: that works
    only inside `study.optimize`, and Ray's `OptunaSearch` tells the study itself, so it would
    raise RuntimeError (logged by Ray as a warning) as the last trials complete. Ray Tune's
    `num_samples` (`search.num_trials`, the grid's size by default) ends the search instead.
    Proposals prefer configurations that no running trial holds, so parallel trials do not
    duplicate one another while the grid has configurations left."""

    def __init__(self, seed: int | None = None) -> None:
        with warnings.catch_warnings():  # (BruteForceSampler is marked experimental)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(seed=seed)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        return None
