"""Run and resume a search: data → Ray's object store → Ray Tune (OptunaSearch behind a
ConcurrencyLimiter, ASHA) → Parquet tables in the run directory.

The run directory `<storage>/<name>/` is Ray Tune's experiment folder; hpsearch adds
`experiment.yaml` (resolved), `versions.json`, `optuna.db` (the Optuna study, readable with
`optuna.load_study` or optuna-dashboard) and the Parquet tables.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from search.export import TRIAL_PREFIX, export_run, library_versions, write_atomic
from search.schema import Experiment, ExperimentError, load_experiment
from search.space import build_space, check_space, grid_points

# Only the JSON result logger: the per-step losses and confusion matrices are lists, which the
# CSV and TensorBoard loggers would only mangle; result.json keeps them intact for export.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# One checkpoint per trial and epoch is the design; Tune's warning about frequent snapshots is noise.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

SHOWN_METRICS = ["epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_precision"]
SHOWN_PARAMS = ["arch", "width", "mlp", "dropout", "batchnorm", "optimizer", "lr", "batch_size"]


def trial_dirname(trial: Any) -> str:
    return f"{TRIAL_PREFIX}{trial.trial_id}"


def load_data(exp: Experiment, *, progress: bool = True) -> dict[str, Any]:
    """Decode (or reuse) the cache and return what every trial needs, as plain numpy."""
    import numpy as np

    from data_pipeline import DatasetError, prepare

    if not exp.data.folder:
        raise ExperimentError(
            "data.folder is not set: name the image folder in the file or pass --data DIR"
        )
    if not Path(exp.data.folder).is_dir():
        raise ExperimentError(
            f"data.folder: {exp.data.folder!r} is not a folder (one sub-folder per class)"
        )
    try:
        cache, _summary = prepare(
            exp.data.folder,
            image_size=exp.data.image_size,
            cache_root=exp.data.cache,
            test_fraction=exp.data.test_fraction,
            folds=exp.data.folds,
            merge=exp.data.merge or None,
            workers=exp.data.workers,
            seed=exp.data.seed,
            progress=progress,
        )
    except DatasetError as e:
        raise ExperimentError(f"data.folder: {e}") from None
    return {
        "images": np.ascontiguousarray(cache.images),
        "labels": np.asarray(cache.labels, dtype=np.int64),
        "train_idx": np.asarray(cache.indices("train"), dtype=np.int64),
        "val_idx": np.asarray(cache.indices("test"), dtype=np.int64),
        "mean": tuple(float(m) for m in cache.mean),
        "std": tuple(float(s) for s in cache.std),
        "folds": np.asarray(cache.fold, dtype=np.int64),
        "classes": list(cache.classes),
    }


def check_storage(storage: str) -> None:
    """Run directories are plain files (Optuna's SQLite study, the Parquet export, Tune's
    folders read back with pathlib): refuse a storage URI, and inside a Ray job a relative
    path, which would land in the job's temporary copy of the working directory."""
    if "://" in storage:
        raise ExperimentError(
            f"storage: {storage!r} is a URI, but hpsearch reads and writes its run directories "
            "as local files. On a cluster, mount shared storage (NFS, EFS, Filestore) at the same "
            "path on every node and pass that path, e.g. --storage /mnt/shared/runs"
        )
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") and not Path(storage).is_absolute():
        raise ExperimentError(
            f"storage: {storage!r} is relative, and this run is a Ray job whose working "
            "directory is a temporary copy Ray deletes later. Pass an absolute path that every "
            "node mounts, e.g. --storage /mnt/shared/runs"
        )


def trial_settings(exp: Experiment) -> dict[str, Any]:
    return {
        "epochs": exp.train.epochs,
        "batch_size": exp.train.batch_size,
        "eval_batch_size": exp.train.eval_batch_size,
        "precision": exp.train.precision,
        "seed": exp.train.seed,
        "augment": exp.train.augment,
        "image_size": exp.data.image_size,
        "metric": exp.search.metric,
        "mode": exp.search.mode,
        "cpus": exp.resources.cpus,
        "gpus": exp.resources.gpus,
    }


def start_ray(address: str | None) -> bool:
    """Join `address`, or start a local instance on 127.0.0.1 with every local CPU/GPU and no
    dashboard. Returns True if this call started Ray (so it should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as e:
            raise ExperimentError(
                f"--address {address}: {e}. If the cluster uses token authentication (as "
                "cluster.yaml's does), set RAY_AUTH_MODE=token and put its token in "
                "~/.ray/auth_token"
            ) from None
    else:
        # Trial output is not forwarded: errors land in each trial's error.txt and in
        # trials.parquet; the progress table is what the console shows.
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    return True


def _trainable(exp: Experiment, data: dict[str, Any]):
    from ray import tune

    from search.trainable import train_trial

    resources = {"cpu": exp.resources.cpus, "gpu": exp.resources.gpus}
    return tune.with_resources(
        tune.with_parameters(train_trial, data=data, settings=trial_settings(exp)), resources
    )


def _searcher(exp: Experiment, run_dir: Path):
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from search.optuna_search import ResumableOptunaSearch

    s = exp.search
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if s.algorithm == "tpe":
            sampler = optuna.samplers.TPESampler(
                seed=s.seed,
                n_startup_trials=max(2, min(10, s.num_trials // 3)),
                multivariate=True,
                group=True,  # conditional optimizer parameters form their own groups
                constant_liar=True,  # parallel trials: don't propose the same point twice
            )
        elif s.algorithm == "random":
            sampler = optuna.samplers.RandomSampler(seed=s.seed)
        else:
            sampler = optuna.samplers.GridSampler(grid_points(s.space), seed=s.seed)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(run_dir / 'optuna.db').resolve()}")
    searcher = ResumableOptunaSearch(
        space=build_space(s.space, grid=s.algorithm == "grid"),
        metric=s.metric,
        mode=s.mode,
        sampler=sampler,
        study_name=exp.name,
        storage=storage,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=_max_concurrent(exp))


def _max_concurrent(exp: Experiment) -> int:
    if exp.search.max_concurrent:
        return exp.search.max_concurrent
    import ray

    total = ray.cluster_resources()
    fits = [int(total.get("CPU", 1) // exp.resources.cpus)]
    if exp.resources.gpus:
        fits.append(int(total.get("GPU", 0) // exp.resources.gpus))
    if min(fits) < 1:
        # An autoscaling cluster starts without workers: what fits now says nothing.
        print(
            "search.max_concurrent: no trial fits the cluster's resources yet (an autoscaling "
            "cluster adds workers later), so trials run one at a time; set "
            "search.max_concurrent to run more at once, e.g. --set search.max_concurrent=8"
        )
    return max(1, min(fits))


def _in_every_config(exp: Experiment, name: str) -> bool:
    space = exp.search.space
    if name in ("arch", "width", "optimizer", "lr"):
        return True
    if name == "mlp":
        return space.mlp_layers is not None
    return getattr(space, name, None) is not None


def _run_config(exp: Experiment, run_dir: Path):
    from ray import tune
    from ray.tune import CLIReporter
    from ray.tune.logger import JsonLoggerCallback

    reporter = CLIReporter(
        metric_columns=SHOWN_METRICS,
        parameter_columns=[p for p in SHOWN_PARAMS if _in_every_config(exp, p)],
        max_report_frequency=15,
        sort_by_metric=True,
    )
    return tune.RunConfig(
        name=run_dir.name,
        storage_path=str(run_dir.parent.resolve()),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=exp.failure.max_retries),
        progress_reporter=reporter,
        callbacks=[JsonLoggerCallback()],
        verbose=1,
    )


def _tuner(exp: Experiment, run_dir: Path, data: dict[str, Any]):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if exp.scheduler.type == "asha":
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=exp.train.epochs,
            grace_period=exp.scheduler.grace_period,
            reduction_factor=exp.scheduler.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        _trainable(exp, data),
        tune_config=tune.TuneConfig(
            search_alg=_searcher(exp, run_dir),
            scheduler=scheduler,
            metric=exp.search.metric,
            mode=exp.search.mode,
            num_samples=exp.search.num_trials,
            reuse_actors=True,
            trial_name_creator=trial_dirname,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=_run_config(exp, run_dir),
    )


def default_run_name(exp: Experiment) -> str:
    return f"{exp.name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def prepare_run(
    exp: Experiment, *, name: str | None = None, progress: bool = True
) -> tuple[Path, dict[str, Any]]:
    """Everything `run` checks and builds before Ray starts. Raises ExperimentError."""
    check_storage(exp.storage)
    run_dir = Path(exp.storage) / (name or default_run_name(exp))
    if run_dir.exists():
        raise ExperimentError(
            f"run directory {run_dir} already exists: continue it with `hpsearch resume {run_dir}` "
            "or choose another --name"
        )
    check_space(exp.search.space, image_size=exp.data.image_size, num_classes=2)
    data = load_data(exp, progress=progress)
    run_dir.mkdir(parents=True)
    write_atomic(run_dir / "experiment.yaml", exp.to_yaml())
    import json

    write_atomic(run_dir / "versions.json", json.dumps(library_versions(), indent=2))
    return run_dir, data


def _fit_and_export(tuner, exp: Experiment, run_dir: Path, data: dict[str, Any]):
    interrupted = False
    try:
        tuner.fit()
    except KeyboardInterrupt:
        interrupted = True
    tables = export_run(run_dir, epochs=exp.train.epochs, classes=data["classes"])
    if interrupted or (tables["trials"]["status"].isin(["incomplete", "pending"]).any()):
        interrupted = True
    return tables, interrupted


def _add_init_state(exp: Experiment, data: dict[str, Any], run_dir: Path) -> None:
    if exp.train.same_init is None:
        return
    from search.warmup import warmup_weights

    try:
        data["init_state"] = warmup_weights(exp, data, run_dir)
    except ValueError as e:
        raise ExperimentError(str(e)) from None


def _kfold_after_search(exp: Experiment, run_dir: Path, address: str | None) -> None:
    from search.kfold import run_kfold

    kf = exp.kfold
    print(f"\nk-fold: re-training the top {kf.top} config(s) on {kf.k} folds")
    run_kfold(run_dir, top=kf.top, k=kf.k, epochs=kf.epochs, address=address)


def run(
    exp: Experiment, *, name: str | None = None, address: str | None = None, progress: bool = True
) -> tuple[Path, dict[str, Any], bool]:
    """Run a whole search. Returns (run_dir, tables, interrupted)."""
    run_dir, data = prepare_run(exp, name=name, progress=progress)
    _add_init_state(exp, data, run_dir)
    try:
        owns_ray = start_ray(address)
    except ExperimentError:
        shutil.rmtree(run_dir)  # nothing ran: the same --name works again once Ray is reachable
        raise
    try:
        tables, interrupted = _fit_and_export(_tuner(exp, run_dir, data), exp, run_dir, data)
        if exp.kfold is not None and not interrupted:
            _kfold_after_search(exp, run_dir, address)
    finally:
        if owns_ray:
            import ray

            ray.shutdown()
    return run_dir, tables, interrupted


def resume(
    run_dir: str | Path, *, address: str | None = None, progress: bool = True
) -> tuple[Path, dict[str, Any], bool]:
    """Continue a stopped or crashed run: finished trials are kept, unfinished ones continue
    from their last checkpoint, and the search completes its trial budget."""

    run_dir = Path(run_dir)
    if not (run_dir / "experiment.yaml").exists() or not (run_dir / "tuner.pkl").exists():
        raise ExperimentError(
            f"{run_dir} is not a run directory of hpsearch (no experiment.yaml / tuner.pkl)"
        )
    exp = load_experiment(run_dir / "experiment.yaml")
    data = load_data(exp, progress=progress)
    _add_init_state(exp, data, run_dir)
    owns_ray = start_ray(address)
    try:
        tables, interrupted = _fit_and_export(_restored(run_dir, exp, data), exp, run_dir, data)
        if not interrupted and _lost_checkpoints(tables):
            # Tune deletes a trial's older checkpoint before its state snapshot points at the
            # newer one; a crash in between leaves the snapshot naming a deleted checkpoint.
            # Those trials cannot continue, so they start again from scratch.
            tables, interrupted = _fit_and_export(
                _restored(run_dir, exp, data, restart_errored=True), exp, run_dir, data
            )
        if exp.kfold is not None and not interrupted:
            _kfold_after_search(exp, run_dir, address)
    finally:
        if owns_ray:
            import ray

            ray.shutdown()
    return run_dir, tables, interrupted


def _restored(
    run_dir: Path, exp: Experiment, data: dict[str, Any], *, restart_errored: bool = False
):
    from ray import tune

    return tune.Tuner.restore(
        str(run_dir.resolve()),
        trainable=_trainable(exp, data),
        resume_unfinished=True,
        resume_errored=not restart_errored,
        restart_errored=restart_errored,
    )


def _lost_checkpoints(tables: dict[str, Any]) -> bool:
    trials = tables["trials"]
    errors = trials.loc[trials["status"] == "error", "error"].fillna("")
    return bool(errors.str.contains("does not exist on storage anymore").any())


def format_best(tables: dict[str, Any], exp: Experiment, top: int = 5) -> str:
    trials = tables["trials"]
    col = f"best_{exp.search.metric}"
    if trials.empty or col not in trials or trials[col].notna().sum() == 0:
        return "no trial finished an epoch"
    shown = [
        c
        for c in ["trial_id", "status", "arch", "optimizer", "lr", "epochs", col, "params"]
        if c in trials
    ]
    best = trials.sort_values(col, ascending=exp.search.mode == "min").head(top)[shown]
    counts = trials["status"].value_counts().to_dict()
    lines = [
        f"trials: {len(trials)} ({', '.join(f'{v} {k}' for k, v in counts.items())})",
        f"best {top} by {col}:",
    ]
    lines.append(best.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return "\n".join(lines)
