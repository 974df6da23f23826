"""Small hand-offs for tests that run a Trainer without Ray or a cache."""

from __future__ import annotations

import numpy as np
import pytest

from hpsearch.search.trial.images import ImageSource
from hpsearch.search.trial.inputs import TrialData, TrialSettings


def _tiny_data(n: int = 48, size: int = 16, classes: int = 3) -> TrialData:
    rng = np.random.default_rng(0)
    return TrialData(
        source=ImageSource(rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)),
        labels=np.arange(n) % classes,
        train_idx=np.arange(n * 2 // 3),
        val_idx=np.arange(n * 2 // 3, n),
        folds=np.full(n, -1),
        classes=tuple("abcdefgh"[:classes]),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )


def _tiny_settings(**changes) -> TrialSettings:
    base = dict(
        epochs=1,
        batch_size=16,
        eval_batch_size=16,
        precision="fp32",
        seed=0,
        augment=False,
        image_size=16,
        metric="val_accuracy",
        mode="max",
        cpus=1,
        gpus=0,
    )
    return TrialSettings(**{**base, **changes})


@pytest.fixture
def tiny_data():
    """A factory of small random TrialData (n images of size px, `classes` classes)."""
    return _tiny_data


@pytest.fixture
def tiny_settings():
    """A factory of TrialSettings for one fp32 CPU epoch; keywords change fields."""
    return _tiny_settings


@pytest.fixture
def make_trainer(tiny_data, tiny_settings):
    """A factory of small FlatAlexNet Trainers on tiny_data (optionally forcing the layout)."""

    def make(monkeypatch=None, channels_last: bool | None = None):
        import numpy as np

        from hpsearch.search.experiment.space import model_config
        from hpsearch.search.trial import trainable

        if channels_last is not None:
            monkeypatch.setattr(trainable, "use_channels_last", lambda *a: channels_last)
        config = {"arch": "FlatAlexNet", "width": 0.125, "mlp": "16", "optimizer": "sgd"}
        config["lr"] = 0.05
        cfg = model_config(config, image_size=16, num_classes=3)
        return trainable.Trainer(
            cfg,
            config,
            tiny_data(),
            tiny_settings(),
            train_idx=np.arange(32),
            val_idx=np.arange(32, 48),
        )

    return make
