"""CNN classifiers for the search: config as data, one builder, named presets.

``ConvNetConfig`` describes conv stages and an MLP head; ``ConvNet`` builds
it; ``models.shapes`` checks by arithmetic that it fits the image size;
``models.presets`` names the seed's AlexNet variants. Importing this package
touches no disk and no GPU.
"""

from __future__ import annotations

from models.config import ConvNetConfig, ConvSpec
from models.convnet import ConvNet, build
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
