"""What every benchmark prints and needs: the machine line, a header, an experiment built in
code, a local Ray instance. Not a benchmark itself (`python -m benchmarks` runs `bench_*`)."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_data import _cpu_model
from hpsearch.data_pipeline.cache import default_workers

# The small model both sides of bench_search and the packed trials of bench_gpu train:
# FlatAlexNet width 0.25, one hidden layer of 64, SGD with the learning rate searched.
SMALL_SPACE: dict[str, Any] = {
    "arch": "FlatAlexNet",
    "width": 0.25,
    "mlp_layers": 1,
    "mlp_width": 64,
    "optimizer": {"sgd": {"lr": {"low": 0.003, "high": 0.1, "log": True}}},
}


def load_average() -> str:
    try:
        return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average unknown"


def header(sizes: str, *, smoke: bool) -> None:
    """Machine, date, load (other work on the machine skews every figure) and sizes."""
    print(
        f"machine  {_cpu_model()}, {os.cpu_count()} cores ({default_workers()} usable), "
        f"torch {torch.__version__}"
    )
    print(
        f"date     {dt.datetime.now().astimezone().isoformat(timespec='seconds')} "
        f"({load_average()} at the start)"
    )
    print(f"sizes    {sizes}" + ("  [smoke: numbers mean nothing]" if smoke else ""), flush=True)


def verdict(ratio: float, target: float, *, at_most: bool = False) -> str:
    met = ratio <= target if at_most else ratio >= target
    sign = "<=" if at_most else ">="
    return f"target {sign} {target:.3g}: {'met' if met else 'NOT met'}"


def experiment(name: str, folder: Path, work: Path, **sections: dict[str, Any]):
    """A validated Experiment whose cache and run directories live under `work`."""
    from hpsearch.search.experiment.schema import Experiment

    doc: dict[str, Any] = {
        "name": name,
        "data": {"folder": str(folder), "cache": str(work / "cache"), "seed": 0},
        "search": {"max_concurrent": 2, "seed": 0},
        "train": {"precision": "auto", "seed": 0},
        "resources": {"cpus": 1, "gpus": 0},
        "failure": {"max_retries": 0},
        "storage": str(work / "runs"),
    }
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    return Experiment.model_validate(doc)


@contextlib.contextmanager
def local_ray() -> Iterator[None]:
    """Use the Ray instance already running in this process, or start (and stop) one."""
    from hpsearch.search.driver.session import ray_session

    with ray_session(None):
        yield


def trial_data(images, labels, train_idx, val_idx, classes: int):
    """Hand-made TrialData for a benchmark that times the Trainer on arrays of its own."""
    import numpy as np

    from hpsearch.search.trial.images import ImageSource
    from hpsearch.search.trial.inputs import TrialData

    return TrialData(
        source=ImageSource(images),
        labels=labels,
        train_idx=train_idx,
        val_idx=val_idx,
        folds=np.full(len(labels), -1),
        classes=tuple(str(c) for c in range(classes)),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )


def trial_settings(**fields: Any):
    """TrialSettings for timing the Trainer outside a search (`fields` override)."""
    from hpsearch.search.trial.inputs import TrialSettings

    base = dict(
        epochs=1, batch_size=64, eval_batch_size=64, precision="auto", seed=0, augment=False,
        image_size=0, metric="val_accuracy", mode="max", cpus=1, gpus=0,
    )  # fmt: skip
    return TrialSettings(**{**base, **fields})
