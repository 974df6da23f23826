"""Load a run directory: the Parquet tables, the resolved experiment and the Optuna study.

Only the Parquet files are needed, so a run directory copied to a laptop (without Ray, torch
or the checkpoints) loads the same way as on the machine that ran the search.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hpsearch.analysis._common import import_optuna, top_trials
from hpsearch.rundir import (
    AUDIT_DIR,
    AUDIT_FILE,
    AUDIT_THUMBNAILS,
    EXPERIMENT_FILE,
    FOLDS_FILE,
    METRICS,
    OPTUNA_DB,
    PREDICTIONS_FILE,
    TRIALS_FILE,
    TUNE_STATE_GLOB,
    best_column,
    check_mode,
    empty_frame,
    metric_mode,
    runs_inside,
    table_file,
)

if TYPE_CHECKING:
    import optuna

# Tables a run may lack (empty frames with the fixed columns then); trials.parquet is required.
OPTIONAL_TABLES = ("epochs", "steps", "confusion")


@dataclass(repr=False)
class Run:
    """A run directory read into memory. `epochs`, `steps` and `confusion` are empty frames
    when their file is absent; `folds` is None until `hpsearch kfold` has written it, `audit`
    until `hpsearch audit` has. `predictions()` reads k-fold's out-of-sample probabilities."""

    path: Path
    experiment: dict[str, Any]
    trials: pd.DataFrame
    epochs: pd.DataFrame
    steps: pd.DataFrame
    confusion: pd.DataFrame
    folds: pd.DataFrame | None = None
    audit: pd.DataFrame | None = None  # audit.parquet, after `hpsearch audit`
    missing: list[str] = field(default_factory=list)  # table files that were not there

    @property
    def name(self) -> str:
        """The experiment's name (also the Optuna study's), else the directory's name."""
        return str(self.experiment.get("name") or self.path.name)

    @property
    def metric(self) -> str:
        return str((self.experiment.get("search") or {}).get("metric") or "val_accuracy")

    @property
    def mode(self) -> str:
        mode = (self.experiment.get("search") or {}).get("mode")
        return check_mode(mode) if mode else metric_mode(self.metric)

    def top_trials(self, k: int = 10) -> pd.DataFrame:
        """The `k` best trials by the run's metric (the best epoch of each trial)."""
        return top_trials(self.trials, metric=self.metric, mode=self.mode, k=k)

    @property
    def best_trial_id(self) -> str | None:
        col = best_column(self.metric)
        if self.trials.empty or col not in self.trials or self.trials[col].isna().all():
            return None
        return str(self.top_trials(1)["trial_id"].iloc[0])

    def study(self) -> optuna.Study:
        """The run's Optuna study (optuna.db), e.g. for `param_importances`."""
        optuna = import_optuna()
        db = self.path / OPTUNA_DB
        if not db.is_file():
            raise FileNotFoundError(
                f"{self.path} has no optuna.db: the Optuna study is written by `hpsearch run`; "
                "copy optuna.db along with the Parquet files to use it elsewhere"
            )
        storage = f"sqlite:///{db.resolve()}"
        names = optuna.get_all_study_names(storage=storage)
        if self.name in names:
            name = self.name
        elif len(names) == 1:
            name = names[0]
        else:
            raise ValueError(
                f"{db} holds no study named {self.name!r}; studies there: {', '.join(names)}"
            )
        return optuna.load_study(study_name=name, storage=storage)

    def predictions(self) -> pd.DataFrame | None:
        """predictions.parquet (k-fold's out-of-sample class probabilities), or None."""
        path = self.path / PREDICTIONS_FILE
        return pd.read_parquet(path) if path.is_file() else None

    def audit_thumbnails(self) -> dict[str, np.ndarray]:
        """The thumbnails `hpsearch audit` kept of its surest findings: path -> uint8
        [H, W, 3]; empty without them."""
        path = self.path / AUDIT_DIR / AUDIT_THUMBNAILS
        if not path.is_file():
            return {}
        with np.load(path) as npz:
            return dict(zip(npz["paths"].tolist(), npz["images"], strict=True))

    def __repr__(self) -> str:
        counts = self.trials["status"].value_counts() if "status" in self.trials else {}
        status = ", ".join(f"{v} {k}" for k, v in counts.items())
        folds = "no folds" if self.folds is None else f"{len(self.folds)} fold rows"
        return (
            f"Run({str(self.path)!r}: {len(self.trials)} trials ({status}), "
            f"metric {self.metric} ({self.mode}), {len(self.epochs)} epochs, "
            f"{len(self.steps)} steps, {folds})"
        )


def _not_a_run(path: Path) -> FileNotFoundError:
    if not path.exists():
        return FileNotFoundError(f"{path} does not exist; expected a run directory")
    if not path.is_dir():
        return FileNotFoundError(f"{path} is not a directory; expected a run directory")
    if any(path.glob(TUNE_STATE_GLOB)):
        return FileNotFoundError(
            f"{path} is a Ray Tune folder without trials.parquet: the tables are written at the "
            f"end of `hpsearch run`; write them with `hpsearch resume {path}`"
        )
    listed = runs_inside(path, TRIALS_FILE)
    if listed:
        return FileNotFoundError(
            f"{path} holds run directories, it is not one itself; pick one: {listed}"
        )
    return FileNotFoundError(
        f"{path} is not a run directory: expected trials.parquet (and epochs.parquet, "
        "steps.parquet, confusion.parquet, experiment.yaml) as written by `hpsearch run`"
    )


def load_run(path: str | Path) -> Run:
    """Read a run directory. Only trials.parquet is required; experiment.yaml is optional
    (without it the metric is val_accuracy, maximised)."""
    # lazy: yaml, only when the experiment file is read
    import yaml

    path = Path(path)
    if not (path / TRIALS_FILE).is_file():
        raise _not_a_run(path)
    experiment: dict[str, Any] = {}
    if (path / EXPERIMENT_FILE).is_file():
        loaded = yaml.safe_load((path / EXPERIMENT_FILE).read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path / EXPERIMENT_FILE} is not a mapping of experiment fields")
        experiment = loaded or {}
    metric = (experiment.get("search") or {}).get("metric")
    if metric is not None and metric not in METRICS:
        raise ValueError(
            f"{path / EXPERIMENT_FILE}: search.metric {metric!r} is not one of {', '.join(METRICS)}"
        )
    tables: dict[str, pd.DataFrame] = {}
    missing = []
    for name in OPTIONAL_TABLES:
        file = path / table_file(name)
        if file.is_file():
            tables[name] = pd.read_parquet(file)
        else:
            missing.append(file.name)
            tables[name] = empty_frame(name)
    folds_file, audit_file = path / FOLDS_FILE, path / AUDIT_FILE
    folds = pd.read_parquet(folds_file) if folds_file.is_file() else None
    return Run(
        path=path,
        experiment=experiment,
        trials=pd.read_parquet(path / TRIALS_FILE),
        folds=folds,
        audit=pd.read_parquet(audit_file) if audit_file.is_file() else None,
        missing=missing,
        **tables,
    )


def latest_run(storage: str | Path = "runs") -> Path:
    """The run directory under `storage` whose trials.parquet was written last."""
    storage = Path(storage)
    found = list(storage.glob(f"*/{TRIALS_FILE}"))
    if not found:
        raise FileNotFoundError(
            f"no run directory under {storage} (none has trials.parquet); "
            "run a search first (`make run`) or pass a run directory"
        )
    return max(found, key=lambda p: p.stat().st_mtime).parent
