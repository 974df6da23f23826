"""One entry for every model family: the caller never branches on preset or backbone.

``make_config(arch, ...)`` picks the family from the name (a preset such as ``FlatAlexNet``, or
``tv/<name>`` for a torchvision backbone) and returns its config; ``build(cfg)``, ``cost(cfg)``,
``check(cfg)``, ``input_normalization(cfg)`` and ``parameter_groups(model, lr=...)`` take either
config. torch is imported only by ``build``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from hpsearch.models import backbones, shapes
from hpsearch.models.backbones import BackboneConfig, is_backbone
from hpsearch.models.config import ConvNetConfig
from hpsearch.models.presets import get_config

if TYPE_CHECKING:
    from torch import nn

ModelConfig = ConvNetConfig | BackboneConfig


class Cost(NamedTuple):
    params: int  # every parameter, frozen ones too
    macs: int  # multiply-accumulates of one forward pass of one image


def make_config(
    arch: str,
    *,
    image_size: int,
    num_classes: int,
    mlp: Sequence[int] | None = None,
    dropout: float | None = None,
    batchnorm: bool | None = None,
    width: float = 1.0,
    strides: Sequence[int] | None = None,
    kernels: Sequence[int] | None = None,
    pretrained: str | None = None,
    freeze: str | None = None,
) -> ModelConfig:
    """The config of `arch` at this image size. A backbone takes the head's fields (mlp,
    dropout, batchnorm) and its own (pretrained, freeze); width, strides and kernels shape
    presets only. Raises InfeasibleArchitecture when the feature map would vanish, ValueError
    for a value the model rejects."""
    if is_backbone(arch):
        cfg = BackboneConfig(
            name=arch,
            num_classes=num_classes,
            image_size=image_size,
            mlp=tuple(mlp or ()),
            dropout=float(dropout or 0.0),
            pretrained=pretrained or None,
            freeze=str(freeze or "none"),
            batchnorm=bool(batchnorm or False),
        )
        backbones.check_feasible(cfg)
        return cfg
    fields = dict(mlp=mlp, dropout=dropout, batchnorm=batchnorm, strides=strides, kernels=kernels)
    overrides = {k: v for k, v in fields.items() if v is not None}
    cfg = get_config(arch, image_size=image_size, num_classes=num_classes, **overrides)
    if float(width) != 1.0:  # a multiplier of the preset's (adapted) channels
        cfg = cfg.with_layers(channels=[max(1, round(c.out_channels * width)) for c in cfg.convs])
    return cfg


def check(cfg: ModelConfig) -> None:
    """Raise InfeasibleArchitecture if the model cannot take its image size."""
    if isinstance(cfg, BackboneConfig):
        backbones.check_feasible(cfg)
    else:
        shapes.check_feasible(cfg)


def cost(cfg: ModelConfig) -> Cost:
    """Parameters and MACs, by arithmetic (presets) or on the meta device (backbones)."""
    if isinstance(cfg, BackboneConfig):
        return Cost(backbones.count_params(cfg), backbones.count_macs(cfg))
    return Cost(shapes.count_params(cfg), shapes.count_macs(cfg))


def build(cfg: ModelConfig | Mapping[str, Any]) -> nn.Module:
    """The module of a config (or of a preset config's ``to_dict()`` form, as Ray passes it)."""
    if isinstance(cfg, BackboneConfig):
        return backbones.build_backbone(cfg)
    from hpsearch.models import convnet  # torch: only what builds a model imports it

    return convnet.build(cfg)


def input_normalization(cfg: ModelConfig) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) that pretrained weights expect, or None: normalise with the data's own."""
    return backbones.input_normalization(cfg) if isinstance(cfg, BackboneConfig) else None


def parameter_groups(model: nn.Module, *, lr: float, backbone_lr_scale: float = 1.0) -> list[dict]:
    """The optimizer's parameter groups: every parameter at `lr` for a preset; for a backbone
    its trainable parameters at lr x `backbone_lr_scale` and the head's at lr."""
    if not isinstance(getattr(model, "cfg", None), BackboneConfig):
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
    backbone, head = backbones.param_groups(model)
    groups = [{"params": head, "lr": lr}]
    if backbone:
        groups.insert(0, {"params": backbone, "lr": lr * backbone_lr_scale})
    return groups
