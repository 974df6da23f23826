"""CNN classifiers for the search: config as data, one builder, named presets.

``ConvNetConfig`` describes conv stages and an MLP head; ``ConvNet`` builds
it; ``models.shapes`` checks by arithmetic that it fits the image size;
``models.presets`` names the seed's AlexNet variants. Importing this package
touches no disk and no GPU, and imports torch only when a model is built (``ConvNet``,
``build``, ``create_model``): validating an experiment and the shape arithmetic need no torch,
which takes seconds to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from models.config import ConvNetConfig, ConvSpec
from models.presets import (
    adapt_to_image_size,
    create_model,
    get_config,
    list_models,
    model_cfgs,
)
from models.shapes import (
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
from models.table import format_models_table

if TYPE_CHECKING:
    from models.convnet import ConvNet, build

_TORCH_NAMES = ("ConvNet", "build")


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        from models import convnet

        return getattr(convnet, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")


__all__ = [
    "ConvNet",
    "ConvNetConfig",
    "ConvSpec",
    "InfeasibleArchitecture",
    "LayerInfo",
    "adapt_to_image_size",
    "build",
    "check_feasible",
    "count_macs",
    "count_params",
    "create_model",
    "feasibility",
    "feature_dim",
    "feature_shapes",
    "format_models_table",
    "get_config",
    "layer_table",
    "list_models",
    "model_cfgs",
]
