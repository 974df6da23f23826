"""The experiment file: one YAML document validated into a pydantic model.

Unknown keys are errors, every error names its field path, and `--set a.b=c` overrides are
applied to the raw document before validation, so they are checked like the file itself.
A search dimension is written one of three ways:

    dropout: 0.25                        # fixed
    dropout: [0.0, 0.25, 0.5]            # choices
    dropout: {low: 0.0, high: 0.5}       # range; add `log: true` for a log scale, `step:` to grid it

Per-layer dimensions (`strides`, `kernels`) take one value per conv layer: `[4, 1, 1]` fixes
them, `[[4, 1, 1], [2, 1, 1]]` lists choices.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

METRICS = ("val_accuracy", "val_macro_precision", "val_loss", "train_loss", "train_accuracy")
OPTIMIZERS = ("sgd", "adam", "rmsprop")


class ExperimentError(ValueError):
    """An experiment file or override is invalid; the message lists each field and what to change."""


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_dim(value: Any, kind: str) -> Any:
    """Validate one search dimension of `kind` ('float', 'int', 'bool', 'str', 'layers').

    Returns the value in its canonical plain-data form (fixed value, list of choices, or a
    range dict). Raises ValueError saying which forms are allowed.
    """
    forms = {
        "float": "a number, a list of numbers, or {low, high, log?, step?}",
        "int": "an integer, a list of integers, or {low, high, log?, step?}",
        "bool": "true, false or [true, false]",
        "str": "a name or a list of names",
        "layers": "one value per conv layer, e.g. [4, 1, 1], or a list of such lists",
    }[kind]

    def scalar_ok(v: Any) -> bool:
        if kind == "float":
            return _is_num(v) and math.isfinite(v)
        if kind == "int":
            return isinstance(v, int) and not isinstance(v, bool)
        if kind == "bool":
            return isinstance(v, bool)
        if kind == "str":
            return isinstance(v, str) and v != ""
        return (
            isinstance(v, list)
            and len(v) > 0
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v)
        )

    if isinstance(value, dict):
        if kind not in ("float", "int"):
            raise ValueError(f"a range is not allowed here; expected {forms}")
        unknown = set(value) - {"low", "high", "log", "step"}
        if unknown:
            raise ValueError(
                f"unknown range key(s) {sorted(unknown)}; a range has low, high, log, step"
            )
        if "low" not in value or "high" not in value:
            raise ValueError("a range needs both low and high")
        low, high = value["low"], value["high"]
        if not (scalar_ok(low) and scalar_ok(high)):
            raise ValueError(f"low and high must be {'integers' if kind == 'int' else 'numbers'}")
        if not low < high:
            raise ValueError(f"low ({low}) must be below high ({high})")
        log = value.get("log", False)
        if not isinstance(log, bool):
            raise ValueError("log must be true or false")
        if log and low <= 0:
            raise ValueError(f"a log range needs low > 0, got {low}")
        step = value.get("step")
        if step is not None and (not _is_num(step) or step <= 0 or (log and step is not None)):
            raise ValueError("step must be a positive number and cannot be combined with log")
        return {"low": low, "high": high, "log": log, **({"step": step} if step else {})}
    if kind == "layers":
        if scalar_ok(value):
            return list(value)
        if isinstance(value, list) and value and all(scalar_ok(v) for v in value):
            return [list(v) for v in value]
        raise ValueError(f"expected {forms} (every value an integer >= 1)")
    if isinstance(value, list):
        if not value:
            raise ValueError(f"an empty list of choices; expected {forms}")
        bad = [v for v in value if not scalar_ok(v)]
        if bad:
            raise ValueError(f"invalid choice(s) {bad}; expected {forms}")
        return list(value)
    if scalar_ok(value):
        return value
    raise ValueError(f"got {value!r}; expected {forms}")


def dim_values(value: Any, kind: str) -> list[Any] | None:
    """The finite list of values a canonical dimension can take, or None for a continuous range."""
    if isinstance(value, dict):
        if "step" not in value:
            return None
        n = int(round((value["high"] - value["low"]) / value["step"]))
        vals = [value["low"] + i * value["step"] for i in range(n + 1)]
        return [int(v) for v in vals] if kind == "int" else vals
    if kind == "layers":
        return [value] if isinstance(value[0], int) else list(value)
    return list(value) if isinstance(value, list) else [value]


ARCHITECTURE_DIMS = {
    "arch": "str",
    "width": "float",
    "strides": "layers",
    "kernels": "layers",
    "mlp_layers": "int",
    "mlp_width": "int",
    "batchnorm": "bool",
}


def varying_architecture_dims(space: Any) -> list[str]:
    """The dimensions that change the weights' shapes and are not fixed to one value."""
    out = []
    for name, kind in ARCHITECTURE_DIMS.items():
        value = getattr(space, name)
        if value is None or (name == "mlp_width" and space.mlp_layers in (None, 0, [0])):
            continue
        values = dim_values(value, kind)
        if values is None or len(values) > 1:
            out.append(name)
    return out


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class OptimizerSpace(_Strict):
    """Conditional parameters of one optimizer (each a search dimension)."""

    lr: Any = None  # default: sgd 0.01, adam/rmsprop 0.001
    momentum: Any = None  # sgd and rmsprop only; default: sgd 0.9, rmsprop 0.0
    weight_decay: Any = 0.0

    @field_validator("lr", "momentum", "weight_decay")
    @classmethod
    def _dim(cls, v: Any) -> Any:
        return v if v is None else check_dim(v, "float")


class SearchSpace(_Strict):
    """What the sampler may change. A dimension left out keeps the preset's value."""

    arch: Any = "FlatAlexNet"  # preset name(s), see `hpsearch models`
    width: Any = 1.0  # multiplier of every conv layer's channels
    strides: Any = None  # per conv layer
    kernels: Any = None  # per conv layer
    mlp_layers: Any = None  # hidden layers of the classifier, 0-4
    mlp_width: Any = Field(default_factory=lambda: {"low": 64, "high": 4096, "log": True})
    dropout: Any = None
    batchnorm: Any = None
    batch_size: Any = None  # default: train.batch_size
    optimizer: dict[Literal["sgd", "adam", "rmsprop"], OptimizerSpace] = Field(
        default_factory=lambda: {"sgd": OptimizerSpace()}
    )

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: Any) -> Any:
        from models import list_models

        v = check_dim(v, "str")
        unknown = [a for a in (v if isinstance(v, list) else [v]) if a not in list_models()]
        if unknown:
            raise ValueError(f"unknown preset(s) {unknown}; allowed: {list_models()}")
        return v

    @field_validator("width")
    @classmethod
    def _width(cls, v: Any) -> Any:
        v = check_dim(v, "float")
        lows = [v["low"]] if isinstance(v, dict) else (v if isinstance(v, list) else [v])
        if min(lows) <= 0:
            raise ValueError("width multipliers must be > 0")
        return v

    @field_validator("strides", "kernels")
    @classmethod
    def _layers(cls, v: Any) -> Any:
        return v if v is None else check_dim(v, "layers")

    @field_validator("mlp_layers")
    @classmethod
    def _mlp_layers(cls, v: Any) -> Any:
        if v is None:
            return v
        v = check_dim(v, "int")
        vals = [v["low"], v["high"]] if isinstance(v, dict) else (v if isinstance(v, list) else [v])
        if min(vals) < 0 or max(vals) > 4:
            raise ValueError(f"hidden layers must be between 0 and 4, got {vals}")
        return v

    @field_validator("mlp_width", "batch_size")
    @classmethod
    def _positive_int(cls, v: Any) -> Any:
        if v is None:
            return v
        v = check_dim(v, "int")
        vals = [v["low"]] if isinstance(v, dict) else (v if isinstance(v, list) else [v])
        if min(vals) < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("dropout")
    @classmethod
    def _dropout(cls, v: Any) -> Any:
        if v is None:
            return v
        v = check_dim(v, "float")
        vals = [v["low"], v["high"]] if isinstance(v, dict) else (v if isinstance(v, list) else [v])
        if min(vals) < 0 or max(vals) >= 1:
            raise ValueError(f"dropout p must be in [0, 1), got {vals}")
        return v

    @field_validator("batchnorm")
    @classmethod
    def _bool(cls, v: Any) -> Any:
        return v if v is None else check_dim(v, "bool")

    @field_validator("optimizer", mode="before")
    @classmethod
    def _optimizer(cls, v: Any) -> Any:
        # `optimizer: adam` or `optimizer: [sgd, adam]` mean: those, with default parameters.
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            bad = [o for o in v if o not in OPTIMIZERS]
            if bad:
                raise ValueError(f"unknown optimizer(s) {bad}; allowed: {list(OPTIMIZERS)}")
            v = {o: {} for o in v}
        if isinstance(v, dict):
            if not v:
                raise ValueError(f"name at least one optimizer of {list(OPTIMIZERS)}")
            v = {k: ({} if p is None else p) for k, p in v.items()}
        return v


class DataSection(_Strict):
    folder: str | None = None  # image folder, one sub-folder per class (relative to the cwd)
    cache: str | None = None  # cache root (default $HPSEARCH_CACHE or ~/.cache/hpsearch)
    image_size: int = Field(64, ge=8, le=1024)
    test_fraction: float = Field(0.1, gt=0, lt=1)
    folds: int = Field(0, ge=0)
    merge: dict[str, list[str]] = Field(default_factory=dict)
    seed: int = 0
    workers: int | None = Field(None, ge=1)

    @field_validator("folds")
    @classmethod
    def _folds(cls, v: int) -> int:
        if v == 1:
            raise ValueError("folds must be 0 (none) or at least 2")
        return v


class SearchSection(_Strict):
    algorithm: Literal["tpe", "random", "grid"] = "tpe"
    num_trials: int = Field(20, ge=1)
    max_concurrent: int = Field(0, ge=0)  # 0: as many as the resources allow
    metric: Literal[METRICS] = "val_accuracy"  # type: ignore[valid-type]
    mode: Literal["max", "min"] | None = None  # default: min for losses, else max
    seed: int = 0
    space: SearchSpace = Field(default_factory=SearchSpace)

    @model_validator(mode="after")
    def _mode(self) -> SearchSection:
        natural = "min" if self.metric.endswith("loss") else "max"
        if self.mode is None:
            self.mode = natural
        elif self.mode != natural:
            raise ValueError(
                f"mode {self.mode!r} optimises {self.metric} the wrong way; use mode: {natural!r}"
            )
        return self


class SchedulerSection(_Strict):
    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1)  # epochs every trial gets before ASHA may stop it
    reduction_factor: float = Field(3.0, gt=1)


class SameInit(_Strict):
    """The seed's optimizer protocol: train the fixed architecture this long with SGD once,
    then start every trial from those weights."""

    epochs: int = Field(1, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)


class KFoldSection(_Strict):
    """After the search, re-train the top configs on k stratified folds (no early stopping)."""

    top: int = Field(3, ge=1)
    k: int = Field(10, ge=2)
    epochs: int | None = Field(None, ge=1)  # default: train.epochs


class TrainSection(_Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    seed: int = 0
    augment: bool = False  # on-device random crop + flip
    eval_batch_size: int = Field(512, ge=1)
    same_init: SameInit | None = None  # every trial starts from one SGD warm-up's weights


class ResourcesSection(_Strict):
    cpus: float = Field(1.0, gt=0)  # per trial
    gpus: float = Field(0.0, ge=0)  # per trial; fractions pack several trials on one GPU


class FailureSection(_Strict):
    max_retries: int = Field(1, ge=0)  # a crashed trial restarts from its last checkpoint


class Experiment(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    data: DataSection = Field(default_factory=DataSection)
    search: SearchSection = Field(default_factory=SearchSection)
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection)
    train: TrainSection = Field(default_factory=TrainSection)
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    failure: FailureSection = Field(default_factory=FailureSection)
    kfold: KFoldSection | None = None
    storage: str = "runs"

    @model_validator(mode="after")
    def _grid(self) -> Experiment:
        if self.search.algorithm == "grid":
            from search.space import grid_points

            grid_points(self.search.space)  # raises if a dimension is a continuous range
        if self.train.same_init is not None:
            varying = varying_architecture_dims(self.search.space)
            if varying:
                raise ValueError(
                    f"train.same_init needs a fixed architecture, but search.space varies {varying}: "
                    "fix them to one value each (the optimizer, lr, dropout and batch size may vary)"
                )
        if self.scheduler.type == "asha" and self.scheduler.grace_period > self.train.epochs:
            raise ValueError(
                f"scheduler.grace_period ({self.scheduler.grace_period}) exceeds train.epochs "
                f"({self.train.epochs}); lower it or train longer"
            )
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def apply_overrides(doc: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a raw experiment document."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ExperimentError(f"--set {item!r}: expected key.path=value, e.g. train.epochs=3")
        parts = key.strip().split(".")
        node = doc
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ExperimentError(f"--set {item!r}: {where} is a value, not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return doc


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid experiment ({err.error_count()} error(s)):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling"
        # whole-experiment checks name their fields in the message itself
        lines.append(f"  {loc}: {msg}" if loc else f"  {msg}")
    return "\n".join(lines)


def load_experiment(path: str | Path, overrides: Iterable[str] = ()) -> Experiment:
    """Read, override and validate an experiment file. Raises ExperimentError."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ExperimentError(f"{path}: no such experiment file") from None
    except yaml.YAMLError as e:
        raise ExperimentError(f"{path}: not valid YAML: {e}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ExperimentError(
            f"{path}: the top level must be a mapping (name:, data:, search:, ...)"
        )
    doc = apply_overrides(doc, overrides)
    try:
        return Experiment.model_validate(doc)
    except ValidationError as e:
        raise ExperimentError(format_validation_error(e, str(path))) from None
