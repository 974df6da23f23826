"""Where a GPU trial keeps its images: the placement rule, `train.data_on_device`, and the
fact each trial records (`data_placement`)."""

from __future__ import annotations

import pytest
import torch
import yaml

from hpsearch.search.errors import ExperimentError
from hpsearch.search.experiment.schema import load_experiment
from hpsearch.search.trial.inputs import TrialSettings
from hpsearch.search.trial.trainable import data_placement, placement, trials_per_device

GB = 10**9
# The seed's training split at 227 px (26,107 images) and a 24 GB A10G (cluster.yaml) with the
# CUDA context of one trial already taken.
SEED_TRAIN = 26_107 * 3 * 227 * 227
A10G_FREE = 22 * GB
H200_FREE = 140 * GB


def test_trials_per_device_follows_the_fractional_gpus() -> None:
    assert [trials_per_device(g) for g in (0.25, 0.3, 1 / 3, 0.2, 0.5, 1, 2)] == [
        4,
        3,
        3,
        5,
        2,
        1,
        1,
    ]
    assert trials_per_device(0) == 1  # CPU trials: no device to share


def test_auto_streams_the_seed_scale_when_four_trials_share_a_24gb_gpu() -> None:
    assert SEED_TRAIN == pytest.approx(4.0 * GB, rel=0.01)
    # experiments/full.yaml: gpus 0.25 -> 4 trials; half of a quarter of 22 GB is 2.75 GB
    assert placement(SEED_TRAIN, A10G_FREE, 4, "auto") == "stream"
    # alone on the A10G (gpus: 1) the 4 GB fit in half of its free memory
    assert placement(SEED_TRAIN, A10G_FREE, 1, "auto") == "device"
    # four to an H200: 17.5 GB each
    assert placement(SEED_TRAIN, H200_FREE, 4, "auto") == "device"
    # the budget is inclusive: exactly half of the share stays resident
    assert placement(1000, 8000, 4, "auto") == "device"
    assert placement(1001, 8000, 4, "auto") == "stream"


def test_explicit_settings() -> None:
    assert placement(SEED_TRAIN, 1, 4, "always") == "device"
    assert placement(1, H200_FREE, 1, "never") == "stream"
    assert placement(SEED_TRAIN, 1, 4, 4.5) == "device"  # GB per trial, whatever is free
    assert placement(SEED_TRAIN, H200_FREE, 1, 4.0) == "stream"
    for bad in ("sometimes", True, 0, -1.0):
        with pytest.raises(ValueError, match="auto, always, never or a size in GB"):
            placement(1, 1, 1, bad)


def _exp(tmp_path, value=None, **more):
    doc = {"name": "x", "train": {} if value is None else {"data_on_device": value}, **more}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_experiment(path)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (None, "auto"),
        ("never", "never"),
        ("Always", "always"),
        (6, 6.0),
        ("6GB", 6.0),
        ("2.5 GB", 2.5),
    ],
)
def test_the_setting_in_the_experiment_file(tmp_path, value, parsed) -> None:
    exp = _exp(tmp_path, value, resources={"gpus": 0.25})
    assert exp.train.data_on_device == parsed
    settings = TrialSettings.from_experiment(exp)
    assert settings.data_on_device == parsed and settings.gpus == 0.25
    again = yaml.safe_load(exp.to_yaml())  # experiment.yaml round trip
    assert again["train"]["data_on_device"] == parsed


@pytest.mark.parametrize("value", ["sometimes", True, 0, -2, "GB", "nan"])
def test_a_bad_setting_says_what_to_write(tmp_path, value) -> None:
    with pytest.raises(ExperimentError) as err:
        _exp(tmp_path, value)
    message = str(err.value)
    assert "train.data_on_device" in message
    assert "auto" in message and "always" in message and "never" in message and "GB" in message


def test_data_placement_uses_the_trial_gpu_free_memory(monkeypatch, tiny_settings) -> None:
    seen = []

    def mem_get_info(device=None):
        seen.append(device)
        return A10G_FREE, 24 * GB

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    assert data_placement("cpu", SEED_TRAIN, tiny_settings(gpus=0)) == "host" and not seen
    assert data_placement("cuda", SEED_TRAIN, tiny_settings(gpus=0.25)) == "stream"
    assert data_placement("cuda", SEED_TRAIN, tiny_settings(gpus=1)) == "device"
    assert data_placement(
        "cuda", SEED_TRAIN, tiny_settings(gpus=0.25, data_on_device="always")
    ) == ("device")
    assert seen == ["cuda"] * 3


def test_a_cpu_trial_records_host_placement(make_trainer) -> None:
    trainer = make_trainer()
    assert trainer.data_placement == "host"
    assert trainer.train_batches.placement == trainer.val_batches.placement == "host"
