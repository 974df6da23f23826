"""A whole trial (`train_trial`, outside Ray) on CUDA with its images resident and streamed:
finite losses, the trial's facts, a restart from its checkpoint that goes on where it stopped,
and the device's memory handed back after each trial."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from hpsearch.search.trial import checkpoints, trainable
from hpsearch.search.trial.report import REPLAYED, RUNNING

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device: make gpu-check runs it"
    ),
]

CONFIG = {
    "arch": "FlatAlexNet", "width": 0.25, "mlp": "64", "optimizer": "sgd", "lr": 0.01,
    "momentum": 0.9,
}  # fmt: skip


@pytest.mark.parametrize(("setting", "placement"), [("always", "device"), ("never", "stream")])
def test_a_trial_trains_resumes_and_hands_its_memory_back(
    monkeypatch, cuda_kit, trial_run, setting, placement
) -> None:
    data = cuda_kit.learnable_data()
    settings = cuda_kit.gpu_settings(epochs=3, data_on_device=setting)
    restored = []

    def spy(device):
        got = checkpoints.restore(device)
        if got is not None:
            tensor = next(iter(got.state["model"].values()))
            restored.append((got.state["epoch"], tensor.device.type))
        return got

    monkeypatch.setattr(trainable, "restore", spy)
    before = cuda_kit.allocated()

    straight = trial_run("straight")
    trainable.train_trial(CONFIG, data=data, settings=settings)
    assert cuda_kit.allocated() == before, "the trial left tensors on the device"

    cut = trial_run("cut")  # the same trial, stopped after 2 of its 3 epochs ...
    trainable.train_trial(CONFIG, data=data, settings=dataclasses.replace(settings, epochs=2))
    resumed = trial_run("cut", resume=True)  # ... and restarted from its newest checkpoint
    trainable.train_trial(CONFIG, data=data, settings=settings)
    assert cuda_kit.allocated() == before, "the restored trial left tensors on the device"

    for run in (straight, cut, resumed):
        for r in run.reports:
            assert r["status"] == RUNNING and r["device"] == "cuda", r
            assert r["data_placement"] == placement and r["precision"] in ("bf16", "fp32")
            assert r["step_loss"] and all(math.isfinite(x) for x in r["step_loss"]), r["epoch"]
            assert math.isfinite(r["val_loss"]) and 0 <= r["val_accuracy"] <= 1
    assert [r["epoch"] for r in straight.reports] == [1, 2, 3]
    assert [r["epoch"] for r in cut.reports] == [1, 2]
    assert len(list(cut.folder.glob("checkpoint_*"))) == 3  # 2 epochs, then the restarted one
    assert [(r["epoch"], r.get(REPLAYED, False)) for r in resumed.reports] == [
        (1, True),
        (2, True),
        (3, False),
    ]
    assert restored == [(1, "cuda")]  # epoch 2's state (0-based), loaded onto the GPU
    # It went on from the restored weights: its third epoch is the uninterrupted trial's, not
    # a fresh model's (whose loss would be near the first epoch's).
    first, third = straight.reports[0]["train_loss"], straight.reports[2]["train_loss"]
    assert third < 0.8 * first, (first, third)  # it learns, so the check below can tell
    assert abs(resumed.reports[2]["train_loss"] - third) < 0.25 * (first - third)
