"""The architecture of a ConvNet as data: a frozen, JSON-serialisable config.

A config is validated when it is built, and every error names the offending
field (``convs[2].stride must be >= 1, got 0``), so a bad value in an
experiment file or a search space fails at the boundary rather than inside a
trial. ``ConvNetConfig(**json.loads(text))`` works: lists become tuples and
dicts become ``ConvSpec``.

Whether the layers fit the image size is a separate question, answered by
shape arithmetic in ``models.shapes``.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ConvNetConfig", "ConvSpec"]


def _as_int(value: Any, field: str, minimum: int) -> int:
    # numbers.Integral admits numpy integers, which search spaces may produce.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{field} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{field} must be >= {minimum}, got {value}")
    return value


def _as_bool(value: Any, field: str) -> bool:
    # numpy.bool_ is no bool subclass and no numbers.Number; plain 0/1 are refused.
    if isinstance(value, bool) or (not isinstance(value, numbers.Number) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"{field} must be true or false, got {value!r}")


def _as_widths(mlp: Any) -> tuple[int, ...]:
    """The MLP head's hidden widths, as every config (preset or backbone) takes them."""
    if isinstance(mlp, (str, bytes, Mapping)) or not isinstance(mlp, Sequence):
        raise ValueError(f"mlp must be a list of hidden widths, got {mlp!r}")
    return tuple(_as_int(w, f"mlp[{i}]", 1) for i, w in enumerate(mlp))


def _as_dropout(p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p!r}")
    return float(p)


@dataclass(frozen=True)
class ConvSpec:
    """One conv stage: Conv2d, then [BatchNorm2d], ReLU and an optional max-pool."""

    out_channels: int
    kernel: int  # square kernel side
    stride: int = 1
    padding: int = 0  # zero padding on each side
    pool: bool = False  # max-pool after this conv (after BN/ReLU)
    pool_kernel: int = 3
    pool_stride: int = 2

    def __post_init__(self) -> None:
        # Messages start with the field name; ConvNetConfig prefixes "convs[i].".
        for name, minimum in (
            ("out_channels", 1),
            ("kernel", 1),
            ("stride", 1),
            ("padding", 0),
            ("pool_kernel", 1),
            ("pool_stride", 1),
        ):
            object.__setattr__(self, name, _as_int(getattr(self, name), name, minimum))
        object.__setattr__(self, "pool", _as_bool(self.pool, "pool"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConvSpec:
        """Build from a plain mapping; an unknown key is a ValueError naming it."""
        return _conv_from_mapping(d, "ConvSpec")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _conv_from_mapping(d: Any, where: str) -> ConvSpec:
    if isinstance(d, ConvSpec):
        return d
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be a mapping with out_channels, kernel, ..., got {d!r}")
    allowed = [f.name for f in dataclasses.fields(ConvSpec)]
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ValueError(f"{where} has unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}")
    for name in ("out_channels", "kernel"):
        if name not in d:
            raise ValueError(f"{where}.{name} is required")
    try:
        return ConvSpec(**d)
    except ValueError as err:  # ConvSpec's messages start with the field name
        raise ValueError(f"{where}.{err}") from None


@dataclass(frozen=True)
class ConvNetConfig:
    """Conv stages followed by an MLP classifier.

    ``dropout`` is the probability p of ``nn.Dropout`` before each hidden linear
    layer; it must lie in [0, 1): p = 1 would zero every activation and nothing
    could be learned. ``image_size`` is the side of the square input the
    layers are sized for (see ``models.presets.adapt_to_image_size``).
    """

    convs: tuple[ConvSpec, ...]
    mlp: tuple[int, ...] = ()  # hidden widths of the classifier MLP, any depth incl. 0
    dropout: float = 0.0  # p, dropout before each hidden linear layer
    batchnorm: bool = False  # BatchNorm2d after each conv
    num_classes: int = 10
    image_size: int = 227  # square input side
    in_channels: int = 3

    def __post_init__(self) -> None:
        convs = self.convs
        if isinstance(convs, (str, bytes, Mapping)) or not isinstance(convs, Sequence):
            raise ValueError(f"convs must be a list of conv layers, got {convs!r}")
        if len(convs) == 0:
            raise ValueError("convs must not be empty: a ConvNet needs at least one conv layer")
        object.__setattr__(
            self, "convs", tuple(_conv_from_mapping(c, f"convs[{i}]") for i, c in enumerate(convs))
        )

        object.__setattr__(self, "mlp", _as_widths(self.mlp))
        object.__setattr__(self, "dropout", _as_dropout(self.dropout))
        object.__setattr__(self, "batchnorm", _as_bool(self.batchnorm, "batchnorm"))
        object.__setattr__(self, "num_classes", _as_int(self.num_classes, "num_classes", 2))
        object.__setattr__(self, "image_size", _as_int(self.image_size, "image_size", 1))
        object.__setattr__(self, "in_channels", _as_int(self.in_channels, "in_channels", 1))

    # -- serialisation -------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, lists, numbers and bools: ready for json.dumps / Ray."""
        return {
            "convs": [c.to_dict() for c in self.convs],
            "mlp": list(self.mlp),
            "dropout": self.dropout,
            "batchnorm": self.batchnorm,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "in_channels": self.in_channels,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConvNetConfig:
        """Inverse of ``to_dict``; an unknown key is a ValueError naming it."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a model config must be a mapping, got {d!r}")
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise ValueError(f"unknown config key {unknown[0]!r}; allowed: {', '.join(allowed)}")
        if "convs" not in d:
            raise ValueError("convs is required")
        return cls(**d)

    # -- derived configs -----------------------------------------------------

    def replace(self, **changes: Any) -> ConvNetConfig:
        """A copy with some fields changed (``dataclasses.replace``, re-validated)."""
        allowed = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(allowed))
        if unknown:
            raise ValueError(f"unknown config field {unknown[0]!r}; allowed: {', '.join(allowed)}")
        return dataclasses.replace(self, **changes)

    def with_layers(
        self,
        strides: Sequence[int] | None = None,
        kernels: Sequence[int] | None = None,
        paddings: Sequence[int] | None = None,
        channels: Sequence[int] | None = None,
    ) -> ConvNetConfig:
        """Override per-conv values; each sequence has one entry per conv layer."""
        overrides = {
            "stride": ("strides", strides),
            "kernel": ("kernels", kernels),
            "padding": ("paddings", paddings),
            "out_channels": ("channels", channels),
        }
        layers = [c.to_dict() for c in self.convs]
        for key, (name, values) in overrides.items():
            if values is None:
                continue
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                raise ValueError(f"{name} must be a list with one value per conv layer")
            if len(values) != len(layers):
                raise ValueError(
                    f"{name} has {len(values)} values but the config has "
                    f"{len(layers)} conv layers; give one per conv layer"
                )
            for layer, value in zip(layers, values, strict=True):
                layer[key] = value
        return dataclasses.replace(self, convs=tuple(layers))
