"""The replay benchmark's simulator (`benchmarks/replay.py`): pinned to a real `hpsearch run`, its
clock and its ratio checked on tables made by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from benchmarks.replay import (
    Replay,
    Strategy,
    Table,
    epochs_to_reach,
    pooled_ratio,
    ratio_interval,
    replay,
    seed_counts,
)
from hpsearch.search.cli import main
from hpsearch.search.experiment.schema import load_experiment

SPACE = {
    "arch": ["FlatAlexNet", "NarrowAlexNet"],
    "width": [0.25, 0.5],
    "optimizer": {"sgd": {"lr": [0.03, 0.3]}},
}
GRID = 8  # 2 x 2 x 2 configurations


def _doc(folder: Path, cache: Path, tmp: Path, **search) -> dict:
    return {
        "name": "pin",
        "data": {"folder": str(folder), "image_size": 16, "cache": str(cache)},
        "search": {"space": SPACE, "max_concurrent": 1, "metric": "val_accuracy", **search},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "train": {"epochs": 3, "batch_size": 16, "seed": 0},
        "resources": {"cpus": 1, "gpus": 0},
        "storage": str(tmp / "runs"),
    }


@pytest.mark.slow  # records an 8-trial table, then a real 6-trial search (about 50 s)
def test_the_replay_makes_the_decisions_of_a_real_run(
    ray_session, tmp_path, cache_root, write_experiment
):
    """On one worker, with the same seeds, the replay proposes the same configurations as a
    real `hpsearch run` (TPE + ASHA, hpsearch's searcher) and stops the same trials at the same
    epochs: their Optuna studies hold the same trials, states and intermediate values."""
    from tests.conftest import make_image_folder

    folder = make_image_folder(tmp_path / "images", classes=4, per_class=40, seed=1)
    record = _doc(folder, cache_root, tmp_path, algorithm="grid", num_trials=GRID)
    record["scheduler"] = {"type": "none"}
    record["search"]["max_concurrent"] = 2
    path = write_experiment(record, tmp_path)
    assert main(["run", str(path), "--name", "table", "-q"]) == 0
    table = Table.load(tmp_path / "runs" / "table")
    assert len(table.curves) == GRID and all(len(c) == 1 for c in table.curves.values())

    search = _doc(folder, cache_root, tmp_path, algorithm="tpe", num_trials=6, seed=3)
    path = write_experiment(search, tmp_path)
    assert main(["run", str(path), "--name", "real", "-q"]) == 0
    real_dir = tmp_path / "runs" / "real"
    real = optuna.load_study(study_name="pin", storage=f"sqlite:///{real_dir / 'optuna.db'}")

    strategy = Strategy("pin", sampler="tpe", scheduler="asha", grace=1, reduction=2)
    table.experiment = load_experiment(real_dir / "experiment.yaml")  # same space, tpe
    replayed, searcher = replay(table, strategy, seed=3, workers=1, trials=6)
    sim = searcher.searcher._ot_study

    def trials(study):
        return [
            (t.params, t.state, dict(t.intermediate_values))
            for t in sorted(study.trials, key=lambda t: t.number)
        ]

    # The real run trained what the table recorded (CPU training is deterministic), so the
    # decisions can only differ if the replay drives the searcher or scheduler differently.
    epochs = pd.read_parquet(real_dir / "epochs.parquet")
    assert len(epochs) == sum(n for _, n in replayed.trials)
    assert trials(real) == trials(sim)
    pruned = [t for t in real.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned  # ASHA stopped some: the comparison covers stops


def _hand_table(tmp_path, curves: dict[str, list[list[float]]], epoch_seconds: float = 10.0):
    """A table of preset names -> recorded curves (one per seed), each epoch taking
    `epoch_seconds`."""
    exp_path = tmp_path / "experiment.yaml"
    import yaml

    doc = {
        "name": "hand",
        "data": {"folder": str(tmp_path), "image_size": 16, "val_fraction": 0.2},
        "search": {"algorithm": "grid", "num_trials": 1, "space": {"arch": list(curves)}},
        "scheduler": {"type": "none"},
        "train": {"epochs": max(len(c) for cs in curves.values() for c in cs)},
    }
    exp_path.write_text(yaml.safe_dump(doc))
    exp = load_experiment(exp_path)
    trials, epochs = [], []
    for arch, recorded in curves.items():
        for s, curve in enumerate(recorded):
            tid = f"{arch}-{s}"
            trials.append({"trial_id": tid, "status": "completed", "arch": arch})
            for e, v in enumerate(curve, start=1):
                epochs.append(
                    {
                        "trial_id": tid,
                        "epoch": e,
                        "val_accuracy": v,
                        "time_total_s": e * epoch_seconds,
                    }
                )
    return Table.from_frames(tmp_path, exp, pd.DataFrame(trials), pd.DataFrame(epochs))


def test_the_clock_orders_epochs_across_workers_by_their_recorded_times(tmp_path):
    table = _hand_table(
        tmp_path,
        {"FlatAlexNet": [[0.1, 0.2, 0.3]], "NarrowAlexNet": [[0.4, 0.5, 0.6]]},
    )
    fifo = Strategy("random", sampler="random", scheduler="none")
    rep, _ = replay(table, fifo, seed=0, workers=2, trials=2)
    # Two trials side by side: their epochs finish together at 10, 20 and 30 s.
    assert rep.times == [10.0, 10.0, 20.0, 20.0, 30.0, 30.0]
    assert sorted(rep.scores) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    one, _ = replay(table, fifo, seed=0, workers=1, trials=2)
    assert one.times == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]  # one after the other


def test_each_seed_of_a_configuration_is_a_draw_of_the_noise(tmp_path):
    table = _hand_table(tmp_path, {"FlatAlexNet": [[0.1], [0.9]]})
    fifo = Strategy("random", sampler="random", scheduler="none")
    drawn = {replay(table, fifo, seed=s, workers=1, trials=1)[0].scores[0] for s in range(20)}
    assert drawn == {0.1, 0.9}


def test_asha_stops_a_trial_below_the_rung_and_frees_its_worker(tmp_path):
    table = _hand_table(
        tmp_path,
        {"FlatAlexNet": [[0.9, 0.9, 0.9, 0.9]], "NarrowAlexNet": [[0.1, 0.1, 0.1, 0.1]]},
    )
    asha = Strategy("asha", sampler="random", scheduler="asha", grace=1, reduction=2)
    spent = {}
    for seed in range(10):
        rep, _ = replay(table, asha, seed=seed, workers=1, trials=4)
        for config, epochs in rep.trials:
            spent.setdefault(config["arch"], set()).add(epochs)
    # The weak one is stopped at the first rung once the strong one set it; the strong one runs on.
    assert 1 in spent["NarrowAlexNet"] and spent["FlatAlexNet"] >= {4}


def test_the_ratio_is_epochs_to_the_baselines_best_pooled_over_seeds():
    """Worked by hand: seed 0's baseline reaches its best 0.8 at its 4th epoch, the other side
    at its 2nd; seed 1's baseline reaches 0.6 at its 2nd, the other side never (it spent 3
    epochs: all count). Pooled: (2 + 3) / (4 + 2) = 5/6."""
    base0 = Replay("random", 0, 1, times=[1, 2, 3, 4, 5], scores=[0.1, 0.5, 0.7, 0.8, 0.8])
    other0 = Replay("x", 0, 1, times=[1, 2, 3], scores=[0.3, 0.85, 0.2])
    base1 = Replay("random", 1, 1, times=[1, 2], scores=[0.2, 0.6])
    other1 = Replay("x", 1, 1, times=[1, 2, 3], scores=[0.5, 0.55, 0.59])
    assert epochs_to_reach(base0, 0.8) == 4 and epochs_to_reach(other1, 0.6) is None
    counts = [seed_counts(base0, other0), seed_counts(base1, other1)]
    assert counts[0] == {"bar": 0.8, "baseline": 4, "other": 2, "reached": True}
    assert counts[1] == {"bar": 0.6, "baseline": 2, "other": 3, "reached": False}
    assert math.isclose(pooled_ratio(counts), 5 / 6)
    lo, hi = ratio_interval(counts)
    assert lo <= 5 / 6 <= hi and lo >= 0.5 and hi <= 1.5  # resampled pairs: 2/4, 5/6 or 3/2


def test_a_configuration_outside_the_table_is_named(tmp_path):
    table = _hand_table(tmp_path, {"FlatAlexNet": [[0.5]]})
    with pytest.raises(KeyError, match="does not hold"):
        table.draw({"arch": "AlexNet"}, np.random.default_rng(0))


def test_a_folder_that_is_no_table_says_how_to_record_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="record one"):
        Table.load(tmp_path)
