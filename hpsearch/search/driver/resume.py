"""Resume: how a stopped or crashed search goes on, in one place. The rules:

1. Only a run directory made by this layout of hpsearch resumes. Its pickles (Tune's tuner.pkl,
   the searcher's state, the callbacks) name hpsearch's modules; a run made before the move to
   one import package (hpsearch < 0.2, `versions.json`) is refused with what to do instead.
2. Finished trials keep their rows; an unfinished trial goes on from the newest checkpoint in
   its own folder that loads (`trial.checkpoints.restore`), not the older one that Tune's
   snapshot names (the snapshot and the synced result files lag by up to 10 s).
3. A checkpoint the snapshot names but Tune deleted is put back as a copy of the trial's
   newest before Tune restores (`trial.checkpoints.repair_lost_checkpoints`); a trial whose
   checkpoint is still lost is started again from scratch.
4. A restored trial sends its earlier reports again, marked `replayed`
   (`trial.report.REPLAYED`): the tables keep an epoch's first report, and Optuna, TensorBoard
   and MLflow skip replays, so no (trial, epoch) is counted twice.
5. The search then completes its trial budget; k-fold follows if the experiment has one
   (`driver.study.resume`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hpsearch.rundir import EXPERIMENT_FILE, INIT_FILE, TUNER_FILE, VERSIONS_FILE
from hpsearch.search.driver.gpus import check_local_gpu
from hpsearch.search.driver.session import ray_session
from hpsearch.search.driver.tune_setup import restore_tuner, search_trainable
from hpsearch.search.driver.tuner import fit_and_export
from hpsearch.search.driver.validate import check_tracking
from hpsearch.search.errors import ExperimentError
from hpsearch.search.experiment.schema import load_run_experiment
from hpsearch.search.storage.run_store import RunStore
from hpsearch.search.trial.checkpoints import repair_lost_checkpoints
from hpsearch.search.trial.inputs import TrialSettings, for_cluster, load_data
from hpsearch.search.trial.same_init import with_init_state

FIRST_LAYOUT = (0, 2)  # hpsearch 0.2 moved every module under the one package `hpsearch`
LOST_CHECKPOINT = "does not exist on storage anymore"  # Ray Tune's error for a lost checkpoint


def check_layout(run_dir: Path, shown: Any = None) -> None:
    """Raise ExperimentError if the run's pickled state names modules this hpsearch lacks."""
    path = Path(run_dir) / VERSIONS_FILE
    if not path.exists():
        return
    made_by = str(json.loads(path.read_text()).get("hpsearch", ""))
    try:
        version = tuple(int(p) for p in made_by.split(".")[:2])
    except ValueError:
        return  # a development version: its layout is this one
    if version < FIRST_LAYOUT:
        raise ExperimentError(
            f"{shown or run_dir} was made by hpsearch {made_by}, whose modules were top-level "
            "packages (search, models, ...); its pickled Ray Tune state cannot be loaded by "
            "this version. Its tables and plots still work (hpsearch report, hpsearch kfold "
            f"on a finished run). To continue it, resume it with hpsearch {made_by} "
            "(pip install 'hpsearch==" + made_by + "'), or start the search again with "
            "hpsearch run."
        )


def resume(
    run_dir: str | Path, *, address: str | None = None, progress: bool = True
) -> tuple[Path, dict[str, Any], bool]:
    """Continue a stopped or crashed run: finished trials are kept, unfinished ones continue
    from their last checkpoint, and the search completes its trial budget. `run_dir` may be
    an s3:// or gs:// URI (or its working copy): Tune restores from there, the driver's files
    are downloaded into the working copy first."""
    store = RunStore.checkout(run_dir)  # a stored run: its working copy, up to date
    run_dir, shown = store.path, store.shown
    if not (run_dir / EXPERIMENT_FILE).exists() or not (run_dir / TUNER_FILE).exists():
        raise ExperimentError(
            f"{shown} is not a run directory of hpsearch (no {EXPERIMENT_FILE} / {TUNER_FILE})"
        )
    check_layout(run_dir, shown)
    exp = load_run_experiment(run_dir)
    check_tracking(exp)  # the restored callbacks open their writers as the run continues
    check_local_gpu(exp.resources.gpus, address, "resume")
    settings = TrialSettings.from_experiment(exp)
    had_init = (run_dir / INIT_FILE).exists()
    data = with_init_state(exp, load_data(exp, progress=progress), settings, run_dir)
    with ray_session(address, gpus=exp.resources.gpus):
        if not had_init and (run_dir / INIT_FILE).exists():
            store.upload([INIT_FILE])  # warmed up here (same_init): the next resume reuses it
        trainable = search_trainable(exp, for_cluster(data, address), settings)
        if store.remote is None:  # a stored run's checkpoints are Tune's to restore
            repaired = repair_lost_checkpoints(run_dir)
            if repaired and progress:
                print(
                    f"resume: {len(repaired)} trial(s) go on from their newest checkpoint, "
                    "which Tune's last snapshot did not name yet"
                )
        tuner = restore_tuner(store.tune_path(), trainable)
        tables, interrupted = fit_and_export(tuner, exp, store, data)
        if not interrupted and _lost_checkpoints(tables):
            # Tune deletes a trial's older checkpoint before its state snapshot points at the
            # newer one; a crash in between leaves the snapshot naming a deleted checkpoint.
            # Those trials cannot continue, so they start again from scratch.
            tuner = restore_tuner(store.tune_path(), trainable, restart_errored=True)
            tables, interrupted = fit_and_export(tuner, exp, store, data)
    return run_dir, tables, interrupted


def _lost_checkpoints(tables: dict[str, Any]) -> bool:
    trials = tables["trials"]
    errors = trials.loc[trials["status"] == "error", "error"].fillna("")
    return bool(errors.str.contains(LOST_CHECKPOINT).any())
