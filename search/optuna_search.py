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

from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)


class ResumableOptunaSearch(OptunaSearch):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unknown_warned: set[str] = set()

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
        if self._known(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if self._known(trial_id):
            super().on_trial_complete(trial_id, result=result, error=error)
