"""Ray Tune's side of a run in object storage (`search.storage.remote`): the callback that makes each
snapshot of Tune's experiment state consistent on storage, and keeping the storage credentials
of the driver's environment out of Ray's runtime environments (and so out of its logs).

Tune restores a search from its newest snapshot on storage. The snapshot names each trial's
checkpoint, and the searcher state in it names the study's trials; but Tune uploads its driver
folder (snapshot, trial results) in the background, file by file, and the study (optuna.db)
lives in the driver's working copy. A crash during an upload can leave a new snapshot beside an
older result.json (the trial then continues after an epoch its results lack) or a study older
than the searcher state (`resume` then fails on a trial the study does not have). Tune calls
every callback's `get_state` while it writes a snapshot, before it starts uploading it: the
callback uploads the study and the results that changed there, so what is on storage is never
older than the snapshot beside it.

On `resume` Tune's result logger starts a trial's result.json afresh in its new driver folder
(and that file then replaces the stored one) unless the snapshot names a checkpoint of the
trial; a trial that continues from a newer checkpoint of its own (search.trial.checkpoints) would
lose its earlier epochs. The callback, placed before the logger, first copies the stored
result.json there, so the logger appends to it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray.tune import Callback

from hpsearch.rundir import OPTUNA_DB, PARAMS_FILE, RESULT_FILE
from hpsearch.search.errors import ExperimentError
from hpsearch.search.storage.remote import RemoteRun, is_uri, parse_uri

logger = logging.getLogger(__name__)

# What Ray Tune copies from the driver's environment into every trial actor's runtime env, which
# Ray's runtime-env agent then logs in plain text (session_*/logs/runtime_env_agent.log) on
# every node. Each node reads its own credentials instead: the instance role on AWS, or the
# environment Ray was started with (workers of a local Ray inherit the driver's).
CREDENTIAL_VARS = frozenset(
    {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"}
)


def keep_credentials_out_of_ray() -> None:
    """Stop Ray Tune from propagating the driver's AWS keys to its trial actors."""
    # lazy: Ray Tune's internals (~0.8 s), only when a search starts
    from ray.tune.execution import class_cache

    names = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if names is not None:
        class_cache.ENV_VARS_TO_PROPAGATE = frozenset(names) - CREDENTIAL_VARS


class UploadOnSnapshot(Callback):
    """At each snapshot (and at the end): upload the result.json (and, once, params.json) of
    every trial that reported since the last one, from Tune's driver folder, and `optuna.db`
    from the working copy when it changed. Pickled with Tune's state: only the run's URI."""

    def __init__(self, run_uri: str) -> None:
        self.run_uri = run_uri
        self._stamp: tuple[int, int] | None = None
        self._reported: dict[str, Path] = {}  # trial folder name -> its folder on the driver
        self._params_sent: set[str] = set()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info) -> None:
        folder = getattr(trial, "local_path", None)
        if not folder or (Path(folder) / RESULT_FILE).exists():
            return
        try:
            run = RemoteRun.open(parse_uri(self.run_uri))
            with run.fs.open_input_stream(f"{run.uri.path}/{Path(folder).name}/{RESULT_FILE}") as f:
                data = f.readall()
        except FileNotFoundError:
            return  # a new trial: nothing stored yet
        except (ExperimentError, OSError) as e:
            logger.warning("could not fetch %s's results from %s: %s", trial, self.run_uri, e)
            return
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / RESULT_FILE).write_bytes(data)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info):
        folder = getattr(trial, "local_path", None)
        if folder:
            self._reported[Path(folder).name] = Path(folder)

    def get_state(self) -> None:
        self.upload()
        return None  # no state of its own: Tune writes no callback file for it

    def on_experiment_end(self, trials: list, **info) -> None:
        self.upload()

    def upload(self) -> None:
        try:
            run = RemoteRun.open(parse_uri(self.run_uri))
            self._upload_results(run)
            db = run.local / OPTUNA_DB
            if db.is_file():
                st = db.stat()
                stamp = (st.st_mtime_ns, st.st_size)
                if stamp != self._stamp:
                    run.upload([OPTUNA_DB])
                    self._stamp = stamp
        except (ExperimentError, OSError) as e:  # the next snapshot tries again
            logger.warning("could not upload to %s before a snapshot: %s", self.run_uri, e)

    def _upload_results(self, run: RemoteRun) -> None:
        for name, folder in list(self._reported.items()):
            files = [RESULT_FILE] + ([PARAMS_FILE] if name not in self._params_sent else [])
            for file in files:
                local = folder / file
                if local.is_file():
                    data = local.read_bytes()
                    with run.fs.open_output_stream(f"{run.uri.path}/{name}/{file}") as out:
                        out.write(data)
            self._params_sent.add(name)
            del self._reported[name]

    def __getstate__(self) -> dict:
        return {"run_uri": self.run_uri}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["run_uri"])


def storage_callbacks(storage: Path | str, name: str) -> list[Callback]:
    """The callbacks a Tune experiment `name` under `storage` needs: none on a local path."""
    if not is_uri(storage):
        return []
    return [UploadOnSnapshot(str(parse_uri(str(storage)).child(name)))]
