"""The experiment's `tracking:` section as Ray Tune logger callbacks: TensorBoard event files in
each trial's folder (tensorboardX, through Tune's `TBXLoggerCallback`) and one MLflow run per
trial (Tune's `MLflowLoggerCallback`), both stepped by epoch.

A trial's reports also carry lists (`step_loss`, `confusion`), strings (`status`, `model_*`,
`node_id`) and, on an infeasible or diverged trial's last report, a stand-in score for the
sampler: the callbacks see only the per-epoch metrics of epochs.parquet, taken from the reports
that export writes as rows there. Neither library is imported unless the section asks for it.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.air.constants import TRAINING_ITERATION
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.logger import TBXLoggerCallback

from hpsearch.rundir import KFOLD_DIR, METRIC_COLUMNS
from hpsearch.search.errors import ExperimentError
from hpsearch.search.trial.report import REPLAYED

if TYPE_CHECKING:
    from hpsearch.search.experiment.schema import Experiment, TrackingSection

# The per-epoch scalars, as epochs.parquet names them.
EPOCH_SCALARS = (*METRIC_COLUMNS, "seconds", "images_per_s")
INSTALL_HINT = "pip install 'hpsearch[tracking]'"


def epoch_scalars(result: dict[str, Any]) -> dict[str, float]:
    """The finite per-epoch metrics of a report; empty for a report that is not an epoch's
    row of epochs.parquet (an infeasible trial's, or the epoch a trial diverged in)."""
    if "train_loss" not in result or not isinstance(result.get("epoch"), int):
        return {}
    out = {}
    for key in EPOCH_SCALARS:
        value = result.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


def _new_epoch_scalars(logged: dict, trial, result: dict[str, Any]) -> dict[str, float]:
    """epoch_scalars(result), but none for an epoch a restarted trial reports again from its
    checkpoint (`replayed`) when this logger has logged that epoch already."""
    scalars = epoch_scalars(result)
    epochs = logged.setdefault(trial, set())
    if scalars and result.get(REPLAYED) and result["epoch"] in epochs:
        return {}
    if scalars:
        epochs.add(result["epoch"])
    return scalars


class EpochTBXLoggerCallback(TBXLoggerCallback):
    """Tune's TensorBoard logger, given only the epoch's scalars, stepped by epoch (Tune's own
    step, training_iteration, counts reports: a restarted trial reports an epoch again)."""

    def __init__(self) -> None:
        super().__init__()
        self._epochs_logged: dict = {}  # trial -> the epochs it logged

    def log_trial_result(self, iteration: int, trial, result: dict[str, Any]) -> None:
        scalars = _new_epoch_scalars(self._epochs_logged, trial, result)
        if scalars:
            super().log_trial_result(
                iteration, trial, {**scalars, TRAINING_ITERATION: result["epoch"]}
            )


class EpochMLflowLoggerCallback(MLflowLoggerCallback):
    """Tune's MLflow logger (one run per trial, the trial's config as params), given only the
    epoch's metrics, stepped by epoch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epochs_logged: dict = {}  # trial -> the epochs it logged

    def log_trial_result(self, iteration: int, trial, result: dict[str, Any]) -> None:
        scalars = _new_epoch_scalars(self._epochs_logged, trial, result)
        if scalars:
            # The parent's own call, without the result's other keys (it logs every float it
            # can parse, and training_iteration as a metric of its own).
            run_id = self._trial_runs[trial]
            self.mlflow_util.log_metrics(
                run_id=run_id, metrics_to_log=scalars, step=result["epoch"]
            )


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


def check_tracking(tracking: TrackingSection) -> None:
    """Raise ExperimentError when the section asks for a library that is not installed, or
    for an MLflow file store that the installed MLflow refuses to open."""
    if tracking.tensorboard and _missing("tensorboardX"):
        raise ExperimentError(
            f"tracking.tensorboard: the TensorBoard writer (tensorboardX) is not installed: "
            f"{INSTALL_HINT}, or set tracking.tensorboard: false"
        )
    if tracking.mlflow is None:
        return
    if _missing("mlflow"):
        raise ExperimentError(
            f"tracking.mlflow: MLflow is not installed: {INSTALL_HINT}, or remove tracking.mlflow"
        )
    if tracking.mlflow.startswith("file:"):
        # optional extra: hpsearch[tracking]
        import mlflow
        from mlflow import environment_variables as env

        allowed = getattr(env, "MLFLOW_ALLOW_FILE_STORE", None)
        if allowed is not None and not allowed.get():
            raise ExperimentError(
                f"tracking.mlflow: {tracking.mlflow} is a file store, which MLflow "
                f"{mlflow.__version__} opens only with MLFLOW_ALLOW_FILE_STORE=true in the "
                "environment; set that, or use a database, e.g. "
                "sqlite:////abs/path/mlflow.db, or a tracking server, e.g. http://host:5000"
            )


def tracking_callbacks(exp: Experiment, name: str, storage: Path | str) -> list:
    """The Tune callbacks `exp.tracking` asks for, for the Tune experiment `name` in `storage`
    (the search's run directory, or its kfold/ folder: then name is "kfold")."""
    tracking = exp.tracking
    callbacks: list = []
    if tracking.tensorboard:
        # Tune gives each trial's writer the trial's own folder (synced into the run directory
        # like its result.json), so `tensorboard --logdir RUN_DIR` shows one run per trial.
        callbacks.append(EpochTBXLoggerCallback())
    if tracking.mlflow is not None:
        where = str(storage) if "://" in str(storage) else str(Path(storage).resolve())
        tags = {
            "hpsearch.experiment_dir": f"{where.rstrip('/')}/{name}",
            "hpsearch.part": "kfold" if name == KFOLD_DIR else "search",
        }
        callbacks.append(
            EpochMLflowLoggerCallback(
                tracking_uri=tracking.mlflow, experiment_name=exp.name, tags=tags
            )
        )
    return callbacks
