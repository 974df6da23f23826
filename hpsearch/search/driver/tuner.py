"""Run and resume a search: the cache's arrays → Ray's object store → Ray Tune (Optuna behind a
ConcurrencyLimiter, ASHA) → the Parquet tables of the run directory, then k-fold if asked.

The run directory `<storage>/<name>/` is Ray Tune's experiment folder; hpsearch adds
`experiment.yaml` (resolved), `versions.json`, `optuna.db` (the Optuna study, readable with
`optuna.load_study` or optuna-dashboard) and the Parquet tables (`rundir` owns their names).
With `storage: s3://...` (or gs://) Tune's folder is in object storage and the driver works in
a local working copy of the run folder, which it uploads at every export (`search.remote`).
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path
from typing import Any

from hpsearch.rundir import (
    EXPERIMENT_FILE,
    INIT_FILE,
    OPTUNA_DB,
    TUNER_FILE,
    VERSIONS_FILE,
    check_name,
    table_file,
    write_text,
)
from hpsearch.search.driver.export import export_run, library_versions
from hpsearch.search.driver.session import ray_session
from hpsearch.search.driver.tune_setup import new_tuner, restore_tuner, search_trainable
from hpsearch.search.driver.validate import check_experiment, check_tracking
from hpsearch.search.errors import ExperimentError
from hpsearch.search.experiment.schema import Experiment, load_run_experiment
from hpsearch.search.storage.remote import RemoteRun, checkout, is_uri, open_run, parse_uri
from hpsearch.search.trial.checkpoints import repair_lost_checkpoints
from hpsearch.search.trial.inputs import (
    TrialData,
    TrialSettings,
    for_cluster,
    load_data,
)
from hpsearch.search.trial.same_init import with_init_state


def default_run_name(exp: Experiment) -> str:
    return f"{exp.name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def prepare_run(
    exp: Experiment, *, name: str | None = None, progress: bool = True
) -> tuple[Path, TrialData]:
    """Everything `run` checks and builds before Ray starts. Raises ExperimentError."""
    check_experiment(exp)
    if name is not None:
        try:
            check_name(name, "--name")
        except ValueError as e:
            raise ExperimentError(str(e)) from None
    name = name or default_run_name(exp)
    if is_uri(exp.storage):
        remote = RemoteRun.open(parse_uri(exp.storage).child(name))
        if remote.exists():
            raise ExperimentError(
                f"run {remote.uri} already exists: continue it with `hpsearch resume "
                f"{remote.uri}` or choose another --name"
            )
        run_dir = remote.local
        shutil.rmtree(run_dir, ignore_errors=True)  # left by an attempt that stored nothing
    else:
        run_dir = Path(exp.storage) / name
        if run_dir.exists():
            raise ExperimentError(
                f"run directory {run_dir} already exists: continue it with `hpsearch resume "
                f"{run_dir}` or choose another --name"
            )
    data = load_data(exp, progress=progress)
    run_dir.mkdir(parents=True)
    write_text(run_dir / EXPERIMENT_FILE, exp.to_yaml())
    write_text(run_dir / VERSIONS_FILE, json.dumps(library_versions(), indent=2))
    return run_dir, data


def _fit_and_export(
    tuner, exp: Experiment, run_dir: Path, data: TrialData, remote: RemoteRun | None = None
):
    interrupted = False
    try:
        tuner.fit()
    except KeyboardInterrupt:
        interrupted = True
    if remote is not None:  # the export reads the trials' results from the working copy
        remote.download(results_only=True)
    tables = export_run(run_dir, epochs=exp.train.epochs, classes=list(data.classes))
    if remote is not None:
        remote.upload([*(table_file(t) for t in tables), OPTUNA_DB])
    if interrupted or (tables["trials"]["status"].isin(["incomplete", "pending"]).any()):
        interrupted = True
    return tables, interrupted


def run(
    exp: Experiment, *, name: str | None = None, address: str | None = None, progress: bool = True
) -> tuple[Path, dict[str, Any], bool]:
    """Run a whole search (not the k-fold that may follow it: `search.study.run` chains both).
    Returns (run_dir, tables, interrupted)."""
    run_dir, data = prepare_run(exp, name=name, progress=progress)
    remote = open_run(run_dir)  # the run in object storage whose working copy run_dir is
    settings = TrialSettings.from_experiment(exp)
    data = with_init_state(exp, data, settings, run_dir)
    with ray_session(address, discard=run_dir):
        storage = None
        if remote is not None:  # stored once Ray is up, so a run that never started leaves none
            print(f"run {remote.uri}: working copy {run_dir}")
            remote.upload([EXPERIMENT_FILE, VERSIONS_FILE, INIT_FILE])
            storage = str(remote.uri.parent)
        tuner = new_tuner(exp, run_dir, for_cluster(data, address), settings, storage=storage)
        tables, interrupted = _fit_and_export(tuner, exp, run_dir, data, remote)
    return run_dir, tables, interrupted


def resume(
    run_dir: str | Path, *, address: str | None = None, progress: bool = True
) -> tuple[Path, dict[str, Any], bool]:
    """Continue a stopped or crashed run: finished trials are kept, unfinished ones continue
    from their last checkpoint, and the search completes its trial budget. `run_dir` may be
    an s3:// or gs:// URI (or its working copy): Tune restores from there, the driver's files
    are downloaded into the working copy first."""
    run_dir, remote = checkout(run_dir)
    shown = remote.uri if remote is not None else run_dir
    if not (run_dir / EXPERIMENT_FILE).exists() or not (run_dir / TUNER_FILE).exists():
        raise ExperimentError(
            f"{shown} is not a run directory of hpsearch (no {EXPERIMENT_FILE} / {TUNER_FILE})"
        )
    exp = load_run_experiment(run_dir)
    check_tracking(exp)  # the restored callbacks open their writers as the run continues
    settings = TrialSettings.from_experiment(exp)
    had_init = (run_dir / INIT_FILE).exists()
    data = with_init_state(exp, load_data(exp, progress=progress), settings, run_dir)
    tune_dir = str(remote.uri) if remote is not None else run_dir
    with ray_session(address):
        if remote is not None and not had_init and (run_dir / INIT_FILE).exists():
            remote.upload([INIT_FILE])  # warmed up here (same_init): the next resume reuses it
        trainable = search_trainable(exp, for_cluster(data, address), settings)
        if remote is None:
            repaired = repair_lost_checkpoints(run_dir)
            if repaired and progress:
                print(
                    f"resume: {len(repaired)} trial(s) go on from their newest checkpoint, "
                    "which Tune's last snapshot did not name yet"
                )
        tuner = restore_tuner(tune_dir, trainable)
        tables, interrupted = _fit_and_export(tuner, exp, run_dir, data, remote)
        if not interrupted and _lost_checkpoints(tables):
            # Tune deletes a trial's older checkpoint before its state snapshot points at the
            # newer one; a crash in between leaves the snapshot naming a deleted checkpoint.
            # Those trials cannot continue, so they start again from scratch.
            tuner = restore_tuner(tune_dir, trainable, restart_errored=True)
            tables, interrupted = _fit_and_export(tuner, exp, run_dir, data, remote)
    return run_dir, tables, interrupted


def _lost_checkpoints(tables: dict[str, Any]) -> bool:
    trials = tables["trials"]
    errors = trials.loc[trials["status"] == "error", "error"].fillna("")
    return bool(errors.str.contains("does not exist on storage anymore").any())
