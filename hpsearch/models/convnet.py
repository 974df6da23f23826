"""ConvNet: the one builder behind every preset.

``features`` holds, per conv stage, Conv2d -> [BatchNorm2d] -> ReLU ->
[MaxPool2d], with modules named ``conv1``, ``bn1``, ``relu1``, ``pool1``, ... so
state-dict keys and hooks read like the layer table of ``models.shapes``.
``classifier`` is Flatten, then per hidden width [Dropout] -> Linear -> ReLU,
then the ``head`` Linear.

With BatchNorm the conv has no bias: BN subtracts the per-channel batch mean,
which cancels any constant the conv adds, and BN's own bias takes its place.
``models.shapes.count_params`` counts the same way.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from hpsearch.models.config import ConvNetConfig
from hpsearch.models.shapes import check_feasible, feature_dim

__all__ = ["ConvNet", "build"]


class ConvNet(nn.Module):
    def __init__(self, cfg: ConvNetConfig) -> None:
        super().__init__()
        # Shape arithmetic first: an infeasible config fails before any allocation.
        check_feasible(cfg)
        self.cfg = cfg

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels, n_pool = cfg.in_channels, 0
        for i, spec in enumerate(cfg.convs, start=1):
            layers[f"conv{i}"] = nn.Conv2d(
                channels,
                spec.out_channels,
                kernel_size=spec.kernel,
                stride=spec.stride,
                padding=spec.padding,
                bias=not cfg.batchnorm,
            )
            if cfg.batchnorm:
                layers[f"bn{i}"] = nn.BatchNorm2d(spec.out_channels)
            layers[f"relu{i}"] = nn.ReLU(inplace=True)
            if spec.pool:
                n_pool += 1
                layers[f"pool{n_pool}"] = nn.MaxPool2d(spec.pool_kernel, spec.pool_stride)
            channels = spec.out_channels
        self.features = nn.Sequential(layers)

        head: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        width = feature_dim(cfg)
        for j, hidden in enumerate(cfg.mlp, start=1):
            if cfg.dropout > 0:
                head[f"drop{j}"] = nn.Dropout(cfg.dropout)
            head[f"fc{j}"] = nn.Linear(width, hidden)
            head[f"relu{j}"] = nn.ReLU(inplace=True)
            width = hidden
        head["head"] = nn.Linear(width, cfg.num_classes)
        self.classifier = nn.Sequential(head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, S, S] images -> [N, C', H', W'] feature maps."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps -> [N, num_classes] logits."""
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build(cfg: ConvNetConfig | Mapping[str, Any]) -> ConvNet:
    """A ConvNet from a config or its ``to_dict()`` form (as Ray passes it)."""
    if not isinstance(cfg, ConvNetConfig):
        cfg = ConvNetConfig.from_dict(cfg)
    return ConvNet(cfg)
