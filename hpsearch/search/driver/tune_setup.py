"""How hpsearch configures Ray Tune: the trainable with its resources, the searcher (Optuna
behind a ConcurrencyLimiter), the scheduler (ASHA), the run config and the console table."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import ray
from ray import tune
from ray.tune import CLIReporter
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from hpsearch.rundir import OPTUNA_DB, TRIAL_PREFIX
from hpsearch.search.console.tune import ConsoleReporter
from hpsearch.search.driver.grid_sampler import DistinctGridSampler
from hpsearch.search.driver.searcher import ResumableOptunaSearch
from hpsearch.search.experiment.dimensions import DIMENSIONS
from hpsearch.search.experiment.space import build_space, in_every_config
from hpsearch.search.integrations.tracking import tracking_callbacks
from hpsearch.search.storage.remote import tune_restore, tune_storage
from hpsearch.search.storage.remote_tune import keep_credentials_out_of_ray, storage_callbacks
from hpsearch.search.trial.device import trials_per_device
from hpsearch.search.trial.trainable import train_trial

if TYPE_CHECKING:
    from collections.abc import Callable

    from hpsearch.search.experiment.schema import Experiment
    from hpsearch.search.trial.inputs import TrialData, TrialSettings

SHOWN_METRICS = ["epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_precision"]


def trial_dirname(trial: Any) -> str:
    return f"{TRIAL_PREFIX}{trial.trial_id}"


def trainable(exp: Experiment, fn: Callable[..., None], **parameters: Any):
    """`fn` with its large inputs in Ray's object store and the experiment's resources."""

    resources = {"cpu": exp.resources.cpus, "gpu": exp.resources.gpus}
    return tune.with_resources(tune.with_parameters(fn, **parameters), resources)


def search_trainable(exp: Experiment, data: TrialData, settings: TrialSettings):

    return trainable(exp, train_trial, data=data, settings=settings)


def sampler(exp: Experiment) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of `search.algorithm`, with hpsearch's settings (what `run` uses, and
    what `benchmarks/bench_replay.py` replays)."""
    s = exp.search
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if s.algorithm == "tpe":
            return optuna.samplers.TPESampler(
                seed=s.seed,
                n_startup_trials=max(2, min(10, s.num_trials // 3)),
                multivariate=True,
                group=True,  # conditional optimizer parameters form their own groups
                constant_liar=True,  # parallel trials: don't propose the same point twice
            )
        if s.algorithm == "random":
            return optuna.samplers.RandomSampler(seed=s.seed)
        return DistinctGridSampler(seed=s.seed)  # each distinct configuration once


def searcher(
    exp: Experiment,
    run_dir: Path | None,
    *,
    max_concurrent_trials: int | None = None,
    optuna_sampler: optuna.samplers.BaseSampler | None = None,
):
    """ResumableOptunaSearch over the experiment's space behind a ConcurrencyLimiter; its study
    in `run_dir`/optuna.db (None: in memory, as the replay benchmark runs it). The sampler is
    `sampler(exp)` unless `optuna_sampler` is given (the replay's other samplers)."""
    s = exp.search
    storage = (
        optuna.storages.RDBStorage(f"sqlite:///{(run_dir / OPTUNA_DB).resolve()}")
        if run_dir is not None
        else optuna.storages.InMemoryStorage()
    )
    search = ResumableOptunaSearch(
        space=build_space(s.space, grid=s.algorithm == "grid"),
        metric=s.metric,
        mode=s.mode,
        sampler=optuna_sampler if optuna_sampler is not None else sampler(exp),
        study_name=exp.name,
        storage=storage,
        max_epochs=exp.train.epochs,
        run_dir=str(run_dir.resolve()) if run_dir is not None else None,
    )
    limit = max_concurrent_trials if max_concurrent_trials is not None else max_concurrent(exp)
    return ConcurrencyLimiter(search, max_concurrent=limit)


def max_concurrent(exp: Experiment) -> int:
    if exp.search.max_concurrent:
        return exp.search.max_concurrent

    fits = trials_that_fit(
        ray.cluster_resources(), cpus=exp.resources.cpus, gpus=exp.resources.gpus
    )
    if fits < 1:
        # An autoscaling cluster starts without workers: what fits now says nothing.
        print(
            "search.max_concurrent: no trial fits the cluster's resources yet (an autoscaling "
            "cluster adds workers later), so trials run one at a time; set "
            "search.max_concurrent to run more at once, e.g. --set search.max_concurrent=8"
        )
    return max(1, fits)


# Ray's tolerance for resources that should sum to a whole but do not in floating point
# (0.1 + 0.2 > 0.3; five trials at 0.2 GPUs fill a GPU).
EPSILON = 1e-6


def trials_that_fit(total: dict[str, float], *, cpus: float, gpus: float) -> int:
    """How many trials Ray runs at once on `total` (ray.cluster_resources()), packing as it
    does: CPUs as one pool, floor(CPUs / cpus); fractional GPUs per device, never across two,
    floor(GPUs) x trials_per_device(gpus) (1 GPU at 0.2: 5, not 1 // 0.2 == 4; 3 GPUs at 0.3:
    9, not 10); whole GPUs floor(GPUs / gpus)."""
    fits = [math.floor(total.get("CPU", 1) / cpus + EPSILON)]
    if gpus > 0:
        devices = total.get("GPU", 0)
        if gpus < 1:
            fits.append(math.floor(devices + EPSILON) * trials_per_device(gpus))
        else:
            fits.append(math.floor(devices / gpus + EPSILON))
    return min(fits)


def scheduler(exp: Experiment):

    if exp.scheduler.type == "asha":
        return ASHAScheduler(
            time_attr="epoch",  # Tune's report count runs ahead of it after a restart
            max_t=exp.train.epochs,
            grace_period=exp.scheduler.grace_period,
            reduction_factor=exp.scheduler.reduction_factor,
            brackets=exp.scheduler.brackets,
        )
    return FIFOScheduler()


def shown_params(exp: Experiment) -> list[str]:
    """The console's parameter columns: the table's console dimensions every trial has."""
    space = exp.search.space
    return [d.key for d in DIMENSIONS.values() if d.console and in_every_config(space, d)]


def run_config(exp: Experiment, name: str, storage: Path | str, *, reporter: bool = True):
    """Tune's RunConfig: one kept checkpoint per trial, the experiment's retries, JSON results.
    `storage` is a local folder or an s3:// / gs:// URI (search.storage.remote)."""

    keep_credentials_out_of_ray()

    table = CLIReporter()  # (what Tune shows without a reporter of its own)
    if reporter:
        table = CLIReporter(
            metric_columns=SHOWN_METRICS,
            parameter_columns=shown_params(exp),
            max_report_frequency=15,
            sort_by_metric=True,
        )
    # Tune's table with -v; else a line per finished trial and a summary (search.console.printer).
    progress = ConsoleReporter(
        table,
        metric=exp.search.metric,
        mode=exp.search.mode,
        epochs=exp.train.epochs if reporter else None,  # (k-fold trials are never stopped early)
    )
    return tune.RunConfig(
        name=name,
        **tune_storage(storage),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=exp.failure.max_retries),
        progress_reporter=progress,
        callbacks=[
            *storage_callbacks(storage, name),  # before the logger: see search.storage.remote_tune
            JsonLoggerCallback(),
            *tracking_callbacks(exp, name, storage),
        ],
        verbose=1,
    )


def new_tuner(
    exp: Experiment,
    run_dir: Path,
    data: TrialData,
    settings: TrialSettings,
    *,
    storage: str | None = None,
):
    """`run_dir` holds the study (optuna.db); Tune's experiment goes to `storage`/<its name>
    (default: `run_dir` itself; a URI for a run in object storage, `run_dir` its working copy)."""

    return tune.Tuner(
        search_trainable(exp, data, settings),
        tune_config=tune.TuneConfig(
            search_alg=searcher(exp, run_dir),
            scheduler=scheduler(exp),
            metric=exp.search.metric,
            mode=exp.search.mode,
            num_samples=exp.search.num_trials,
            reuse_actors=True,
            trial_name_creator=trial_dirname,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=run_config(exp, run_dir.name, storage or run_dir.parent),
    )


def restore_tuner(path: Path | str, trainable_fn: Any, *, restart_errored: bool = False):
    """Tune's experiment at `path` (a folder or a URI), continuing unfinished trials from their
    checkpoints."""

    keep_credentials_out_of_ray()
    return tune.Tuner.restore(
        **tune_restore(path),
        trainable=trainable_fn,
        resume_unfinished=True,
        resume_errored=not restart_errored,
        restart_errored=restart_errored,
    )
