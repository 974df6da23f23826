"""train.same_init's hand-off: the trials' data with the shared start weights that one warm-up
trains (`warmup`), once per run directory (or per fold for k-fold) and read back afterwards."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from hpsearch.search.trial.inputs import TrialData, TrialSettings
from hpsearch.search.trial.warmup import warmup_weights

if TYPE_CHECKING:
    from hpsearch.search.experiment.schema import Experiment


def with_init_state(
    exp: Experiment, data: TrialData, settings: TrialSettings, run_dir: Path
) -> TrialData:
    """`data` with the run's shared start weights (train.same_init), trained once per run
    directory and read back from it afterwards; `data` itself without same_init."""
    if exp.train.same_init is None:
        return data
    state = warmup_weights(exp, data, settings, run_dir)
    return dataclasses.replace(data, init_state=state)


def fold_init_files(
    exp: Experiment, data: TrialData, settings: TrialSettings, kfold_dir: Path, k: int
) -> dict[int, str] | None:
    """With train.same_init, fold -> the file of that fold's start weights, each warmed up on
    the fold's training folds only (the search's shared start weights were trained on most of
    every fold's held-out images). Written once in `kfold_dir`, read back on a rerun."""
    if exp.train.same_init is None:
        return None
    kfold_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for fold in range(k):
        path = kfold_dir / fold_init_file(fold)
        warmup_weights(exp, data, settings, kfold_dir, fold=fold, path=path)
        files[fold] = str(path.resolve())
    return files


def fold_init_file(fold: int) -> str:
    return f"init_weights-fold{fold}.pt"
