"""k-fold error estimates: re-train a run's best configs on K stratified folds, as parallel Ray
Tune trials without early stopping, and write `folds.parquet` and the paired comparison of the
configs, `comparison.parquet` (analysis.stats).

The fold trials live in their own Tune experiment, `RUN_DIR/kfold/`, so `hpsearch kfold RUN_DIR`
run again after a crash or Ctrl-C continues it (finished folds are kept). RUN_DIR may be an
s3:// or gs:// run: its working copy is brought up to date first and the tables uploaded after.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ray import tune

from hpsearch.analysis.stats import compare_configs, config_costs
from hpsearch.data_pipeline.cache import cache_paths, part_names
from hpsearch.rundir import (
    COMPARISON_FILE,
    EPOCHS_FILE,
    FOLDS_FILE,
    KFOLD_DIR,
    KFOLD_SPEC,
    PARAMS_FILE,
    PREDICTIONS_FILE,
    PREDICTIONS_NPZ,
    TABLE_COLUMNS,
    TRIAL_PREFIX,
    TRIALS_FILE,
    TUNER_FILE,
    coerce,
    empty_frame,
    rank_trials,
    write_json,
    write_parquet,
)
from hpsearch.search.driver.export import read_results, trial_config, tune_statuses
from hpsearch.search.driver.gpus import check_local_gpu
from hpsearch.search.driver.resume import check_layout
from hpsearch.search.driver.session import ray_session
from hpsearch.search.driver.tune_setup import restore_tuner, run_config, trainable, trial_dirname
from hpsearch.search.driver.validate import check_tracking
from hpsearch.search.errors import ExperimentError
from hpsearch.search.experiment.schema import Experiment, load_run_experiment
from hpsearch.search.experiment.space import config_label
from hpsearch.search.storage.remote import is_uri, read_bytes
from hpsearch.search.storage.run_store import RunStore
from hpsearch.search.trial.inputs import (
    TrialData,
    TrialSettings,
    for_cluster,
    load_cache_and_data,
)
from hpsearch.search.trial.same_init import fold_init_file, fold_init_files
from hpsearch.search.trial.trainable import train_trial


def select_configs(
    run_dir: Path, exp: Experiment, *, top: int, trial_ids: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """source trial id -> its config: the named trials, or the `top` best by the run's metric
    (trials with the same config count once)."""
    path = run_dir / TRIALS_FILE
    if not path.exists():
        raise ExperimentError(
            f"{run_dir} has no {TRIALS_FILE}: finish the search first (hpsearch resume {run_dir})"
        )
    trials = pd.read_parquet(path)
    if trial_ids:
        unknown = sorted(set(trial_ids) - set(trials["trial_id"]))
        if unknown:
            raise ExperimentError(
                f"--trials: unknown trial id(s) {unknown}; the run has {sorted(trials['trial_id'])}"
            )
        chosen = list(trial_ids)
    else:
        finished = trials[trials["status"].isin(["completed", "stopped"])]
        ranked = rank_trials(finished, exp.search.metric, exp.search.mode)
        chosen, seen = [], set()
        for trial_id in ranked["trial_id"]:
            key = json.dumps(trial_config(run_dir, trial_id), sort_keys=True)
            if key not in seen:
                seen.add(key)
                chosen.append(trial_id)
            if len(chosen) == top:
                break
        if not chosen:
            raise ExperimentError(
                f"{run_dir}: no trial finished an epoch, so there is nothing to re-train"
            )
    return {trial_id: trial_config(run_dir, trial_id) for trial_id in chosen}


def collect_folds(
    kfold_dir: Path, *, epochs: int, configs: dict[str, dict[str, Any]]
) -> pd.DataFrame:
    """One row per finished fold trial and split (train = the training folds, evaluated after
    the last epoch; test = the held-out fold)."""
    rows = []
    state = tune_statuses(kfold_dir)
    for trial_dir in sorted(kfold_dir.glob(f"{TRIAL_PREFIX}*")):
        trial_id = trial_dir.name[len(TRIAL_PREFIX) :]
        if state and trial_id not in state:
            continue
        results = read_results(trial_dir)
        if (
            not results
            or results[-1].get("epoch") != epochs
            or "train_eval_accuracy" not in results[-1]
        ):
            continue
        last = results[-1]
        params = json.loads((trial_dir / PARAMS_FILE).read_text())
        source = configs.get(params["config_id"], {})
        for split, prefix in (("train", "train_eval_"), ("test", "val_")):
            rows.append(
                {
                    "config_id": params["config_id"],
                    "trial_id": trial_id,
                    "fold": int(params["fold"]),
                    "split": split,
                    "accuracy": last[f"{prefix}accuracy"],
                    "macro_precision": last[f"{prefix}macro_precision"],
                    "loss": last[f"{prefix}loss"],
                    "arch": source.get("arch"),
                    "label": config_label(source),
                    "epochs": last["epoch"],
                }
            )
    df = coerce(pd.DataFrame(rows, columns=TABLE_COLUMNS["folds"]), "folds")
    return df.sort_values(["config_id", "fold", "split"], ignore_index=True)


def collect_predictions(kfold_dir: Path, folds: pd.DataFrame, cache) -> pd.DataFrame:
    """The predictions table: the out-of-sample class probabilities that each finished fold
    trial (those in `folds`) kept of its held-out fold and of the test part, one row per image
    and trial, named by the cache's manifest."""
    paths = cache_paths(cache)
    parts = part_names(cache)
    frames = []
    trials = folds.drop_duplicates("trial_id")
    for trial_id, config_id, fold in trials[["trial_id", "config_id", "fold"]].itertuples(
        index=False
    ):
        try:
            with np.load(kfold_dir / f"{TRIAL_PREFIX}{trial_id}" / PREDICTIONS_NPZ) as npz:
                rows, probs = npz["rows"], npz["probs"]
        except (OSError, ValueError, KeyError):
            continue  # a k-fold run from before predictions were kept, or a cut file
        if len(rows) and (rows.max() >= len(paths) or probs.shape[1] != len(cache.classes)):
            continue  # predictions of another cache (the data changed since)
        labels = cache.labels[rows]
        frames.append(
            pd.DataFrame(
                {
                    "config_id": config_id,
                    "fold": int(fold),
                    "path": paths[rows],
                    "part": parts[rows],
                    "label": labels,
                    "class_name": np.asarray(cache.classes, dtype=object)[labels],
                    "probs": list(probs.astype(np.float32)),
                }
            )
        )
    if not frames:
        return empty_frame("predictions")
    out = coerce(pd.concat(frames, ignore_index=True), "predictions")
    return out.sort_values(["config_id", "fold", "path"], ignore_index=True)


def _fold_spec(
    kfold_dir: Path, *, k: int, epochs: int, trial_ids: list[str] | None
) -> dict[str, Any] | None:
    """The spec of an earlier k-fold run of this run directory, checked against the options."""
    spec_path = kfold_dir / KFOLD_SPEC
    if not spec_path.exists():
        return None
    spec = json.loads(spec_path.read_text())
    asked = {"k": k, "epochs": epochs}
    if {key: spec[key] for key in asked} != asked or (
        trial_ids and sorted(trial_ids) != sorted(spec["configs"])
    ):
        raise ExperimentError(
            f"{kfold_dir} holds a k-fold run with k={spec['k']}, epochs={spec['epochs']} of "
            f"{sorted(spec['configs'])}; continue it with the same options, or delete {kfold_dir} to start over"
        )
    return spec


def _new_tuner(exp: Experiment, run_dir: Path | str, fold_trainable, configs, k: int):

    return tune.Tuner(
        fold_trainable,
        param_space={
            "config_id": tune.grid_search(list(configs)),
            "fold": tune.grid_search(list(range(k))),
        },
        tune_config=tune.TuneConfig(
            reuse_actors=True,
            trial_name_creator=trial_dirname,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=run_config(exp, KFOLD_DIR, run_dir, reporter=False),
    )


def run_kfold(
    run_dir: str | Path,
    *,
    top: int = 3,
    k: int = 10,
    epochs: int | None = None,
    trial_ids: list[str] | None = None,
    address: str | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, bool]:
    """Re-train the chosen configs on k folds; write and return folds.parquet's table and
    whether it was interrupted."""
    if k < 2:
        raise ExperimentError(f"--k {k}: use at least 2 folds")
    store = RunStore.checkout(run_dir)  # an s3:// run: its working copy, up to date
    run_dir = store.path
    exp = load_run_experiment(run_dir)
    check_tracking(exp)
    check_local_gpu(exp.resources.gpus, address, "kfold")
    epochs = epochs or exp.train.epochs
    kfold_dir = run_dir / KFOLD_DIR
    spec = _fold_spec(kfold_dir, k=k, epochs=epochs, trial_ids=trial_ids)
    configs = (
        spec["configs"] if spec else select_configs(run_dir, exp, top=top, trial_ids=trial_ids)
    )
    # No search.budget here: the search's best trials are within it, and a trial named with
    # --trials is re-trained as asked.
    settings = TrialSettings.from_experiment(exp, epochs=epochs, budget=None)
    cache, data = load_cache_and_data(exp, folds=k, progress=progress)
    init_files = fold_init_files(exp, data, settings, kfold_dir, k)
    if store.remote is not None and init_files:
        # Trials on other nodes read their start weights from storage, not the driver's disk.
        names = {fold: f"{KFOLD_DIR}/{fold_init_file(fold)}" for fold in init_files}
        store.upload(names.values())
        init_files = {fold: str(store.tune_path(name)) for fold, name in names.items()}
    interrupted = False
    with ray_session(address, gpus=exp.resources.gpus):
        shared = for_cluster(data, address)
        fold_trainable = trainable(
            exp, fold_trial, data=shared, settings=settings, configs=configs, init_files=init_files
        )
        if (kfold_dir / TUNER_FILE).exists():
            check_layout(run_dir, store.shown)
            tuner = restore_tuner(store.tune_path(KFOLD_DIR), fold_trainable)
        else:
            kfold_dir.mkdir(parents=True, exist_ok=True)
            write_json(kfold_dir / KFOLD_SPEC, {"k": k, "epochs": epochs, "configs": configs})
            store.upload([f"{KFOLD_DIR}/{KFOLD_SPEC}"])
            tuner = _new_tuner(exp, store.tune_path(), fold_trainable, configs, k)
        try:
            tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
    store.download(KFOLD_DIR, results_only=True)
    folds = collect_folds(kfold_dir, epochs=epochs, configs=configs)
    write_parquet(folds, run_dir / FOLDS_FILE)
    write_comparison(run_dir, folds)
    predictions = collect_predictions(kfold_dir, folds, cache)
    write_parquet(predictions, run_dir / PREDICTIONS_FILE)
    store.upload([FOLDS_FILE, COMPARISON_FILE, PREDICTIONS_FILE])
    interrupted = interrupted or len(folds) < 2 * k * len(configs)
    return folds, interrupted


def write_comparison(run_dir: Path, folds: pd.DataFrame) -> pd.DataFrame | None:
    """Write comparison.parquet from `folds` and the cost of each config (the run's trials and
    epochs); without a held-out fold yet, remove an earlier one so it never outlives its folds."""

    path = run_dir / COMPARISON_FILE
    if not (folds["split"] == "test").any():
        path.unlink(missing_ok=True)
        return None
    trials_path, epochs_path = run_dir / TRIALS_FILE, run_dir / EPOCHS_FILE
    epochs = pd.read_parquet(epochs_path) if epochs_path.exists() else None
    costs = config_costs(pd.read_parquet(trials_path), epochs) if trials_path.exists() else None
    comparison = compare_configs(folds, costs=costs)
    write_parquet(comparison, path)
    return comparison


def fold_trial(
    config: dict[str, Any],
    *,
    data: TrialData,
    settings: TrialSettings,
    configs: dict[str, dict[str, Any]],
    init_files: dict[int, str] | None = None,
) -> None:
    """One (config, fold) pair: the source trial's config trained on the other folds (from the
    fold's own same-init start weights, with train.same_init)."""

    fold = int(config["fold"])
    if init_files:
        # lazy: torch takes ~2.5 s to import; only building or training a model needs it
        import torch

        path = init_files[fold]  # a file on the driver's disk, or in the run's object storage
        weights = io.BytesIO(read_bytes(path)) if is_uri(path) else path
        state = torch.load(weights, map_location="cpu", weights_only=True)
        data = dataclasses.replace(data, init_state=state)
    source = configs[config["config_id"]]
    train_trial({**source, "fold": fold}, data=data, settings=settings)
