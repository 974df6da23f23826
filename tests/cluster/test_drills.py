"""Multi-node drill on a local two-node Ray cluster (head + one worker, one CPU each): a
search submitted as a Ray Job runs trials on both nodes; then the worker dies, every process at
once, while one of its trials has epochs to go; that trial goes on elsewhere from its last
checkpoint and the search completes its whole budget. One search serves every test below (each
checks one promise), as Ray's start-up dominates the time. The commands are the README's ("Run
on a Ray cluster"), with 127.0.0.1 addresses; without Ray's dashboard (ray[default]) the driver
runs on the head directly, as after `ray attach`, and only the job test is skipped.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


BASE = {
    "name": "drill",
    "search": {
        "algorithm": "random",
        "num_trials": 4,
        "max_concurrent": 2,  # one trial per node: each node has one CPU
        "space": {
            "arch": "FlatAlexNet",
            "width": 0.25,
            "mlp_layers": 0,
            "optimizer": {"sgd": {"lr": {"low": 0.01, "high": 0.1, "log": True}}},
        },
    },
    "scheduler": {"type": "none"},
    "train": {"epochs": 2, "batch_size": 16},
    "resources": {"cpus": 1, "gpus": 0},
    "failure": {"max_retries": 2},
}


EPOCHS = 6
TRIALS = 3


@pytest.fixture(scope="module")
def drill(two_nodes, tmp_path_factory, small_folder, cache_root, write_experiment, reports):
    cluster = two_nodes
    tmp = tmp_path_factory.mktemp("drill")
    path = write_experiment(
        BASE,
        tmp,
        data={"folder": str(small_folder), "image_size": 16, "cache": str(cache_root)},
        # Shared storage: every node of this cluster sees this folder at the same path.
        storage=str(tmp / "runs"),
        **{"search.num_trials": TRIALS, "train.epochs": EPOCHS},
    )
    run_dir = tmp / "runs" / "drill"
    search = ["hpsearch", "run", str(path), "--name", "drill"]
    log = tmp / "driver.log"
    if cluster.dashboard:
        # The README's command, from the repository root: the job ships the working copy,
        # and `ray job submit` follows the job's output until it ends.
        ray = str(BIN / "ray")
        submit = [ray, "job", "submit", "--address", cluster.dashboard_url, "--working-dir", "."]
        driver = cluster.popen(
            [*submit, "--submission-id", "drill", "--", *search, "--address", "auto"], log, cwd=REPO
        )
    else:
        search[0] = str(BIN / "hpsearch")
        driver = cluster.popen([*search, "--address", cluster.address], log, cwd=tmp)

    # Until a trial on the worker has a checkpoint and epochs to go; then the worker dies. At
    # least three epochs to go: finding the node's processes in /proc takes long enough for a
    # trial of these tiny epochs to finish one or two more (a fresh-clone run saw it finish).
    lost, deadline = None, time.monotonic() + 240
    while lost is None:
        assert driver.poll() is None, log.read_text()[-4000:] + cluster.logs()
        assert time.monotonic() < deadline, "no trial ran on the worker\n" + cluster.logs()
        for result in run_dir.glob("trial_*/result.json"):
            rows = reports(result)
            if rows and 1 <= rows[-1]["epoch"] <= EPOCHS - 3:
                node = cluster.node_of_pid(rows[-1]["pid"])
                if node is not None and node is not cluster.head:
                    lost = result.parent.name.removeprefix("trial_"), rows[-1], node
                    break
        time.sleep(0.05)
    trial_id, last_report, node = lost
    cluster.kill_node(node)

    code = driver.wait(timeout=240)
    return SimpleNamespace(
        run_dir=run_dir,
        job=cluster.dashboard,
        code=code,
        logs=log.read_text(),
        lost_trial=trial_id,
        last_report=last_report,
    )


def test_the_search_runs_as_a_ray_job(drill):
    if not drill.job:
        pytest.skip("Ray Jobs need Ray's dashboard: install ray[default]")
    assert drill.code == 0 and "Job 'drill' succeeded" in drill.logs, drill.logs[-4000:]
    assert f"results: {drill.run_dir}" in drill.logs


def test_trials_ran_on_both_nodes(drill):
    epochs = pd.read_parquet(drill.run_dir / "epochs.parquet")
    assert epochs["node_id"].notna().all()
    assert epochs["node_id"].nunique() == 2, epochs[["trial_id", "epoch", "node_id"]]
    trials = pd.read_parquet(drill.run_dir / "trials.parquet")
    assert set(trials["node_id"]) <= set(epochs["node_id"])


def test_the_search_completes_its_whole_budget(drill):
    assert drill.code == 0, drill.logs[-4000:]
    trials = pd.read_parquet(drill.run_dir / "trials.parquet")
    assert len(trials) == TRIALS
    assert set(trials["status"]) == {"completed"}, trials[["trial_id", "status", "error"]]
    assert (trials["epochs"] == EPOCHS).all()


def test_the_lost_workers_trial_resumed_from_its_checkpoint(drill, reports):
    lost_node = drill.last_report["node_id"]
    rows = reports(drill.run_dir / f"trial_{drill.lost_trial}" / "result.json")
    moved = [r for r in rows if r["node_id"] != lost_node]
    # It went on on another node, from the epoch after its last checkpoint, not from epoch 1.
    assert moved, [(r["epoch"], r["node_id"][:8]) for r in rows]
    assert moved[0]["epoch"] > 1 and moved[0]["epoch"] >= drill.last_report["epoch"], [
        (r["epoch"], r["node_id"][:8]) for r in rows
    ]
    epochs = pd.read_parquet(drill.run_dir / "epochs.parquet")
    lost = epochs[epochs["trial_id"] == drill.lost_trial]
    assert sorted(lost["epoch"]) == list(range(1, EPOCHS + 1))
    assert lost.sort_values("epoch")["node_id"].iloc[-1] != lost_node
