"""Ray's lifecycle as one context manager, with the checks that must pass before it starts: run,
resume and kfold all enter `ray_session`, and nothing else starts or stops Ray. Joined to a
cluster, the session also checks that the trials can get the GPUs they ask for
(`driver.gpus`); and every trial's process starts with `trial.device.ALLOC_CONF` in its
environment (a value the user set wins)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hpsearch.search.console.printer import library_logs, ray_start_level
from hpsearch.search.driver.gpus import check_cluster_gpus
from hpsearch.search.errors import ExperimentError
from hpsearch.search.storage.remote import parse_uri
from hpsearch.search.trial.device import ALLOC_CONF

TUNE_ENV_DEFAULTS = {
    # Only the JSON result logger: the per-step losses and confusion matrices are lists, which
    # the CSV and TensorBoard loggers would only mangle; result.json keeps them intact.
    # (`tracking.tensorboard` adds a TensorBoard logger given only the epoch's scalars.)
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    # One checkpoint per trial and epoch is the design; Tune's warning about it is noise.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def set_tune_env_defaults() -> None:
    """Tune reads these from the environment; a value the user set wins."""
    for key, value in TUNE_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def check_storage(storage: str) -> None:
    """A storage URI must be s3:// or gs:// without credentials or query (search.remote: Tune
    writes there, the driver keeps a working copy); a path inside a Ray job must be absolute,
    else it lands in the job's temporary copy of the working directory."""
    if "://" in storage:
        parse_uri(storage)
        return
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") and not Path(storage).is_absolute():
        raise ExperimentError(
            f"storage: {storage!r} is relative, and this run is a Ray job whose working "
            "directory is a temporary copy Ray deletes later. Pass an absolute path that every "
            "node mounts, e.g. --storage /mnt/shared/runs"
        )


# What the driver imports right after Ray is up (Tune; Optuna and the SQLAlchemy and Alembic of
# its SQLite storage): imported in a thread while `ray.init` waits for Ray's processes, they are
# ready when it returns (1-2 s of a local start on 2 cores).
WARM_IMPORTS = ("ray.tune", "optuna", "sqlalchemy.orm", "alembic.command", "pyarrow.parquet")


def _warm_imports(modules: tuple[str, ...]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 (imported again where used, and fails there if it must)
            return


def _start(address: str | None) -> bool:
    """Join `address`, or start a local instance on 127.0.0.1 with every local CPU/GPU and no
    dashboard. Returns True if this call started Ray (so it should shut it down)."""
    # lazy: Ray (~0.3 s): `hpsearch validate` checks an experiment's storage without it
    import ray

    if ray.is_initialized():
        return False
    warm = threading.Thread(target=_warm_imports, args=(WARM_IMPORTS,), daemon=True)
    warm.start()
    try:
        _init(ray, address)
    finally:
        warm.join()
    return True


def trial_env_vars() -> dict[str, str]:
    """What a joined cluster's trials get in their runtime environment: `ALLOC_CONF`, with the
    driver's own value of a variable where it has one (the user's wins), minus the variables
    the Ray job's runtime_env already sets (Ray refuses to merge a job's and a driver's
    runtime_env that set the same variable, and the job's is the user's choice too)."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    taken = set((job.get("runtime_env") or {}).get("env_vars") or {})
    return {k: os.environ.get(k, v) for k, v in ALLOC_CONF.items() if k not in taken}


def _init(ray, address: str | None) -> None:

    if address:
        # Workers on other nodes inherit their own raylet's environment, not the driver's: the
        # variables travel in the job's runtime_env, which Ray merges with a `ray job submit`
        # job's per variable (ray.runtime_env.runtime_env._merge_runtime_env).
        env = trial_env_vars()
        runtime_env = {"runtime_env": {"env_vars": env}} if env else {}
        try:
            ray.init(
                address=address,
                log_to_driver=False,
                logging_level=ray_start_level(),
                **runtime_env,
            )
        except ConnectionError as e:
            raise ExperimentError(
                f"--address {address}: {e}. If the cluster uses token authentication (as "
                "cluster.yaml's does), set RAY_AUTH_MODE=token and put its token in "
                "~/.ray/auth_token"
            ) from None
    else:
        # A local Ray's workers inherit the environment of the raylet, which inherits this one.
        for key, value in ALLOC_CONF.items():
            os.environ.setdefault(key, value)
        # Trial output is not forwarded: errors land in each trial's error.txt and in
        # trials.parquet; the progress reporter (search.console.printer) is what the console shows.
        ray.init(
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            log_to_driver=False,
            logging_level=ray_start_level(),
        )


@contextmanager
def ray_session(
    address: str | None = None, *, discard: Path | None = None, gpus: float = 0.0
) -> Iterator[None]:
    """Ray for the duration of the block: joined at `address`, or started locally; shut down
    at the end only if this block started it (an already initialised Ray is reused). Joined
    to a cluster, trials with `gpus > 0` must be able to get a GPU there
    (`gpus.check_cluster_gpus`; a local run's GPU is checked before Ray starts).

    `discard` is a run directory this call has just created: if Ray cannot be reached, or the
    cluster cannot give the trials a GPU, it is removed, since nothing ran and the same --name
    should work once that is fixed."""
    set_tune_env_defaults()
    try:
        owns = _start(address)
        try:
            if address:
                check_cluster_gpus(gpus)
        except BaseException:
            if owns:
                _stop()
            raise
    except ExperimentError:
        if discard is not None:
            shutil.rmtree(discard, ignore_errors=True)
        raise

    try:
        with library_logs():  # Ray's and Optuna's messages as the console level asks
            yield
    finally:
        if owns:
            _stop()


def _stop() -> None:
    # lazy: Ray (~0.3 s): `hpsearch validate` checks an experiment's storage without it
    import ray

    ray.shutdown()
