"""k-fold error estimates: re-train a run's best configs on K stratified folds, as parallel Ray
Tune trials without early stopping, and write `folds.parquet`.

The fold trials live in their own Tune experiment, `RUN_DIR/kfold/`, so `hpsearch kfold RUN_DIR`
run again after a crash or Ctrl-C continues it (finished folds are kept).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from search.export import (
    TRIAL_PREFIX,
    _read_results,
    _tune_statuses,
    write_atomic,
    write_parquet_atomic,
)
from search.schema import Experiment, ExperimentError, load_experiment

KFOLD_DIR = "kfold"
FOLD_COLUMNS = [
    "config_id",
    "trial_id",
    "fold",
    "split",
    "accuracy",
    "macro_precision",
    "loss",
    "arch",
    "label",
    "epochs",
]


def select_configs(
    run_dir: Path, exp: Experiment, *, top: int, trial_ids: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """source trial id -> its config: the named trials, or the `top` best by the run's metric
    (trials with the same config count once)."""
    path = run_dir / "trials.parquet"
    if not path.exists():
        raise ExperimentError(
            f"{run_dir} has no trials.parquet: finish the search first (hpsearch resume {run_dir})"
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
        col = f"best_{exp.search.metric}"
        ranked = trials[trials["status"].isin(["completed", "stopped"]) & trials[col].notna()]
        ranked = ranked.sort_values(col, ascending=exp.search.mode == "min")
        chosen, seen = [], set()
        for trial_id in ranked["trial_id"]:
            config = _config(run_dir, trial_id)
            key = json.dumps(config, sort_keys=True)
            if key not in seen:
                seen.add(key)
                chosen.append(trial_id)
            if len(chosen) == top:
                break
        if not chosen:
            raise ExperimentError(
                f"{run_dir}: no trial finished an epoch, so there is nothing to re-train"
            )
    return {trial_id: _config(run_dir, trial_id) for trial_id in chosen}


def _config(run_dir: Path, trial_id: str) -> dict[str, Any]:
    return json.loads((run_dir / f"{TRIAL_PREFIX}{trial_id}" / "params.json").read_text())


def _label(config: dict[str, Any]) -> str:
    parts = [config.get("arch", "?")]
    if config.get("optimizer"):
        parts.append(f"{config['optimizer']} lr={config.get('lr', 0):.2g}")
    return " ".join(parts)


def collect_folds(
    kfold_dir: Path, *, epochs: int, configs: dict[str, dict[str, Any]]
) -> pd.DataFrame:
    """One row per finished fold trial and split (train = the training folds, evaluated after
    the last epoch; test = the held-out fold)."""
    rows = []
    state = _tune_statuses(kfold_dir)
    for trial_dir in sorted(kfold_dir.glob(f"{TRIAL_PREFIX}*")):
        trial_id = trial_dir.name[len(TRIAL_PREFIX) :]
        if state and trial_id not in state:
            continue
        results = _read_results(trial_dir)
        if (
            not results
            or results[-1].get("epoch") != epochs
            or "train_eval_accuracy" not in results[-1]
        ):
            continue
        last = results[-1]
        params = json.loads((trial_dir / "params.json").read_text())
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
                    "label": _label(source),
                    "epochs": last["epoch"],
                }
            )
    df = pd.DataFrame(rows, columns=FOLD_COLUMNS)
    return df.sort_values(["config_id", "fold", "split"], ignore_index=True)


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
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from search.tuner import load_data, start_ray, trial_dirname, trial_settings

    run_dir = Path(run_dir)
    if k < 2:
        raise ExperimentError(f"--k {k}: use at least 2 folds")
    if not (run_dir / "experiment.yaml").exists():
        raise ExperimentError(f"{run_dir} is not a run directory of hpsearch (no experiment.yaml)")
    exp = load_experiment(run_dir / "experiment.yaml")
    epochs = epochs or exp.train.epochs
    kfold_dir = run_dir / KFOLD_DIR
    spec_path = kfold_dir / "kfold.json"
    if spec_path.exists():
        spec = json.loads(spec_path.read_text())
        asked = {"k": k, "epochs": epochs}
        if {key: spec[key] for key in asked} != asked or (
            trial_ids and sorted(trial_ids) != sorted(spec["configs"])
        ):
            raise ExperimentError(
                f"{kfold_dir} holds a k-fold run with k={spec['k']}, epochs={spec['epochs']} of "
                f"{sorted(spec['configs'])}; continue it with the same options, or delete {kfold_dir} to start over"
            )
        configs = spec["configs"]
    else:
        configs = select_configs(run_dir, exp, top=top, trial_ids=trial_ids)
    exp_k = exp.model_copy(update={"data": exp.data.model_copy(update={"folds": k})})
    data = load_data(exp_k, progress=progress)
    if exp.train.same_init is not None:
        from search.warmup import warmup_weights

        data["init_state"] = warmup_weights(exp, data, run_dir)  # the run's shared start
    settings = {**trial_settings(exp), "epochs": epochs, "configs": configs}
    owns_ray = start_ray(address)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(fold_trial, data=data, settings=settings),
            {"cpu": exp.resources.cpus, "gpu": exp.resources.gpus},
        )
        if (kfold_dir / "tuner.pkl").exists():
            tuner = tune.Tuner.restore(
                str(kfold_dir.resolve()),
                trainable=trainable,
                resume_unfinished=True,
                resume_errored=True,
            )
        else:
            kfold_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(
                spec_path, json.dumps({"k": k, "epochs": epochs, "configs": configs}, indent=2)
            )
            tuner = tune.Tuner(
                trainable,
                param_space={
                    "config_id": tune.grid_search(list(configs)),
                    "fold": tune.grid_search(list(range(k))),
                },
                tune_config=tune.TuneConfig(
                    reuse_actors=True,
                    trial_name_creator=trial_dirname,
                    trial_dirname_creator=trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=KFOLD_DIR,
                    storage_path=str(run_dir.resolve()),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    failure_config=tune.FailureConfig(max_failures=exp.failure.max_retries),
                    callbacks=[JsonLoggerCallback()],
                    verbose=1,
                ),
            )
        interrupted = False
        try:
            tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
    finally:
        if owns_ray:
            import ray

            ray.shutdown()
    folds = collect_folds(kfold_dir, epochs=epochs, configs=configs)
    write_parquet_atomic(folds, run_dir / "folds.parquet")
    interrupted = interrupted or len(folds) < 2 * k * len(configs)
    return folds, interrupted


def fold_trial(config: dict[str, Any], *, data: dict[str, Any], settings: dict[str, Any]) -> None:
    """One (config, fold) pair: the source trial's config trained on the other folds."""
    from search.trainable import train_trial

    source = settings["configs"][config["config_id"]]
    train_trial({**source, "fold": config["fold"]}, data=data, settings=settings)
