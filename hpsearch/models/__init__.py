"""CNN classifiers for the search: config as data, one builder, named presets.

One entry for every family (``models.factory``): ``make_config(arch, ...)``,
``build(cfg)``, ``cost(cfg)``, ``check(cfg)``: a caller never branches on preset or
backbone. ``ConvNetConfig`` describes conv stages and an MLP head; ``ConvNet`` builds
it; ``models.shapes`` checks by arithmetic that it fits the image size;
``models.presets`` names the seed's AlexNet variants. ``models.backbones``
adds torchvision classifiers (``tv/resnet18``) with the same kind of head,
their weights and their cost (``models.backbones.count_params`` /
``count_macs`` / ``check_feasible`` are not re-exported: those names are the
presets'). Importing this package touches no disk and no GPU, and imports
torch only when a model is built (``ConvNet``, ``build``, ``create_model``,
``BackboneNet``) or a backbone looked up (torchvision knows its names):
validating a preset experiment and the shape arithmetic need no torch, which
takes seconds to import."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpsearch.models.backbones import (
    BACKBONE_PREFIX,
    BackboneConfig,
    build_backbone,
    check_backbone_name,
    fetch_weights,
    is_backbone,
    list_backbones,
    missing_weights,
    param_groups,
    size_warning,
    trained_size,
    weights_file,
)
from hpsearch.models.config import ConvNetConfig, ConvSpec
from hpsearch.models.factory import (
    Cost,
    ModelConfig,
    build,
    check,
    cost,
    input_normalization,
    make_config,
    parameter_groups,
)
from hpsearch.models.presets import (
    adapt_to_image_size,
    create_model,
    get_config,
    list_models,
    model_cfgs,
)
from hpsearch.models.shapes import (
    InfeasibleArchitecture,
    LayerInfo,
    check_feasible,
    count_macs,
    count_params,
    feasibility,
    feature_dim,
    feature_shapes,
    layer_table,
)
from hpsearch.models.table import format_backbones_table, format_models_table

if TYPE_CHECKING:
    from hpsearch.models.backbones import BackboneNet
    from hpsearch.models.convnet import ConvNet

_TORCH_NAMES = ("ConvNet",)


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        # lazy: torch takes ~2.5 s to import; only building or training a model needs it
        from hpsearch.models import convnet

        return getattr(convnet, name)
    if name == "BackboneNet":  # created on first access, with torch
        # lazy: torch takes ~2.5 s to import; only building or training a model needs it
        from hpsearch.models import backbones

        return backbones.BackboneNet
    raise AttributeError(f"module 'models' has no attribute {name!r}")


__all__ = [
    "BACKBONE_PREFIX",
    "BackboneConfig",
    "BackboneNet",
    "Cost",
    "ModelConfig",
    "ConvNet",
    "ConvNetConfig",
    "ConvSpec",
    "InfeasibleArchitecture",
    "LayerInfo",
    "adapt_to_image_size",
    "build",
    "build_backbone",
    "check_backbone_name",
    "check",
    "check_feasible",
    "count_macs",
    "cost",
    "count_params",
    "create_model",
    "feasibility",
    "feature_dim",
    "feature_shapes",
    "fetch_weights",
    "format_backbones_table",
    "format_models_table",
    "get_config",
    "input_normalization",
    "is_backbone",
    "layer_table",
    "list_backbones",
    "list_models",
    "make_config",
    "missing_weights",
    "model_cfgs",
    "param_groups",
    "parameter_groups",
    "size_warning",
    "trained_size",
    "weights_file",
]
