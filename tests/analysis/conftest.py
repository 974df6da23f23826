"""A small run directory built from DataFrames: the tables `search.export` writes, an
experiment.yaml, folds.parquet and an Optuna study, without running a search."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

CLASSES = ["Celebrities", "People", "Landscape", "Travel"]
STEPS_PER_EPOCH = 30
EPOCHS = 4

# trial_id, arch, optimizer, dropout, status, epochs run, final val accuracy
TRIALS = [
    ("t0", "AlexNet", "sgd", 0.0, "completed", 4, 0.70),
    ("t1", "AlexNet", "adam", 0.25, "completed", 4, 0.80),
    ("t2", "FlatAlexNet", "sgd", 0.5, "completed", 4, 0.75),
    ("t3", "FlatAlexNet", "adam", 0.25, "stopped", 2, 0.40),
    ("t4", "NarrowAlexNet", "sgd", 0.0, "completed", 4, 0.60),
    ("t5", "NarrowAlexNet", "adam", 0.5, "diverged", 1, None),
    ("t6", "AlexNet", "sgd", 0.25, "infeasible", 0, None),
]

# MACs per image of each trial above: the front by MACs (t3, t2, t1) differs from the one by
# parameters (t0, t1); the infeasible trial never reported its cost.
MACS = [5_000_000, 9_000_000, 2_000_000, 1_000_000, 3_000_000, 4_000_000, None]


def _tables(*, one_optimizer: bool = False) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    trials, epochs, steps, confusion = [], [], [], []
    for i, (tid, arch, opt, p, status, n_epochs, acc) in enumerate(TRIALS):
        opt = "sgd" if one_optimizer else opt
        start = 1_000_000 + 10 * i
        measured = n_epochs if status != "diverged" else 0
        row = {
            "trial_id": tid,
            "status": status,
            "arch": arch,
            "optimizer": opt,
            "dropout": p,
            "lr": 0.01,
            "mlp": "" if i % 2 else "64-32",
            "model_strides": "4-1-1" if arch == "FlatAlexNet" else "4-1-1-1-1",
            "model_kernels": "11-5-3" if arch == "FlatAlexNet" else "11-5-3-3-3",
            "model_batchnorm": i % 3 == 0,
            "params": 1000 * (i + 1),
            "macs": MACS[i],
            "epochs": measured,
            "start_timestamp": start,
            "end_timestamp": start + 5 * max(n_epochs, 1),
            "error": "feature map below 1x1" if status == "infeasible" else None,
        }
        for split in ("train", "val"):
            for m in ("accuracy", "macro_precision", "loss"):
                value = None if acc is None else (acc if m != "loss" else 1 - acc)
                row[f"final_{split}_{m}"] = value
                row[f"best_{split}_{m}"] = value
        trials.append(row)
        for e in range(1, measured + 1):
            frac = e / EPOCHS
            epochs.append(
                {
                    "trial_id": tid,
                    "epoch": e,
                    "train_loss": 2.0 - frac,
                    "train_accuracy": min(1.0, acc * frac + 0.1),
                    "train_macro_precision": acc * frac,
                    "val_loss": 2.1 - frac,
                    "val_accuracy": acc * frac,
                    "val_macro_precision": acc * frac - 0.01,
                    "seconds": 5.0,
                    "images_per_s": 100.0,
                    "time_total_s": 5.0 * e,
                    "timestamp": start + 5 * e,
                }
            )
        n_steps = n_epochs * STEPS_PER_EPOCH if status != "infeasible" else 0
        for s in range(1, n_steps + 1):
            loss = 2.3 * np.exp(-s / 40) + 0.1 * rng.random()
            if status == "diverged":
                loss = 1e12 * s if s < 25 else np.inf
            steps.append(
                {"trial_id": tid, "step": s, "epoch": (s - 1) // STEPS_PER_EPOCH + 1, "loss": loss}
            )
        if measured:
            counts = np.diag([20, 20, 20, 20])
            counts[0, 0], counts[0, 1] = 14, 6  # Celebrities seen as People: 30 %
            counts[1, 1], counts[1, 0] = 15, 5  # People seen as Celebrities: 25 %
            counts[2, 2], counts[2, 3] = 18, 2  # Landscape as Travel: one way only
            for a in range(4):
                for b in range(4):
                    confusion.append(
                        {
                            "trial_id": tid,
                            "epoch": measured,
                            "true_label": a,
                            "pred_label": b,
                            "true_class": CLASSES[a],
                            "pred_class": CLASSES[b],
                            "count": int(counts[a, b]),
                        }
                    )
    return {
        "trials": pd.DataFrame(trials),
        "epochs": pd.DataFrame(epochs),
        "steps": pd.DataFrame(steps),
        "confusion": pd.DataFrame(confusion),
    }


def _folds() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for config, base in (("AlexNet", 0.6), ("FlatAlexNet", 0.7)):
        for fold in range(5):
            for split, shift in (("train", 0.3), ("test", 0.0)):
                acc = base + shift + 0.02 * rng.standard_normal()
                if config == "AlexNet" and split == "test" and fold == 4:
                    acc = base - 0.2  # one outlier fold
                rows.append(
                    {
                        "config_id": config,
                        "trial_id": f"{config}-f{fold}",
                        "fold": fold,
                        "split": split,
                        "accuracy": acc,
                        "macro_precision": acc - 0.01,
                        "loss": 1 - acc,
                    }
                )
    return pd.DataFrame(rows)


def _study(path: Path, name: str, n: int) -> None:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name, storage=f"sqlite:///{path / 'optuna.db'}", direction="maximize"
    )
    space = {
        "arch": CategoricalDistribution(["AlexNet", "FlatAlexNet", "NarrowAlexNet"]),
        "dropout": FloatDistribution(0.0, 0.5),
        "lr": FloatDistribution(1e-3, 1e-1, log=True),
    }
    rng = np.random.default_rng(2)
    for _ in range(n):
        trial = study.ask(space)
        value = 0.5 + 0.4 * trial.params["dropout"] + 0.02 * rng.random()
        study.tell(trial, value)


def make_run(
    root: Path,
    *,
    folds: bool = True,
    study_trials: int = 8,
    experiment: bool = True,
    one_optimizer: bool = False,
    metric: str = "val_accuracy",
    mode: str = "max",
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, df in _tables(one_optimizer=one_optimizer).items():
        df.to_parquet(root / f"{name}.parquet", index=False)
    if folds:
        _folds().to_parquet(root / "folds.parquet", index=False)
    if experiment:
        exp = {
            "name": "fixture",
            "search": {"metric": metric, "mode": mode},
            "train": {"epochs": 4},
        }
        (root / "experiment.yaml").write_text(yaml.safe_dump(exp))
    if study_trials:
        _study(root, "fixture", study_trials)
    return root


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """A complete run: every table, folds, experiment.yaml and an 8-trial study."""
    return make_run(tmp_path_factory.mktemp("runs") / "fixture-run")


@pytest.fixture
def make_run_dir(tmp_path) -> Callable[..., Path]:
    """Build a variant run under tmp_path: make_run_dir(folds=False, one_optimizer=True)."""

    def build(name: str = "run", **options) -> Path:
        return make_run(tmp_path / name, **options)

    return build


@pytest.fixture(scope="session")
def tables() -> dict[str, pd.DataFrame]:
    return {**_tables(), "folds": _folds()}
