"""Learning-curve tables (`benchmarks/tables`): the copy step keeps only the small table files
and refuses a recording that is not one; the shipped tables are small, complete, loadable with
`hpsearch.analysis`, and recorded with the recipe's space."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from benchmarks.tables import (
    META_FILE,
    README_FILE,
    TABLE_FILES,
    TableError,
    config_columns,
    copy_table,
    summarize,
)
from benchmarks.tables.__main__ import main
from hpsearch.analysis import load_run
from hpsearch.search.experiment.schema import load_experiment
from hpsearch.search.experiment.space import grid_size

REPO = Path(__file__).resolve().parents[2]
TABLES = REPO / "benchmarks" / "tables"
RECIPE = TABLES / "record.yaml"
SHIPPED = ("digits16", "shapes16")
KEPT = {*TABLE_FILES, META_FILE, README_FILE}


def fake_recording(run_dir: Path, *, status: str = "completed", scheduler: str = "none") -> Path:
    """A run directory as `hpsearch run benchmarks/tables/record.yaml` leaves it, cut down to
    two configurations x two seeds x three epochs, with the files a table leaves out."""
    run_dir.mkdir(parents=True)
    exp = yaml.safe_load(RECIPE.read_text())
    exp["data"]["folder"] = str(run_dir / "no-such-folder")
    exp["scheduler"]["type"] = scheduler
    (run_dir / "experiment.yaml").write_text(yaml.safe_dump(exp))
    best = {("sgd", 0): 0.50, ("sgd", 1): 0.54, ("adam", 0): 0.70, ("adam", 1): 0.66}
    trials, epochs = [], []
    for i, ((opt, seed), score) in enumerate(best.items()):
        tid = f"t{i}"
        trials.append(
            {
                "trial_id": tid,
                "status": status if i == 3 else "completed",
                "arch": "FlatAlexNet",
                "optimizer": opt,
                "lr": 0.01 if opt == "sgd" else 0.001,
                "seed": seed,
                "final_val_accuracy": score - 0.02,
                "best_val_accuracy": score,
                "seconds": 2.0 + i,
                "start_timestamp": 1_000 + i,
                "end_timestamp": 1_003 + i,
            }
        )
        for epoch in (1, 2, 3):
            epochs.append(
                {
                    "trial_id": tid,
                    "epoch": epoch,
                    "val_accuracy": score * epoch / 3,
                    "seconds": 0.5,
                    "time_total_s": 0.7 * epoch,
                }
            )
    pd.DataFrame(trials).to_parquet(run_dir / "trials.parquet")
    pd.DataFrame(epochs).to_parquet(run_dir / "epochs.parquet")
    for extra in ("steps.parquet", "confusion.parquet", "optuna.db", "tuner.pkl"):
        (run_dir / extra).write_bytes(b"x" * 1000)
    (run_dir / "trial_t0" / "checkpoint_000001").mkdir(parents=True)
    (run_dir / "versions.json").write_text('{"hpsearch": "9.9", "git_revision": "abc"}')
    return run_dir


def test_the_copy_keeps_only_the_table_and_loads_as_a_run(tmp_path):
    run_dir = fake_recording(tmp_path / "runs" / "rec")
    dest = tmp_path / "tables" / "mine"
    meta = copy_table(run_dir, dest, description="four trials made by hand")
    assert {p.name for p in dest.iterdir()} == KEPT
    s = meta["summary"]
    assert (s["trials"], s["configurations"], s["epochs_recorded"]) == (4, 2, 12)
    assert s["seeds"] == [0, 1]
    assert s["seed_spread"] == pytest.approx(0.04)  # |0.50 - 0.54| and |0.70 - 0.66|
    assert (s["final_best"], s["final_worst"]) == pytest.approx((0.68, 0.48))
    assert s["span_s"] == 6 and meta["versions"]["hpsearch"] == "9.9"
    assert meta["reproduce"].startswith(f"hpsearch run {dest / 'experiment.yaml'} --data ")
    readme = (dest / README_FILE).read_text()
    assert "four trials made by hand" in readme and "0.0400 apart" in readme

    run = load_run(dest)
    assert len(run.trials) == 4 and len(run.epochs) == 12
    assert load_experiment(dest / "experiment.yaml").search.algorithm == "grid"


def test_the_copy_refuses_what_is_no_table(tmp_path, capsys):
    with pytest.raises(TableError, match="not a finished run directory"):
        copy_table(tmp_path, tmp_path / "out")
    unfinished = fake_recording(tmp_path / "unfinished", status="incomplete")
    with pytest.raises(TableError, match="hpsearch resume"):
        copy_table(unfinished, tmp_path / "out")
    stopped = fake_recording(tmp_path / "asha", scheduler="asha")
    assert main([str(stopped), str(tmp_path / "out")]) == 2
    assert "scheduler.type none" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_table_is_small_complete_and_recorded_with_the_recipe(name):
    path = TABLES / name
    assert {p.name for p in path.iterdir()} == KEPT
    assert sum(p.stat().st_size for p in path.iterdir()) < 400_000

    exp = load_experiment(path / "experiment.yaml")
    recipe = load_experiment(RECIPE)
    assert exp.search.space == recipe.search.space and exp.train == recipe.train
    assert exp.scheduler.type == "none" and exp.data.image_size == 16

    run = load_run(path)
    trials, epochs = run.trials, run.epochs
    assert len(trials) == grid_size(exp.search.space) == 288
    assert set(trials["status"]) <= {"completed", "infeasible", "diverged", "oom"}
    keys = config_columns(trials)
    assert {"arch", "width", "mlp", "dropout", "batchnorm", "optimizer", "lr"} <= set(keys)
    assert not trials.duplicated([*keys, "seed"]).any()
    seeds = trials.groupby(keys, dropna=False)["seed"].apply(sorted)
    assert seeds.map(lambda s: s == [0, 1]).all(), seeds
    trained = trials.loc[trials["status"] == "completed", "trial_id"]
    per_trial = epochs.groupby("trial_id")["epoch"].max()
    assert (per_trial.loc[trained] == exp.train.epochs).all()
    assert epochs[["val_accuracy", "seconds", "time_total_s"]].notna().all().all()

    s = summarize(trials, epochs)
    assert s["configurations"] == 144 and s["seeds"] == [0, 1]
    if name == "shapes16":  # the harder task: its ranking is not saturated
        assert 0.6 <= s["final_best"] <= 0.9
        assert s["configs_within_0.01_of_best"] <= 10  # digits16: 37
