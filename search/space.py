"""The Optuna define-by-run search space built from an experiment, and its inverse: turning a
trial's config back into a model config.

A trial's config is flat plain data (Ray stores it as JSON): `arch`, `width`, `strides`,
`kernels`, `mlp` (per-layer values written "4-1-1", "" for no hidden layer), `dropout`,
`batchnorm`, `batch_size`, `optimizer`, `lr`, `momentum`, `weight_decay`, plus the raw names
Optuna sampled (`mlp_layers`, `mlp_width_0`, `sgd_lr`, ...). A dimension the experiment leaves
out is absent, and the preset's own value applies.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from search.schema import ExperimentError, SearchSpace, dim_values

OPTIMIZER_DEFAULTS = {
    "sgd": {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0},
    "adam": {"lr": 1e-3, "momentum": None, "weight_decay": 0.0},
    "rmsprop": {"lr": 1e-3, "momentum": 0.0, "weight_decay": 0.0},
}
_KINDS = {
    "arch": "str",
    "width": "float",
    "strides": "layers",
    "kernels": "layers",
    "mlp_layers": "int",
    "dropout": "float",
    "batchnorm": "bool",
    "batch_size": "int",
}


def encode_layers(values: list[int] | tuple[int, ...]) -> str:
    return "-".join(str(int(v)) for v in values)


def decode_layers(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split("-")) if text else ()


def _categorical_form(value: Any, kind: str) -> Any:
    # Optuna's categorical choices must be scalars: per-layer lists travel as "4-1-1".
    return encode_layers(value) if kind == "layers" else value


def suggest(trial: Any, name: str, value: Any, kind: str, *, grid: bool = False) -> Any:
    """Draw one dimension: fixed values are returned as they are, not sampled."""
    values = dim_values(value, kind)
    if values is not None and len(values) == 1:
        return _categorical_form(values[0], kind)
    if values is not None and (grid or not isinstance(value, dict)):
        return trial.suggest_categorical(name, [_categorical_form(v, kind) for v in values])
    if kind == "int":
        return trial.suggest_int(
            name, value["low"], value["high"], log=value["log"], step=value.get("step", 1)
        )
    return trial.suggest_float(
        name, value["low"], value["high"], log=value["log"], step=value.get("step")
    )


class DefineSpace:
    """The define-by-run function for Ray's OptunaSearch. It only samples; it computes nothing.
    A class rather than a closure: Ray pickles the searcher into its experiment checkpoint."""

    def __init__(self, space: SearchSpace, *, grid: bool = False) -> None:
        self.space, self.grid = space, grid

    def __call__(self, trial: Any) -> dict[str, Any]:
        space, grid = self.space, self.grid
        out: dict[str, Any] = {}
        for name, kind in _KINDS.items():
            value = getattr(space, name)
            if value is None or name == "mlp_layers":
                continue
            out[name] = suggest(trial, name, value, kind, grid=grid)
        if space.mlp_layers is not None:
            depth = suggest(trial, "mlp_layers", space.mlp_layers, "int", grid=grid)
            widths = [
                suggest(trial, f"mlp_width_{i}", space.mlp_width, "int", grid=grid)
                for i in range(depth)
            ]
            out["mlp"] = encode_layers(widths)
        opt = suggest(trial, "optimizer", list(space.optimizer), "str", grid=grid)
        out["optimizer"] = opt
        params = space.optimizer[opt]
        for pname, default in OPTIMIZER_DEFAULTS[opt].items():
            value = getattr(params, pname)
            if pname == "momentum" and opt == "adam":
                continue  # Adam has betas, not momentum
            out[pname] = (
                default
                if value is None
                else suggest(trial, f"{opt}_{pname}", value, "float", grid=grid)
            )
        return out


def build_space(space: SearchSpace, *, grid: bool = False) -> Callable[[Any], dict[str, Any]]:
    return DefineSpace(space, grid=grid)


def grid_points(space: SearchSpace) -> dict[str, list[Any]]:
    """Every sampled dimension's values for Optuna's GridSampler. Raises ValueError for a
    continuous range (give it a `step` or list the values)."""
    points: dict[str, list[Any]] = {}

    def add(name: str, value: Any, kind: str) -> None:
        values = dim_values(value, kind)
        if values is None:
            raise ValueError(
                f"search.space.{name}: a grid search needs listed values or a range with `step`"
            )
        if len(values) > 1:
            points[name] = [_categorical_form(v, kind) for v in values]

    for name, kind in _KINDS.items():
        if getattr(space, name) is not None:
            add(name, getattr(space, name), kind)
    if space.mlp_layers is not None:
        depths = dim_values(space.mlp_layers, "int")
        if depths is None:
            raise ValueError("search.space.mlp_layers: a grid search needs listed values")
        if max(depths) > 0:
            for i in range(max(depths)):
                add(f"mlp_width_{i}", space.mlp_width, "int")
    if len(space.optimizer) > 1:
        points["optimizer"] = list(space.optimizer)
    for opt, params in space.optimizer.items():
        for pname in ("lr", "momentum", "weight_decay"):
            value = getattr(params, pname)
            if value is not None:
                add(f"{opt}_{pname}", value, "float")
    return points


def model_config(config: dict[str, Any], *, image_size: int, num_classes: int):
    """The ConvNetConfig a trial config describes. Raises InfeasibleArchitecture when the
    feature map would vanish, ValueError for values the model rejects."""
    from models import get_config

    overrides: dict[str, Any] = {"image_size": image_size, "num_classes": num_classes}
    if config.get("strides"):
        overrides["strides"] = decode_layers(config["strides"])
    if config.get("kernels"):
        overrides["kernels"] = decode_layers(config["kernels"])
    if config.get("mlp") is not None:
        overrides["mlp"] = decode_layers(config["mlp"])
    if config.get("dropout") is not None:
        overrides["dropout"] = float(config["dropout"])
    if config.get("batchnorm") is not None:
        overrides["batchnorm"] = bool(config["batchnorm"])
    cfg = get_config(config.get("arch", "FlatAlexNet"), **overrides)
    width = float(config.get("width", 1.0))
    if width != 1.0:
        cfg = cfg.with_layers(channels=[max(1, round(c.out_channels * width)) for c in cfg.convs])
    return cfg


def check_space(space: SearchSpace, *, image_size: int, num_classes: int) -> list[str]:
    """Raise ExperimentError if no architecture the space can produce is feasible at this image
    size; otherwise return the reasons of the infeasible combinations (may be empty).

    Only arch, strides, kernels and width decide feasibility; these are enumerated (a width
    range is checked at its ends)."""
    from models import InfeasibleArchitecture

    def values(name: str, kind: str) -> list[Any]:
        value = getattr(space, name)
        if value is None:
            return [None]
        vals = dim_values(value, kind)
        return vals if vals is not None else [value["low"], value["high"]]

    reasons: list[str] = []
    feasible = 0
    for arch, strides, kernels, width in itertools.product(
        values("arch", "str"),
        values("strides", "layers"),
        values("kernels", "layers"),
        values("width", "float"),
    ):
        config = {"arch": arch, "width": width or 1.0}
        if strides is not None:
            config["strides"] = encode_layers(strides)
        if kernels is not None:
            config["kernels"] = encode_layers(kernels)
        try:
            model_config(config, image_size=image_size, num_classes=num_classes)
            feasible += 1
        except InfeasibleArchitecture as e:
            reasons.append(f"{_describe(config)}: {e}")
        except ValueError as e:
            raise ExperimentError(f"search.space: {_describe(config)}: {e}") from None
    if not feasible:
        raise ExperimentError(
            f"search.space: no architecture it can produce is feasible at data.image_size={image_size}:\n  "
            + "\n  ".join(reasons)
            + "\nUse a larger image size, smaller strides/kernels, or other presets (see `hpsearch models`)."
        )
    return reasons


def _describe(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())
