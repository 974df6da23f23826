"""Ray Tune's `OptunaSearch`, made safe to resume after a crash.

Ray Tune saves the searcher's state and the trials' state at different moments. A crash in
between can leave a trial in the experiment's snapshot whose suggestion the searcher's
snapshot never saw (ray-project/ray#19113); on `resume` that trial runs again and the stock
searcher raises `KeyError` on its first result, which ends the whole search. Here such a trial
runs to its end and is exported like any other; only TPE does not learn from it (a warning
says so), and its Optuna trial stays RUNNING in `optuna.db`.
"""

from __future__ import annotations

import logging
from typing import Any

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from hpsearch.search.trial.report import REPLAYED, RUNNING, user_attrs

logger = logging.getLogger(__name__)


class ResumableOptunaSearch(OptunaSearch):
    """`max_epochs`: a trial that ends before it (ASHA stopped it) is told to Optuna as PRUNED,
    not COMPLETE with its early score: the study keeps its per-epoch intermediate values, and
    TPE ranks it below the trials that went further instead of as if the score were final.

    Each Optuna trial carries hpsearch's facts as user attributes (`search.trial.report.user_attrs`:
    status, params, MACs, node, `run_dir`), updated while it runs and set to how it ended
    before Optuna is told, so optuna-dashboard's tables show them."""

    def __init__(
        self, *args: Any, max_epochs: int | None = None, run_dir: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._unknown_warned: set[str] = set()
        self._max_epochs = max_epochs
        self._run_dir = run_dir
        self._user_attrs: dict[str, dict[str, Any]] = {}  # running trials: the attributes set

    def _known(self, trial_id: str) -> bool:
        if trial_id in self._ot_trials or trial_id in self._completed_trials:
            return True
        if trial_id not in self._unknown_warned:
            self._unknown_warned.add(trial_id)
            logger.warning(
                "trial %s was restored, but the searcher's saved state predates it (a crash "
                "between Ray Tune's two snapshots): it runs to its end and is exported; TPE "
                "does not learn from it",
                trial_id,
            )
        return False

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        # Intermediate values by epoch, not by Tune's report count: a restarted trial reports
        # its checkpoint's epoch again (search.trial.checkpoints), which Optuna then ignores.
        if result.get(REPLAYED):
            return  # told to Optuna when it was first reported
        if self._known(trial_id):
            step = result.get("epoch", result.get("training_iteration"))
            super().on_trial_result(trial_id, {**result, "training_iteration": step})
            self._set_user_attrs(trial_id, result, ended=False)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if not self._known(trial_id):
            return
        if trial_id not in self._completed_trials:  # (a finished Optuna trial is read-only)
            self._set_user_attrs(trial_id, result, ended=True, error=error)
        if not self._stopped_early(result, error):
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        try:
            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        except Exception as exc:  # noqa: BLE001 - as the stock searcher: warn, go on
            logger.warning(exc)
        self._completed_trials.add(trial_id)

    def _set_user_attrs(
        self, trial_id: str, result: dict[str, Any] | None, *, ended: bool, error: bool = False
    ) -> None:
        # (getattr / setdefault: a searcher pickled before these fields existed, on resume)
        cache = self.__dict__.setdefault("_user_attrs", {})
        done = cache.pop(trial_id, {}) if ended else cache.setdefault(trial_id, {})
        attrs = user_attrs(
            trial_id,
            result or done,  # Tune ends an errored trial without its last result
            ended=ended,
            error=error,
            max_epochs=self._max_epochs,
            run_dir=getattr(self, "_run_dir", None),
        )
        try:
            for key, value in attrs.items():
                if done.get(key) != value:  # one write per change, not per report
                    self._ot_trials[trial_id].set_user_attr(key, value)
                    done[key] = value
        except Exception as exc:  # noqa: BLE001 - the attributes must never stop a search
            logger.warning("trial %s: Optuna user attributes not set: %s", trial_id, exc)

    def _stopped_early(self, result: dict[str, Any] | None, error: bool) -> bool:
        # Infeasible and diverged trials end early too, but with the worst score on purpose.
        return (
            not error
            and self._max_epochs is not None
            and bool(result)
            and result.get("status") == RUNNING
            and int(result.get("epoch", 0)) < self._max_epochs
        )
