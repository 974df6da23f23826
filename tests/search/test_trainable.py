from __future__ import annotations

import pytest
import torch

from search.space import OPTIMIZER_DEFAULTS
from search.trainable import choose_precision, make_optimizer, worst_value


def params():
    return [torch.nn.Parameter(torch.zeros(3))]


def test_explicit_precision_is_kept():
    assert choose_precision("fp32", "cpu") == "fp32"
    assert choose_precision("bf16", "cpu") == "bf16"


def test_auto_precision_follows_the_cpu_capability(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert choose_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert choose_precision("auto", "cpu") == "fp32"


def test_auto_precision_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert choose_precision("auto", "cuda") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert choose_precision("auto", "cuda:0") == "bf16"


@pytest.mark.parametrize(
    ("config", "cls", "expected"),
    [
        (
            {"optimizer": "sgd", "lr": 0.05, "momentum": 0.8, "weight_decay": 1e-4},
            torch.optim.SGD,
            {"lr": 0.05, "momentum": 0.8, "weight_decay": 1e-4},
        ),
        ({"optimizer": "adam", "lr": 3e-4}, torch.optim.Adam, {"lr": 3e-4, "weight_decay": 0.0}),
        (
            {"optimizer": "rmsprop", "lr": 1e-3, "momentum": 0.5},
            torch.optim.RMSprop,
            {"lr": 1e-3, "momentum": 0.5},
        ),
    ],
)
def test_make_optimizer(config, cls, expected):
    opt = make_optimizer(config, params())
    assert isinstance(opt, cls)
    for key, value in expected.items():
        assert opt.param_groups[0][key] == pytest.approx(value)


def test_make_optimizer_rejects_unknown_names():
    with pytest.raises(ValueError, match="allowed are sgd, adam, rmsprop"):
        make_optimizer({"optimizer": "lion"}, params())


def test_defaults_cover_every_optimizer():
    assert set(OPTIMIZER_DEFAULTS) == {"sgd", "adam", "rmsprop"}


def test_worst_value_is_the_worst_for_the_mode():
    assert worst_value("max") == 0.0
    assert worst_value("min") == float("inf")
