"""Run and resume a search: the cache's arrays → Ray's object store → Ray Tune (Optuna behind a
ConcurrencyLimiter, ASHA) → the Parquet tables of the run directory, then k-fold if asked.

The run directory `<storage>/<name>/` is Ray Tune's experiment folder; hpsearch adds
`experiment.yaml` (resolved), `versions.json`, `optuna.db` (the Optuna study, readable with
`optuna.load_study` or optuna-dashboard) and the Parquet tables (`rundir` owns their names).
With `storage: s3://...` (or gs://) Tune's folder is in object storage and the driver works in
a local working copy of the run folder, which it uploads at every export (`search.storage.remote`).
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
    VERSIONS_FILE,
    check_name,
    table_file,
    write_text,
)
from hpsearch.search.console.printer import is_quiet
from hpsearch.search.driver.export import export_run, library_versions
from hpsearch.search.driver.session import ray_session
from hpsearch.search.driver.tune_setup import new_tuner
from hpsearch.search.driver.validate import check_experiment, grid_coverage
from hpsearch.search.errors import ExperimentError
from hpsearch.search.experiment.schema import Experiment
from hpsearch.search.storage.remote import RemoteRun, is_uri, parse_uri
from hpsearch.search.storage.run_store import RunStore
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
    exp: Experiment, *, name: str | None = None, address: str | None = None, progress: bool = True
) -> tuple[Path, TrialData]:
    """Everything `run` checks and builds before Ray starts. Raises ExperimentError."""
    check_experiment(exp, address=address)
    coverage = grid_coverage(exp)
    if coverage is not None and not is_quiet():
        print(f"grid: {coverage}")
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


def fit_and_export(tuner, exp: Experiment, store: RunStore, data: TrialData):
    """Run Tune until the budget is spent or Ctrl-C, then write the run's tables (a stored run:
    from its working copy, uploaded after). Returns (tables, interrupted); `resume` uses it
    too."""
    interrupted = False
    try:
        tuner.fit()
    except KeyboardInterrupt:
        interrupted = True
    store.download(results_only=True)  # the export reads the trials' results from the copy
    tables = export_run(
        store.path,
        epochs=exp.train.epochs,
        classes=list(data.classes),
        metric=exp.search.metric,
        mode=exp.search.mode,
    )
    store.upload([*(table_file(t) for t in tables), OPTUNA_DB])
    if interrupted or (tables["trials"]["status"].isin(["incomplete", "pending"]).any()):
        interrupted = True
    return tables, interrupted


def run(
    exp: Experiment, *, name: str | None = None, address: str | None = None, progress: bool = True
) -> tuple[Path, dict[str, Any], bool]:
    """Run a whole search (not the k-fold that may follow it: `search.driver.study.run` chains both).
    Returns (run_dir, tables, interrupted)."""
    run_dir, data = prepare_run(exp, name=name, address=address, progress=progress)
    store = RunStore.of_working_copy(run_dir)  # a stored run: run_dir is its working copy
    settings = TrialSettings.from_experiment(exp)
    data = with_init_state(exp, data, settings, run_dir)
    with ray_session(address, discard=run_dir, gpus=exp.resources.gpus):
        storage = None
        if store.remote is not None:  # stored once Ray is up: a run that never started leaves none
            print(f"run {store.shown}: working copy {run_dir}")
            store.upload([EXPERIMENT_FILE, VERSIONS_FILE, INIT_FILE])
            storage = str(store.remote.uri.parent)
        tuner = new_tuner(exp, run_dir, for_cluster(data, address), settings, storage=storage)
        tables, interrupted = fit_and_export(tuner, exp, store, data)
    return run_dir, tables, interrupted
