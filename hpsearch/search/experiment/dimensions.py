"""Search dimensions: every value a search may vary is one `Dimension`, and `DIMENSIONS` lists
them all. The experiment schema, the Optuna space, the grid, the feasibility check, the same-init
warm-up, the console and the report read this table; adding a dimension is one entry here plus
whatever the model or optimizer must do with it.

In an experiment file a dimension takes one of three forms, parsed into a typed domain:

    dropout: 0.25                        # Fixed
    dropout: [0.0, 0.25, 0.5]            # Choices
    dropout: {low: 0.0, high: 0.5}       # Range; `log: true` for a log scale, `step:` to grid it

Per-layer dimensions (kind `LAYERS`) take one value per conv layer: `[4, 1, 1]` fixes them,
`[[4, 1, 1], [2, 1, 1]]` lists choices. Optuna's categorical choices must be scalars, so a
trial's config carries them as "4-1-1".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from hpsearch.models import check_backbone_name, is_backbone, list_backbones, list_models

OPTIMIZERS = ("sgd", "adam", "rmsprop")


def encode_layers(values: Sequence[int]) -> str:
    return "-".join(str(int(v)) for v in values)


def decode_layers(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split("-")) if text else ()


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# -- the three forms of a dimension's value ---------------------------------------------------


@dataclass(frozen=True)
class Fixed:
    """One value: used as it is, never sampled."""

    value: Any

    def values(self) -> list[Any]:
        return [self.value]

    def ends(self) -> list[Any]:
        return [self.value]

    def suggest(self, trial: Any, name: str, kind: Kind, *, grid: bool = False) -> Any:
        return kind.categorical(self.value)

    def to_data(self) -> Any:
        return _plain(self.value)


@dataclass(frozen=True)
class Choices:
    """A list of values; a single-element list behaves like `Fixed` but keeps its list form."""

    options: tuple[Any, ...]

    def values(self) -> list[Any]:
        return list(self.options)

    def ends(self) -> list[Any]:
        return list(self.options)

    def suggest(self, trial: Any, name: str, kind: Kind, *, grid: bool = False) -> Any:
        if len(self.options) == 1:
            return kind.categorical(self.options[0])
        return trial.suggest_categorical(name, [kind.categorical(v) for v in self.options])

    def to_data(self) -> list[Any]:
        return [_plain(v) for v in self.options]


@dataclass(frozen=True)
class Range:
    """low..high, optionally on a log scale or in steps (a stepped range can be gridded)."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    integer: bool = False

    def values(self) -> list[Any] | None:
        """The finite values of a stepped range, None for a continuous one."""
        if self.step is None:
            return None
        n = int(round((self.high - self.low) / self.step))
        vals = [self.low + i * self.step for i in range(n + 1)]
        return [int(v) for v in vals] if self.integer else vals

    def ends(self) -> list[Any]:
        return [self.low, self.high]

    def suggest(self, trial: Any, name: str, kind: Kind, *, grid: bool = False) -> Any:
        values = self.values()
        if values is not None and len(values) == 1:
            return values[0]
        if grid:
            return trial.suggest_categorical(name, values)
        if self.integer:
            return trial.suggest_int(name, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)

    def to_data(self) -> dict[str, Any]:
        out = {"low": self.low, "high": self.high, "log": self.log}
        return {**out, "step": self.step} if self.step else out


Domain = Fixed | Choices | Range


# -- kinds of value ----------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_layer_list(v: Any) -> bool:
    return isinstance(v, list | tuple) and len(v) > 0 and all(_is_int(x) and x >= 1 for x in v)


@dataclass(frozen=True)
class Kind:
    """What one value of a dimension is, and which forms it may take."""

    name: str
    forms: str  # the accepted forms, for error messages
    scalar_ok: Callable[[Any], bool]
    ranges: bool = False  # {low, high} allowed
    layers: bool = False  # one value per conv layer

    def categorical(self, value: Any) -> Any:
        return encode_layers(value) if self.layers else value

    def decode(self, value: Any) -> Any:
        """A trial-config value back into the model's form."""
        if self.layers:
            return decode_layers(value)
        return {"float": float, "int": int, "bool": bool}.get(self.name, str)(value)

    def parse(self, value: Any) -> Domain:
        """Validate `value` in any of its forms; ValueError says which forms are allowed."""
        if isinstance(value, Fixed | Choices | Range):
            return value
        if isinstance(value, dict):
            return self._range(value)
        if self.layers:
            if self.scalar_ok(value):
                return Fixed(tuple(value))
            if isinstance(value, list) and value and all(self.scalar_ok(v) for v in value):
                return Choices(tuple(tuple(v) for v in value))
            raise ValueError(f"expected {self.forms} (every value an integer >= 1)")
        if isinstance(value, list):
            if not value:
                raise ValueError(f"an empty list of choices; expected {self.forms}")
            bad = [v for v in value if not self.scalar_ok(v)]
            if bad:
                raise ValueError(f"invalid choice(s) {bad}; expected {self.forms}")
            return Choices(tuple(value))
        if self.scalar_ok(value):
            return Fixed(value)
        raise ValueError(f"got {value!r}; expected {self.forms}")

    def _range(self, value: dict[str, Any]) -> Range:
        if not self.ranges:
            raise ValueError(f"a range is not allowed here; expected {self.forms}")
        unknown = set(value) - {"low", "high", "log", "step"}
        if unknown:
            raise ValueError(
                f"unknown range key(s) {sorted(unknown)}; a range has low, high, log, step"
            )
        if "low" not in value or "high" not in value:
            raise ValueError("a range needs both low and high")
        low, high = value["low"], value["high"]
        if not (self.scalar_ok(low) and self.scalar_ok(high)):
            raise ValueError(f"low and high must be {'integers' if self is INT else 'numbers'}")
        if not low < high:
            raise ValueError(f"low ({low}) must be below high ({high})")
        log = value.get("log", False)
        if not isinstance(log, bool):
            raise ValueError("log must be true or false")
        if log and low <= 0:
            raise ValueError(f"a log range needs low > 0, got {low}")
        step = value.get("step")
        if step is not None and (not _is_number(step) or step <= 0 or log):
            raise ValueError("step must be a positive number and cannot be combined with log")
        return Range(low, high, log, step or None, integer=self is INT)


FLOAT = Kind("float", "a number, a list of numbers, or {low, high, log?, step?}", _is_number, True)
INT = Kind("int", "an integer, a list of integers, or {low, high, log?, step?}", _is_int, True)
BOOL = Kind("bool", "true, false or [true, false]", lambda v: isinstance(v, bool))
STR = Kind("str", "a name or a list of names", lambda v: isinstance(v, str) and v != "")
LAYERS = Kind(
    "layers",
    "one value per conv layer, e.g. [4, 1, 1], or a list of such lists",
    _is_layer_list,
    layers=True,
)


# -- dimensions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bounds:
    """An interval the values must lie in: [low, high], open at either end when asked."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, v: float) -> bool:
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or (v < self.high if self.high_open else v <= self.high)

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            if not (self.low_open or self.high_open):
                return f"between {self.low:g} and {self.high:g}"
            lo, hi = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {lo}{self.low:g}, {self.high:g}{hi}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"


# What a value changes: the model, the optimizer, the batches, the loss, or only the training's
# random draws (the seed: initial weights, batch order, augmentation, dropout masks).
Reaches = Literal["model", "optimizer", "batches", "loss", "noise"]


@dataclass(frozen=True)
class Dimension:
    """One search dimension: its kind and allowed values, where it takes effect, how it shows."""

    name: str  # the key under search.space (or under search.space.optimizer.<name>)
    kind: Kind
    help: str
    examples: tuple[Any, ...]  # two valid values, for docs and the table-driven tests
    reaches: Reaches  # what the value changes (see Reaches)
    default: Any = None  # the YAML form when the file leaves it out; None: the preset's value
    bounds: Bounds | None = None
    what: str = "values"  # for bound messages: "dropout p must be in [0, 1)"
    allowed: Callable[[], Sequence[str]] | None = None  # the names a STR dimension accepts
    # Also accepted beyond `allowed`: True, or raises ValueError naming what to change (a
    # torchvision backbone `tv/<name>`, a `stages:K` freeze); False: not of that form.
    accept: Callable[[Any], bool] | None = None
    noun: str = "name"  # for unknown-name messages: "unknown preset(s)"
    config_key: str | None = None  # its key in a trial's config (default: name)
    model_field: str | None = None  # the ConvNetConfig field it overrides
    shapes_weights: bool = False  # changes the weights' shapes (same_init needs it fixed)
    feasibility: bool = False  # can make the feature map vanish (enumerated before a run)
    widths: str | None = None  # a depth: each of its layers draws a width from this dimension
    width_of: str | None = None  # a per-layer width, drawn by its depth dimension
    per_optimizer: dict[str, Any] | None = field(default=None, hash=False)  # default per optimizer
    console: bool = False  # a column of the live progress table
    report: str | None = None  # the trials-table column the report shows for it
    backbone_only: bool = False  # takes effect for torchvision backbones only (presets ignore it)

    @property
    def key(self) -> str:
        return self.config_key or self.name

    def from_config(self, value: Any) -> Any:
        """A trial-config value in the model's form (a depth's config holds its widths)."""
        return decode_layers(value) if self.widths else self.kind.decode(value)

    def parse(self, value: Any) -> Domain | None:
        """The typed domain of a YAML value; ValueError names what to change."""
        if value is None:
            return None
        domain = self.kind.parse(value)
        values = domain.ends()
        if self.bounds is not None and not all(self.bounds.contains(v) for v in values):
            raise ValueError(f"{self.what} must be {self.bounds.describe()}, got {values}")
        if self.allowed is not None:
            allowed = list(self.allowed())
            bad = [v for v in values if v not in allowed and not self._accepts(v)]
            if bad:
                raise ValueError(f"unknown {self.noun}(s) {bad}; allowed: {allowed}")
        return domain

    def _accepts(self, value: Any) -> bool:
        return self.accept is not None and self.accept(value)


def _presets() -> list[str]:

    return list_models() + list_backbones()


def _backbone(value: Any) -> bool:
    """Any torchvision classification model as `tv/<name>` (torchvision is imported only for
    such a name)."""

    if not is_backbone(value):
        return False
    check_backbone_name(value)
    return True


def _stages(value: Any) -> bool:
    kind, _, k = str(value).partition(":")
    if kind != "stages":
        return False
    if not k.isdigit():
        raise ValueError(f"freeze {value!r}: write stages:K with K >= 0, e.g. stages:2")
    return True


_DIMENSIONS = (
    # name, kind, help, examples, reaches, then the rest by keyword
    Dimension("arch", STR, "preset or torchvision backbone (tv/<name>), see `hpsearch models`",
              ("FlatAlexNet", "AlexNet"), "model", default="FlatAlexNet", allowed=_presets,
              accept=_backbone, noun="preset", shapes_weights=True, feasibility=True,
              console=True, report="arch"),
    Dimension("pretrained", STR, "a backbone's start weights: none (random), imagenet "
              "(torchvision's default weights) or a state-dict file", ("none", "imagenet"),
              "model", backbone_only=True, console=True, report="pretrained"),
    Dimension("freeze", STR, "what of a backbone stays fixed: none, backbone (all but the "
              "head: a linear probe) or stages:K (the first K stages)", ("none", "backbone"),
              "model", allowed=lambda: ("none", "backbone"), accept=_stages, noun="freeze",
              backbone_only=True, console=True, report="freeze"),
    Dimension("backbone_lr_scale", FLOAT, "a backbone's learning rate as a multiple of the "
              "optimizer's lr (the head keeps lr)", (0.1, 1.0), "optimizer",
              bounds=Bounds(low=0, low_open=True), what="backbone_lr_scale",
              backbone_only=True, report="backbone_lr_scale"),
    Dimension("width", FLOAT, "multiplier of every conv layer's channels", (0.5, 1.0), "model",
              default=1.0, bounds=Bounds(low=0, low_open=True), what="width multipliers",
              shapes_weights=True, feasibility=True, console=True, report="width"),
    Dimension("strides", LAYERS, "one stride per conv layer", ((4, 1, 1), (2, 1, 1)), "model",
              model_field="strides", shapes_weights=True, feasibility=True,
              report="model_strides"),
    Dimension("kernels", LAYERS, "one kernel size per conv layer", ((11, 5, 3), (7, 3, 3)),
              "model", model_field="kernels", shapes_weights=True, feasibility=True,
              report="model_kernels"),
    Dimension("dropout", FLOAT, "dropout p before each hidden layer", (0.0, 0.5), "model",
              bounds=Bounds(0, 1, high_open=True), what="dropout p", model_field="dropout",
              console=True, report="dropout"),
    Dimension("batchnorm", BOOL, "batch norm after each conv", (False, True), "model",
              model_field="batchnorm", shapes_weights=True, console=True, report="batchnorm"),
    Dimension("batch_size", INT, "mini-batch size (default: train.batch_size)", (32, 64),
              "batches", bounds=Bounds(low=1), console=True, report="batch_size"),
    Dimension("l1", FLOAT, "L1 penalty: l1 x the sum of |w| over the conv and linear weights "
              "(not biases or batch norm) is added to the training loss; 0: off", (0.0, 1e-5),
              "loss", bounds=Bounds(low=0), what="the l1 penalty", report="l1"),
    Dimension("mlp_layers", INT, "hidden layers of the classifier", (1, 2), "model",
              bounds=Bounds(0, 4), what="hidden layers", config_key="mlp", model_field="mlp",
              shapes_weights=True, widths="mlp_width", console=True, report="mlp"),
    Dimension("mlp_width", INT, "units of each hidden layer (each layer draws its own)",
              (64, 128), "model", default={"low": 64, "high": 4096, "log": True},
              bounds=Bounds(low=1), shapes_weights=True, width_of="mlp_layers"),
    Dimension("seed", INT, "training seed of each trial: its initial weights, batch order, "
              "augmentation and dropout masks (default: train.seed); a list repeats every "
              "configuration once per seed", (0, 1), "noise", bounds=Bounds(low=0),
              what="training seeds", console=True, report="seed"),
    Dimension("optimizer", STR, "optimizer(s), each with its own lr, momentum, weight_decay",
              ("sgd", "adam"), "optimizer", allowed=lambda: OPTIMIZERS, noun="optimizer",
              console=True, report="optimizer"),
    Dimension("lr", FLOAT, "learning rate", (0.001, 0.01), "optimizer",
              bounds=Bounds(low=0, low_open=True),
              per_optimizer={"sgd": 0.01, "adam": 1e-3, "rmsprop": 1e-3},
              console=True, report="lr"),
    Dimension("momentum", FLOAT, "momentum (sgd and rmsprop)", (0.0, 0.9), "optimizer",
              bounds=Bounds(0, 1, high_open=True), per_optimizer={"sgd": 0.9, "rmsprop": 0.0},
              report="momentum"),
    Dimension("weight_decay", FLOAT, "L2 penalty as weight decay", (0.0, 1e-4), "optimizer",
              default=0.0, bounds=Bounds(low=0),
              per_optimizer={"sgd": 0.0, "adam": 0.0, "rmsprop": 0.0}, report="weight_decay"),
)  # fmt: skip
DIMENSIONS: dict[str, Dimension] = {d.name: d for d in _DIMENSIONS}
OPTIMIZER = DIMENSIONS["optimizer"]
# Under search.space: everything but the optimizer mapping and its per-optimizer parameters.
SPACE_DIMENSIONS = tuple(d for d in _DIMENSIONS if d.per_optimizer is None and d is not OPTIMIZER)
OPTIMIZER_PARAMS = tuple(d for d in _DIMENSIONS if d.per_optimizer is not None)
OPTIMIZER_DEFAULTS = {
    opt: {d.name: d.per_optimizer.get(opt) for d in OPTIMIZER_PARAMS} for opt in OPTIMIZERS
}
