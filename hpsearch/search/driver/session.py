"""Ray's lifecycle as one context manager, with the checks that must pass before it starts: run,
resume and kfold all enter `ray_session`, and nothing else starts or stops Ray."""

from __future__ import annotations

import importlib
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hpsearch.search.console.printer import library_logs, ray_start_level
from hpsearch.search.errors import ExperimentError
from hpsearch.search.storage.remote import parse_uri

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


def _init(ray, address: str | None) -> None:

    if address:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=ray_start_level())
        except ConnectionError as e:
            raise ExperimentError(
                f"--address {address}: {e}. If the cluster uses token authentication (as "
                "cluster.yaml's does), set RAY_AUTH_MODE=token and put its token in "
                "~/.ray/auth_token"
            ) from None
    else:
        # Trial output is not forwarded: errors land in each trial's error.txt and in
        # trials.parquet; the progress reporter (search.console.printer) is what the console shows.
        ray.init(
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            log_to_driver=False,
            logging_level=ray_start_level(),
        )


@contextmanager
def ray_session(address: str | None = None, *, discard: Path | None = None) -> Iterator[None]:
    """Ray for the duration of the block: joined at `address`, or started locally; shut down
    at the end only if this block started it (an already initialised Ray is reused).

    `discard` is a run directory this call has just created: if Ray cannot be reached it is
    removed, since nothing ran and the same --name should work once Ray is reachable."""
    set_tune_env_defaults()
    try:
        owns = _start(address)
    except ExperimentError:
        if discard is not None:
            shutil.rmtree(discard, ignore_errors=True)
        raise

    try:
        with library_logs():  # Ray's and Optuna's messages as the console level asks
            yield
    finally:
        if owns:
            # lazy: Ray (~0.3 s): `hpsearch validate` checks an experiment's storage without it
            import ray

            ray.shutdown()
