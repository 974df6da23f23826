from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from hpsearch.rundir import write_text
from hpsearch.search.driver.export import collect, export_run


def trial(
    run: Path,
    trial_id: str,
    config: dict,
    results: list[dict],
    *,
    error: str = "",
    cut: bool = False,
) -> None:
    d = run / f"trial_{trial_id}"
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(config))
    text = "".join(json.dumps(r) + "\n" for r in results)
    (d / "result.json").write_text(text + ('{"epoch": 9, "val_acc' if cut else ""))
    if error:
        (d / "error.txt").write_text(f"Traceback...\n{error}\n")


def epoch(e: int, acc: float, steps: list[float], **extra) -> dict:
    return {
        "epoch": e,
        "train_loss": 1.0 / e,
        "train_accuracy": acc,
        "train_macro_precision": acc,
        "val_loss": 1.0 / e,
        "val_accuracy": acc,
        "val_macro_precision": acc,
        "step_loss": steps,
        "confusion": [[2, 0], [1, 1]],
        "seconds": 1.0,
        "images_per_s": 100.0,
        "time_total_s": float(e),
        "timestamp": 1000 + e,
        "status": "running",
        "params": 10,
        "macs": 20,
        **extra,
    }


def state(run: Path, statuses: dict[str, str]) -> None:
    data = {
        "trial_data": [
            [json.dumps({"trial_id": t, "status": s, "config": {}}), "{}"]
            for t, s in statuses.items()
        ]
    }
    (run / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(data))


def test_statuses_metrics_steps_and_confusion(tmp_path):
    run = tmp_path / "run"
    trial(
        run, "a", {"arch": "AlexNet", "lr": 0.1}, [epoch(1, 0.5, [2.0, 1.5]), epoch(2, 0.75, [1.0])]
    )
    trial(run, "b", {"arch": "FlatAlexNet"}, [epoch(1, 0.6, [2.0])])  # stopped by ASHA
    trial(
        run,
        "c",
        {"arch": "AlexNet"},
        [
            {
                "epoch": 1,
                "status": "diverged",
                "reason": "non-finite training loss at step 3",
                "step_loss": [1.0, 5.0, float("nan")],
                "val_accuracy": 0.0,
            }
        ],
    )
    trial(
        run,
        "d",
        {"arch": "AlexNet"},
        [{"epoch": 0, "status": "infeasible", "reason": "conv2: too small", "val_accuracy": 0.0}],
    )
    trial(
        run,
        "e",
        {"arch": "AlexNet"},
        [epoch(1, 0.4, [3.0])],
        error="RuntimeError: out of memory",
        cut=True,
    )
    trial(
        run, "f", {"arch": "AlexNet"}, [epoch(1, 0.4, [3.0])]
    )  # still running when the run stopped
    trial(run, "orphan", {"arch": "AlexNet"}, [])  # started after Tune's last snapshot
    state(
        run,
        {
            "a": "TERMINATED",
            "b": "TERMINATED",
            "c": "TERMINATED",
            "d": "TERMINATED",
            "e": "ERROR",
            "f": "RUNNING",
            "g": "PENDING",
        },
    )

    tables = collect(run, epochs=2, classes=["cat", "dog"])
    trials = tables["trials"].set_index("trial_id")
    assert trials["status"].to_dict() == {
        "a": "completed",
        "b": "stopped",
        "c": "diverged",
        "d": "infeasible",
        "e": "error",
        "f": "incomplete",
        "g": "pending",
    }
    assert trials.loc["a", "best_val_accuracy"] == 0.75 and trials.loc["a", "final_val_loss"] == 0.5
    assert trials.loc["a", "best_val_loss"] == 0.5 and trials.loc["a", "lr"] == 0.1
    assert (
        trials.loc["c", "error"].startswith("non-finite")
        and trials.loc["d", "error"] == "conv2: too small"
    )
    assert trials.loc["e", "error"] == "RuntimeError: out of memory"
    assert trials.loc["d", "epochs"] == 0 and pd.isna(trials.loc["d", "best_val_accuracy"])

    steps = tables["steps"]
    assert steps[steps.trial_id == "a"]["step"].tolist() == [1, 2, 3]
    assert steps[steps.trial_id == "a"]["loss"].tolist() == [2.0, 1.5, 1.0]
    assert len(steps[steps.trial_id == "c"]) == 3  # up to the step that diverged

    conf = tables["confusion"]
    a = conf[conf.trial_id == "a"]
    assert a["epoch"].unique().tolist() == [2] and a["count"].sum() == 4
    assert a[(a.true_class == "dog") & (a.pred_class == "cat")]["count"].item() == 1
    assert set(tables["epochs"]["trial_id"]) == {"a", "b", "e", "f"}


def test_export_writes_parquet_atomically(tmp_path):
    run = tmp_path / "run"
    trial(run, "a", {"arch": "AlexNet"}, [epoch(1, 0.5, [1.0])])
    export_run(run, epochs=1, classes=["cat", "dog"])
    for name in ("trials", "epochs", "steps", "confusion"):
        assert len(pd.read_parquet(run / f"{name}.parquet")) > 0
    assert not list(run.glob(".*tmp*"))
    write_text(run / "x.txt", "hello")
    assert (run / "x.txt").read_text() == "hello"


def test_an_empty_run_gives_empty_tables_with_columns(tmp_path):
    tables = collect(tmp_path, epochs=3, classes=[])
    assert tables["trials"].empty and "status" in tables["trials"].columns
    assert "loss" in tables["steps"].columns


def test_the_trials_table_marks_the_pareto_fronts_by_the_runs_metric(tmp_path):
    """`pareto`: on the front of best_<metric> against MACs, `pareto_params`: against
    parameters; an over-budget trial (its cost reported, no epoch) is on neither."""
    run = tmp_path / "run"
    trial(run, "a", {"arch": "A"}, [epoch(1, 0.5, [1.0], macs=100, params=50)])
    trial(run, "b", {"arch": "B"}, [epoch(1, 0.7, [1.0], macs=300, params=40)])
    trial(run, "c", {"arch": "C"}, [epoch(1, 0.6, [1.0], macs=400, params=10)])
    over = {"epoch": 0, "status": "infeasible", "val_accuracy": 0.0, "macs": 9, "params": 1}
    trial(run, "d", {"arch": "D"}, [{**over, "reason": "over budget: 9 MACs > ..."}])
    state(run, dict.fromkeys("abcd", "TERMINATED"))
    trials = collect(run, epochs=1, classes=["x", "y"])["trials"].set_index("trial_id")
    assert trials["pareto"].to_dict() == {"a": True, "b": True, "c": False, "d": False}
    assert trials["pareto_params"].to_dict() == {"a": False, "b": True, "c": True, "d": False}
    assert trials.loc["d", "macs"] == 9 and trials.loc["d", "status"] == "infeasible"
    # by the run's metric and mode: val_loss (1 / epoch: the same for all) is lowest for all
    by_loss = collect(run, epochs=1, classes=["x", "y"], metric="val_loss", mode="min")
    assert by_loss["trials"].set_index("trial_id")["pareto"].to_dict() == {
        "a": True, "b": False, "c": False, "d": False,
    }  # fmt: skip
    export_run(run, epochs=1, classes=["x", "y"])
    written = pd.read_parquet(run / "trials.parquet")
    assert written["pareto"].dtype == bool and written["pareto"].sum() == 2
