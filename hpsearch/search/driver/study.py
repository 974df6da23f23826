"""A whole study as the `run` and `resume` verbs do it: the search, then, when the experiment
has a `kfold:` section and the search finished, the k-fold error estimates of its best configs,
both in one Ray session."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpsearch.rundir import EXPERIMENT_FILE
from hpsearch.search.driver import kfold, tuner
from hpsearch.search.driver.gpus import check_local_gpu
from hpsearch.search.driver.resume import resume as resume_search
from hpsearch.search.driver.session import ray_session
from hpsearch.search.experiment.schema import load_experiment
from hpsearch.search.storage.run_store import RunStore

if TYPE_CHECKING:
    from hpsearch.search.experiment.schema import Experiment


def _kfold_after(exp: Experiment, run_dir: Path, address: str | None, progress: bool) -> None:
    kf = exp.kfold
    if progress:  # (not with -q)
        print(f"\nk-fold: re-training the top {kf.top} config(s) on {kf.k} folds")
    kfold.run_kfold(
        run_dir, top=kf.top, k=kf.k, epochs=kf.epochs, address=address, progress=progress
    )


def run(
    exp: Experiment, *, name: str | None = None, address: str | None = None, progress: bool = True
) -> tuple[Path, dict[str, Any], bool]:
    """Search, then k-fold if the experiment asks. Returns (run_dir, tables, interrupted)."""
    if exp.kfold is None:
        return tuner.run(exp, name=name, address=address, progress=progress)
    check_local_gpu(exp.resources.gpus, address, "run")  # before a local Ray starts
    with ray_session(address):  # one Ray instance for both parts (each checks a cluster's GPUs)
        run_dir, tables, interrupted = tuner.run(exp, name=name, address=address, progress=progress)
        if not interrupted:
            _kfold_after(exp, run_dir, address, progress)
    return run_dir, tables, interrupted


def resume(
    run_dir: str | Path, *, address: str | None = None, progress: bool = True
) -> tuple[Path, dict[str, Any], bool]:
    """Continue a stopped or crashed run (and its k-fold part, if the experiment has one)."""
    path = RunStore.checkout(run_dir).path / EXPERIMENT_FILE  # an s3:// run: downloaded first
    exp = load_experiment(path) if path.exists() else None
    if exp is None or exp.kfold is None:
        return resume_search(run_dir, address=address, progress=progress)
    check_local_gpu(exp.resources.gpus, address, "resume")  # before a local Ray starts
    with ray_session(address):
        run_dir, tables, interrupted = resume_search(run_dir, address=address, progress=progress)
        if not interrupted:
            _kfold_after(exp, run_dir, address, progress)
    return run_dir, tables, interrupted
