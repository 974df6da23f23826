"""The trial's report contract: what a trial tells Tune at each epoch, and how the driver, the
searcher, the tables and the integrations read it. One home for the statuses, the replay flag,
the worst value and the Optuna user attributes; everything that reads a report imports these.

A report is a dict passed to `ray.tune.report`: the metrics (`rundir.METRICS`), `epoch`, and
`status` (`running` while the trial trains; `infeasible`, `diverged` or `oom` when the trainable
ends it itself, with a `reason`). A trial restarted from a checkpoint sends its earlier reports
again, marked `replayed`: readers keep an epoch's first report and skip replays."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpsearch.rundir import ERROR_FILE, TRIAL_PREFIX

RUNNING = "running"
# The architecture cannot be built at this image size, or costs more than search.budget
# allows; no model is built, nothing trained.
INFEASIBLE = "infeasible"
DIVERGED = "diverged"  # a non-finite loss ended training
OOM = "oom"  # CUDA ran out of memory within the trial's share of the GPU; not retried
COMPLETED = "completed"  # trained the experiment's epochs
STOPPED = "stopped"  # the scheduler stopped it early
ERROR = "error"  # the trial raised an exception
# How a trial can end, as trials.parquet's `status` column and the Optuna attribute say.
END_STATUSES = (COMPLETED, STOPPED, INFEASIBLE, DIVERGED, OOM, ERROR)
ENDED_BY_TRAINABLE = (INFEASIBLE, DIVERGED, OOM)

REPLAYED = "replayed"  # set on a report a restarted trial sends again from its checkpoint


def replayed(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reports of a restored trial, marked as sent again."""
    return [{**r, REPLAYED: True} for r in reports]


def worst_value(mode: str) -> float:
    """What an infeasible, diverged or out-of-memory trial tells the sampler: the worst possible score, so TPE
    learns to avoid that region (a failed Optuna trial would teach it nothing)."""
    return 0.0 if mode == "max" else float("inf")


def end_status(last: Mapping[str, Any], epochs: int | None) -> str:
    """How a trial that ended without an exception ended, from its last report: infeasible,
    diverged or oom (the trainable says so), completed (it ran the experiment's `epochs`) or stopped
    (the scheduler stopped it before). trials.parquet and the Optuna study's user attributes
    agree."""
    status = last.get("status")
    if status in ENDED_BY_TRAINABLE:
        return status
    return COMPLETED if epochs is None or last.get("epoch", 0) >= epochs else STOPPED


def user_attrs(
    trial_id: str,
    last: Mapping[str, Any] | None,
    *,
    ended: bool,
    error: bool = False,
    max_epochs: int | None = None,
    run_dir: str | None = None,
) -> dict[str, Any]:
    """hpsearch's facts about a trial, for its Optuna user attributes, from its last report:
    `status` (running while it trains; at its end one of END_STATUSES, as trials.parquet says),
    `error` (why it ended badly), the model's `params` and `macs`, the Ray `node_id` it ran on,
    its last `epoch` and the `run_dir`."""
    last = last or {}
    attrs = {k: last[k] for k in ("params", "macs", "node_id") if last.get(k) is not None}
    if last.get("epoch") is not None:
        attrs["epoch"] = int(last["epoch"])
    if run_dir:
        attrs["run_dir"] = run_dir
    if error:
        trial_dir = f"{TRIAL_PREFIX}{trial_id}"
        where = str(Path(run_dir) / trial_dir) if run_dir else trial_dir
        attrs["status"] = ERROR
        attrs["error"] = f"the trial raised an exception: see {where}/{ERROR_FILE}"
        return attrs
    attrs["status"] = end_status(last, max_epochs) if ended else last.get("status", RUNNING)
    reason = last.get("reason") or last.get("error")  # a report's, or the attribute set before
    if reason:
        attrs["error"] = str(reason)
    return attrs
