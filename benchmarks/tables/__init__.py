"""Learning-curve tables (as NAS-Bench-201, LCBench and HPOBench record them): every configuration
of a discrete space trained to its last epoch, with two or more training seeds, recorded once so
that searches can be replayed against it without training (`benchmarks/replay.py`).

A table is an ordinary hpsearch run directory cut down to what a replay reads: `trials.parquet`
(one row per trial: its config columns, `seed` among them, its status and final / best scores),
`epochs.parquet` (per epoch: `val_accuracy` and the other metrics, `seconds`, `time_total_s`
since the trial started) and `experiment.yaml` (the resolved experiment it was recorded with),
plus `meta.json` and `README.md` (what the data is, when, where, how fast, the command). It
loads with `hpsearch.analysis.load_run` like any run.

Recording one (docs: Benchmarks > Recording a learning-curve table):

    hpsearch run benchmarks/tables/record.yaml --data FOLDER --name NAME
    python -m benchmarks.tables runs/NAME benchmarks/tables/NAME --description "what the data is"

Shipped: `digits16/` (scikit-learn's 1,797 digits at 16 px, half of them validating) and
`shapes16/` (2,000 synthetic photos of `benchmarks/synthetic.py` at 16 px).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from benchmarks.bench_data import _cpu_model
from hpsearch.rundir import (
    EPOCHS_FILE,
    EXPERIMENT_FILE,
    TRIALS_FILE,
    VERSIONS_FILE,
    write_json,
    write_text,
)
from hpsearch.search.experiment.dimensions import DIMENSIONS

TABLE_FILES = (TRIALS_FILE, EPOCHS_FILE, EXPERIMENT_FILE)
META_FILE = "meta.json"
README_FILE = "README.md"
RECIPE = "benchmarks/tables/record.yaml"  # the experiment file that records a table
SEED_KEY = DIMENSIONS["seed"].key
# How a recorded trial may end: trained to its last epoch, or ended at once for a reason that
# is part of the configuration (a feature map that vanishes, a loss that diverges, no memory).
RECORDED = ("completed", "infeasible", "diverged", "oom")


class TableError(ValueError):
    """A run directory that cannot become a table; the message says what to do."""


def config_columns(trials: pd.DataFrame) -> list[str]:
    """The trials table's columns that name a configuration: the search dimensions' config keys
    it has, the training seed left out."""
    keys = {d.key for d in DIMENSIONS.values()} - {SEED_KEY}
    return sorted(keys & set(trials.columns))


def summarize(trials: pd.DataFrame, epochs: pd.DataFrame, *, metric: str = "val_accuracy"):
    """The figures a table's README states: trials, configurations, seeds, epochs recorded, the
    best / median / worst final score over the trials, how far apart the seeds of one
    configuration end (the mean over configurations of max - min of their best scores: for two
    seeds, the mean |seed 0 - seed 1|), how many configurations come within 0.01 of the best
    (a saturated task has many), the median seconds per trial and the recording's span."""
    keys = config_columns(trials)
    final = trials[f"final_{metric}"].dropna()
    by_config = trials.groupby(keys, dropna=False)[f"best_{metric}"]
    spread = (by_config.max() - by_config.min())[by_config.count() >= 2]
    means = by_config.mean()
    seeds = sorted(int(s) for s in trials[SEED_KEY].dropna().unique()) if SEED_KEY in trials else []
    start, end = trials["start_timestamp"].min(), trials["end_timestamp"].max()
    return {
        "trials": int(len(trials)),
        "statuses": {str(k): int(v) for k, v in trials["status"].value_counts().items()},
        "configurations": int(by_config.ngroups),
        "seeds": seeds,
        "epochs_recorded": int(len(epochs)),
        "metric": metric,
        "final_best": float(final.max()),
        "final_median": float(final.median()),
        "final_worst": float(final.min()),
        "seed_spread": float(spread.mean()) if len(spread) else None,
        "configs_within_0.01_of_best": int((means >= means.max() - 0.01).sum()),
        "median_trial_s": float(trials["seconds"].median()),
        "span_s": float(end - start) if pd.notna(start) and pd.notna(end) else None,
    }


def _check(run_dir: Path, trials: pd.DataFrame, epochs: pd.DataFrame, exp: dict) -> None:
    unfinished = trials.loc[~trials["status"].isin(RECORDED)]
    if len(unfinished):
        counts = unfinished["status"].value_counts().to_dict()
        raise TableError(
            f"{run_dir}: {len(unfinished)} trial(s) did not finish ({counts}): a table records "
            f"every configuration to its end; continue it with `hpsearch resume {run_dir}`"
        )
    if (exp.get("scheduler") or {}).get("type") != "none":
        raise TableError(
            f"{run_dir}: recorded with scheduler.type "
            f"{(exp.get('scheduler') or {}).get('type')!r}, which stops trials early; a table "
            f"needs every curve to its last epoch: record with scheduler.type none ({RECIPE} "
            "does)"
        )
    if "time_total_s" not in epochs or epochs["time_total_s"].isna().any():
        raise TableError(f"{run_dir}: {EPOCHS_FILE} has no time_total_s for some epochs")


def _readme(name: str, meta: dict[str, Any]) -> str:
    s, d = meta["summary"], meta["data"]
    spread = "–" if s["seed_spread"] is None else f"{s['seed_spread']:.4f}"
    return "\n".join(
        [
            f"# Learning-curve table `{name}`",
            "",
            meta.get("description") or "(no description given)",
            "",
            f"- data: `{d['folder']}`, {d.get('images', '?')} images at {d['image_size']} px; "
            f"{d['val_fraction']:.0%} validate, {d['test_fraction']:.0%} held out unused",
            f"- {s['trials']} trials = {s['configurations']} configurations x seeds "
            f"{s['seeds']}, {meta['epochs']} epochs each ({s['epochs_recorded']} epochs "
            f"recorded); statuses {s['statuses']}",
            f"- final {s['metric']}: best {s['final_best']:.4f}, median {s['final_median']:.4f}, "
            f"worst {s['final_worst']:.4f}; {s['configs_within_0.01_of_best']} configurations "
            f"within 0.01 of the best (mean over seeds)",
            f"- seeds of one configuration: best scores {spread} apart on average",
            f"- recorded {meta['recorded']} on {meta['machine']['cpu']} "
            f"({meta['machine']['cores']} cores), {s['median_trial_s']:.1f} s per trial "
            f"(median), {s['span_s'] or 0:.0f} s from the first trial's start to the last one's "
            f"end; hpsearch {meta['versions'].get('hpsearch', '?')} "
            f"({meta['versions'].get('git_revision', 'no git revision')[:12]}), torch "
            f"{meta['versions'].get('torch', '?')}",
            f"- recorded with: `{meta['command']}`",
            f"- again, exactly: `{meta['reproduce']}`",
            "",
            "Files: trials.parquet, epochs.parquet, experiment.yaml (hpsearch's run-directory "
            "format; `hpsearch.analysis.load_run(DIR)` reads them), meta.json (these figures).",
            "",
        ]
    )


def _image_count(folder: str | None) -> int | None:
    if not folder or not Path(folder).is_dir():
        return None
    # lazy: the data pipeline's scan, only for the count (a folder may be gone by now)
    from hpsearch.data_pipeline.scan import OK, scan

    manifest = scan(folder)
    return int((manifest["status"] == OK).sum())


def copy_table(
    run_dir: str | Path,
    dest: str | Path,
    *,
    description: str | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Copy a finished recording's table files from `run_dir` into `dest` (created; files of
    an earlier copy are replaced) with meta.json and README.md; return the meta. Raises
    TableError for a folder that is no recording, or one with unfinished or early-stopped
    trials."""
    run_dir, dest = Path(run_dir), Path(dest)
    missing = [f for f in TABLE_FILES if not (run_dir / f).is_file()]
    if missing:
        raise TableError(
            f"{run_dir}: not a finished run directory (no {', '.join(missing)}); record one "
            f"with `hpsearch run {RECIPE} --data FOLDER --name NAME`"
        )
    trials = pd.read_parquet(run_dir / TRIALS_FILE)
    epochs = pd.read_parquet(run_dir / EPOCHS_FILE)
    exp = yaml.safe_load((run_dir / EXPERIMENT_FILE).read_text()) or {}
    _check(run_dir, trials, epochs, exp)
    versions_file = run_dir / VERSIONS_FILE
    versions = json.loads(versions_file.read_text()) if versions_file.is_file() else {}
    data = exp.get("data") or {}
    metric = (exp.get("search") or {}).get("metric") or "val_accuracy"
    summary = summarize(trials, epochs, metric=metric)
    start = trials["start_timestamp"].min()
    recorded = (
        dt.datetime.fromtimestamp(int(start), dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        if pd.notna(start)
        else "?"
    )
    # Nothing of this machine travels with the table: the image folder by its name only, the
    # run's storage and cache left to the defaults.
    folder = Path(data["folder"]).name if data.get("folder") else "FOLDER"
    reproduce = f"hpsearch run {dest / EXPERIMENT_FILE} --data {folder}"
    meta = {
        "name": dest.name,
        "description": description,
        "data": {
            "folder": folder,
            "images": _image_count(data.get("folder")),
            "image_size": data.get("image_size"),
            "val_fraction": data.get("val_fraction"),
            "test_fraction": data.get("test_fraction"),
            "seed": data.get("seed"),
        },
        "epochs": (exp.get("train") or {}).get("epochs"),
        "recorded": recorded,
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count()},
        "versions": versions,
        "command": command or f"hpsearch run {RECIPE} --data {folder} --name {run_dir.name}",
        "reproduce": reproduce,
        "summary": summary,
    }
    dest.mkdir(parents=True, exist_ok=True)
    for name in TABLE_FILES:
        if name == EXPERIMENT_FILE:
            portable = {**exp, "data": {**data, "folder": folder}, "storage": "runs"}
            portable["data"].pop("cache", None)
            write_text(dest / name, yaml.safe_dump(portable, sort_keys=False))
        else:
            shutil.copyfile(run_dir / name, dest / name)
    write_json(dest / META_FILE, meta)
    write_text(dest / README_FILE, _readme(dest.name, meta))
    return meta
