"""Turn a run directory (Ray Tune's experiment folder) into the tidy Parquet tables that
analysis reads: trials, epochs, steps, confusion. Reads only files, so it works the same at the
end of a run, after Ctrl-C, and after a crash (then on `resume`). Every file is written to a
temporary name and renamed, so a reader never sees half a table.
"""

from __future__ import annotations

import glob
import importlib.metadata as md
import json
import math
import platform
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

from hpsearch.analysis.pareto import pareto_front
from hpsearch.rundir import (
    ERROR_FILE,
    METRIC_COLUMNS,
    PARAMS_FILE,
    PARETO_COLUMNS,
    RESULT_FILE,
    TRIAL_PREFIX,
    TUNE_STATE_GLOB,
    best_column,
    best_value,
    coerce,
    empty_frame,
    rank_trials,
    table_file,
    write_parquet,
)
from hpsearch.search.errors import ExperimentError
from hpsearch.search.trial.report import ENDED_BY_TRAINABLE, ERROR, REPLAYED, end_status

_RESERVED = {"step_loss", "confusion", "config", "reason", "status"}


def tune_statuses(run_dir: Path) -> dict[str, dict[str, Any]]:
    """trial_id -> {'status', 'config'} from Ray Tune's newest experiment state file."""
    # The newest by the session time in the name: Tune may touch an older file on restore.
    files = sorted(glob.glob(str(Path(run_dir) / TUNE_STATE_GLOB)))
    if not files:
        return {}
    try:
        state = json.loads(Path(files[-1]).read_text())
        out = {}
        for trial_json, _meta in state["trial_data"]:
            t = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
            out[t["trial_id"]] = {"status": t.get("status"), "config": t.get("config") or {}}
        return out
    except (ValueError, KeyError, TypeError):
        return {}  # an unknown state format: statuses then come from the results alone


def trial_config(run_dir: Path, trial_id: str) -> dict[str, Any]:
    """The config a search trial ran with (its params.json); ExperimentError for an unknown
    trial, naming the ones the run has."""
    path = Path(run_dir) / f"{TRIAL_PREFIX}{trial_id}" / PARAMS_FILE
    if not path.is_file():
        known = sorted(p.name[len(TRIAL_PREFIX) :] for p in Path(run_dir).glob(f"{TRIAL_PREFIX}*"))
        raise ExperimentError(f"--trial {trial_id}: no such trial in {run_dir}; it has {known}")
    return json.loads(path.read_text())


def read_results(trial_dir: Path) -> list[dict[str, Any]]:
    """The trial's reports in order. A trial that was restored from an older checkpoint, or
    restarted from scratch, reports some epochs again: the later report of an epoch replaces
    the earlier one and everything after it. A report a restarted trial replayed from its
    checkpoint stands in only for an epoch that is missing (the crash came between the
    checkpoint and the report's line)."""
    path = Path(trial_dir) / RESULT_FILE
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except ValueError:
            break  # a line cut by a crash: keep what came before
        epoch = row.get("epoch")
        if row.pop(REPLAYED, False) and any(r.get("epoch") == epoch for r in rows):
            continue
        if epoch is not None:
            rows = [r for r in rows if r.get("epoch") is None or r["epoch"] < epoch]
        rows.append(row)
    return rows


def _read_params(trial_dir: Path) -> dict[str, Any]:
    """The trial's params.json, or {} where it is missing, or empty or cut because the run was
    killed while Tune wrote it (Tune's own snapshot then has the config)."""
    try:
        params = json.loads((trial_dir / PARAMS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return params if isinstance(params, dict) else {}


def _error_text(trial_dir: Path) -> str:
    path = trial_dir / ERROR_FILE
    if not path.exists():
        return ""
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "error"


def collect(
    run_dir: str | Path,
    *,
    epochs: int,
    classes: list[str],
    metric: str = "val_accuracy",
    mode: str | None = None,
) -> dict[str, pd.DataFrame]:
    """Build the four tables from a run directory. `epochs` is the experiment's budget per
    trial (to tell completed from early-stopped trials), `classes` the label names; `metric`
    and `mode` (the search's) choose the Pareto fronts the trials table marks."""
    run_dir = Path(run_dir)
    tune_state = tune_statuses(run_dir)
    trial_rows, epoch_rows, step_rows, confusion_rows = [], [], [], []
    dirs = {p.name[len(TRIAL_PREFIX) :]: p for p in run_dir.glob(f"{TRIAL_PREFIX}*") if p.is_dir()}
    # A trial folder that Tune's newest state does not list was started after the last
    # snapshot before a crash; `resume` replaced it with a fresh trial, so it is not a result.
    ids = set(tune_state) if tune_state else set(dirs)
    for trial_id in sorted(ids):
        trial_dir = dirs.get(trial_id)
        results = read_results(trial_dir) if trial_dir else []
        config = _read_params(trial_dir) if trial_dir else {}
        config = config or tune_state.get(trial_id, {}).get("config", {})
        tune_status = tune_state.get(trial_id, {}).get("status")
        last = results[-1] if results else {}
        status = last.get("status")
        error = _error_text(trial_dir) if trial_dir else ""
        if status in ENDED_BY_TRAINABLE:
            pass
        elif tune_status == "ERROR" or (error and tune_status is None):
            status = ERROR
        elif not results:
            status = "pending"
        elif tune_status in ("RUNNING", "PENDING", "PAUSED"):
            status = "incomplete"
        else:
            status = end_status(last, epochs)

        step = 0
        for r in results:
            if "train_loss" in r:
                epoch_rows.append(
                    {
                        "trial_id": trial_id,
                        "epoch": r["epoch"],
                        **{m: r.get(m) for m in METRIC_COLUMNS},
                        "seconds": r.get("seconds"),
                        "images_per_s": r.get("images_per_s"),
                        "node_id": r.get("node_id"),
                        "time_total_s": r.get("time_total_s"),
                        "timestamp": r.get("timestamp"),
                    }
                )
            for loss in r.get("step_loss") or []:
                step += 1
                step_rows.append(
                    {"trial_id": trial_id, "step": step, "epoch": r.get("epoch"), "loss": loss}
                )
        last_conf = next((r for r in reversed(results) if r.get("confusion")), None)
        if last_conf:
            for i, row in enumerate(last_conf["confusion"]):
                for j, count in enumerate(row):
                    confusion_rows.append(
                        {
                            "trial_id": trial_id,
                            "epoch": last_conf["epoch"],
                            "true_label": i,
                            "pred_label": j,
                            "true_class": classes[i] if i < len(classes) else str(i),
                            "pred_class": classes[j] if j < len(classes) else str(j),
                            "count": int(count),
                        }
                    )

        row: dict[str, Any] = {"trial_id": trial_id, "status": status}
        row.update({k: v for k, v in config.items() if not isinstance(v, dict | list)})
        first = results[0] if results else {}
        for key in ("params", "macs", "precision", "channels_last", "device", "data_placement"):
            row[key] = first.get(key)
        for key, value in first.items():
            if key.startswith("model_"):
                row[key] = value
        measured = [r for r in results if "train_loss" in r]
        row["epochs"] = len(measured)
        row["node_id"] = last.get("node_id")  # where the trial ran last (a retry may move it)
        for m in METRIC_COLUMNS:
            values = [r[m] for r in measured if r.get(m) is not None and math.isfinite(r[m])]
            row[f"final_{m}"] = values[-1] if values else None
            row[best_column(m)] = best_value(values, m)
        row["seconds"] = last.get("time_total_s")
        row["start_timestamp"] = first.get("timestamp")
        row["end_timestamp"] = last.get("timestamp")
        row["error"] = last.get("reason") or error or None
        trial_rows.append(row)

    def frame(rows: list[dict[str, Any]], table: str) -> pd.DataFrame:
        return coerce(pd.DataFrame(rows), table) if rows else empty_frame(table)

    trials = frame(trial_rows, "trials")
    if trial_rows:  # the best value against each cost: which trials no other beats on both
        for cost, column in PARETO_COLUMNS.items():
            trials[column] = pareto_front(trials, metric=metric, mode=mode, cost=cost)
    return {
        "trials": trials,
        "epochs": frame(epoch_rows, "epochs"),
        "steps": frame(step_rows, "steps"),
        "confusion": frame(confusion_rows, "confusion"),
    }


def export_run(
    run_dir: str | Path,
    *,
    epochs: int,
    classes: list[str],
    metric: str = "val_accuracy",
    mode: str | None = None,
) -> dict[str, pd.DataFrame]:
    """Write trials/epochs/steps/confusion .parquet into the run directory; return the tables."""
    run_dir = Path(run_dir)
    tables = collect(run_dir, epochs=epochs, classes=classes, metric=metric, mode=mode)
    for name, df in tables.items():
        write_parquet(df, run_dir / table_file(name))
    return tables


def library_versions() -> dict[str, str]:

    out = {"python": platform.python_version()}
    for dist in (
        "hpsearch",
        "torch",
        "torchvision",
        "ray",
        "optuna",
        "torchmetrics",
        "numpy",
        "pandas",
        "pyarrow",
        "pydantic",
        "scikit-learn",
        "pillow",
    ):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        if rev.returncode == 0:
            out["git_revision"] = rev.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def search_failure(trials: pd.DataFrame, run_dir: str | Path) -> str | None:
    """Why the search failed, or None: it failed when no trial finished an epoch. Names the
    most common error among the trials and where their error files are."""
    if (trials["epochs"].fillna(0) > 0).any():
        return None
    lines = [f"the search failed: none of its {len(trials)} trial(s) finished an epoch"]
    counts = trials["error"].value_counts()  # NaN (no error) not counted
    if len(counts):
        lines.append(
            f"most common error ({counts.iloc[0]} of {len(trials)} trials): {counts.index[0]}"
        )
    failed = trials.loc[trials["status"] == ERROR, "trial_id"]
    if len(failed):
        lines.append(
            f"tracebacks: {Path(run_dir) / TRIAL_PREFIX}<id>/{ERROR_FILE}, e.g. "
            f"{Path(run_dir) / (TRIAL_PREFIX + str(failed.iloc[0])) / ERROR_FILE}"
        )
    return "\n".join(lines)


def format_best(trials: pd.DataFrame, *, metric: str, mode: str, top: int = 5) -> str:
    """The console summary of a trials table: counts by status and the best `top` trials."""
    col = best_column(metric)
    if trials.empty or col not in trials or trials[col].notna().sum() == 0:
        return "no trial finished an epoch"
    shown = [
        c
        for c in ["trial_id", "status", "arch", "optimizer", "lr", "epochs", col, "params"]
        if c in trials
    ]
    best = rank_trials(trials, metric, mode).head(top)[shown]
    counts = trials["status"].value_counts().to_dict()
    lines = [
        f"trials: {len(trials)} ({', '.join(f'{v} {k}' for k, v in counts.items())})",
        f"best {top} by {col}:",
        best.to_string(index=False, float_format=lambda v: f"{v:.4g}"),
    ]
    return "\n".join(lines)
