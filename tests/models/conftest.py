from __future__ import annotations

import pytest
import torch
from torch import nn

from hpsearch.models import ConvNet


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def forward_feature_shapes(model: ConvNet, image_size: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, (C, H, W)) after every conv and pool, measured with forward hooks."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    handles = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: seen.append((name, tuple(out.shape[1:])))
        )
        for name, module in model.features.named_children()
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d))
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, model.cfg.in_channels, image_size, image_size))
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.fixture
def feature_shapes_of():
    return forward_feature_shapes
