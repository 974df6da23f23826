"""torchvision classifiers as search candidates, written ``tv/<name>`` (``tv/resnet18``).

Any torchvision classification model (``torchvision.models.list_models(module=
torchvision.models)``) can stand next to the presets. ``BackboneNet`` keeps the
model's feature extractor and its own pooling, drops its classifier and adds
hpsearch's MLP head sized for the data's classes.

Weights (``BackboneConfig.pretrained``)
    ``None`` (or ``"none"``): random init. ``"imagenet"``: the model's DEFAULT torchvision
    weights, read from torch.hub's cache (``$TORCH_HOME/hub/checkpoints/<basename
    of the url>``) and never downloaded while building: ``missing_weights`` says
    what is missing and ``fetch_weights`` (``hpsearch weights fetch``) downloads
    ahead. A path: a state-dict file, of the torchvision model (its classifier
    keys may be absent) or of a ``BackboneNet`` (its head is dropped). Every
    file is read with ``torch.load(weights_only=True)``. Pretrained inputs are
    normalised with ImageNet's mean/std (``input_normalization``), for a file
    too: a fine-tuned torchvision model was almost always trained on those.

Freezing (``BackboneConfig.freeze``)
    ``"none"``; ``"backbone"`` (everything but the head: a linear probe with
    ``mlp=()``); ``"stages:K"`` (the first K feature stages). The stages are the
    children of the model's ``features`` (or regnet's ``trunk_output``, mnasnet's
    ``layers``) Sequential, else its top-level children with parameters,
    consecutive single layers counting as one stem (resnet: conv1+bn1 is stage
    0, then layer1..layer4). Frozen parameters get ``requires_grad=False`` and
    frozen modules stay in eval mode while the net trains, so batch-norm
    statistics, dropout and stochastic depth in them do not move either.

The classifier removed is the model's ``fc`` / ``classifier`` / ``heads`` /
``head``; a Sequential one is cut at its first Linear or Conv2d, keeping the
norm and flatten layers before it (convnext) and the pooling after it
(squeezenet). AlexNet and VGG thus lose their 4096-wide layers too.

Cost and feasibility come from a forward pass on the meta device (nothing is
allocated, except that regnet is built on the CPU first: it computes its widths
with tensors): ``count_params``, ``count_macs`` (``FlopCounterMode``; its
multiply-adds of ``resnet18`` at 224 px equal torchvision's published 1.814
GFLOPS, which are multiply-adds), ``feature_shape`` and ``check_feasible``. An
image under torchvision's ``min_size`` for the model (alexnet 63 px, convnext
32 px, vit 224 px), or one its forward refuses (vit at any other size than
224), is infeasible; resnets and mobilenets take any size down to 1 px.

This module imports torch and torchvision only inside functions: ``BackboneNet``
is created on first access.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from hpsearch.models.config import _as_bool, _as_dropout, _as_int, _as_widths
from hpsearch.models.shapes import InfeasibleArchitecture

if TYPE_CHECKING:
    from torch import nn

    class BackboneNet(nn.Module):  # the real class is made on first access (no torch import)
        cfg: BackboneConfig
        backbone: nn.Module
        head: nn.Sequential
        frozen: tuple[str, ...]


__all__ = [
    "BACKBONE_PREFIX",
    "SUGGESTED",
    "BackboneConfig",
    "BackboneNet",
    "BackboneInfeasible",
    "build_backbone",
    "check_backbone_name",
    "check_feasible",
    "count_macs",
    "count_params",
    "feasibility",
    "feature_shape",
    "fetch_weights",
    "input_normalization",
    "is_backbone",
    "list_backbones",
    "missing_weights",
    "num_stages",
    "param_groups",
    "size_warning",
    "trained_size",
    "weights_file",
]

BACKBONE_PREFIX = "tv/"
SUGGESTED = (
    "resnet18",
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
    "alexnet",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_HEAD_ATTRS = ("fc", "classifier", "heads", "head")  # where torchvision keeps the classifier
_STAGE_CONTAINERS = ("features", "trunk_output", "layers")  # Sequentials whose children are stages


def is_backbone(name: object) -> bool:
    """True for ``tv/<name>``: a string test, no torchvision import."""
    return isinstance(name, str) and name.startswith(BACKBONE_PREFIX)


def list_backbones() -> list[str]:
    """The backbones hpsearch suggests and tests, with the prefix."""
    return [BACKBONE_PREFIX + n for n in SUGGESTED]


@functools.cache
def _classification_models() -> tuple[str, ...]:
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    import torchvision
    from torchvision.models import list_models

    return tuple(list_models(module=torchvision.models))


def check_backbone_name(name: str) -> str:
    """The torchvision name of ``tv/<name>`` (or of a bare name); ValueError with close matches."""
    bare = name[len(BACKBONE_PREFIX) :] if is_backbone(name) else name
    known = _classification_models()
    if bare in known:
        return bare
    close = difflib.get_close_matches(str(bare).lower(), known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(BACKBONE_PREFIX + c for c in close)}?" if close else ""
    raise ValueError(
        f"unknown backbone {name!r}: not a torchvision classification model{hint} "
        f"Suggested: {', '.join(list_backbones())}; all of them: "
        "torchvision.models.list_models(module=torchvision.models)"
    )


def _stages_of(freeze: str) -> int | None:
    """'none' -> 0, 'backbone' -> None (all), 'stages:K' -> K; ValueError otherwise."""
    if freeze == "none":
        return 0
    if freeze == "backbone":
        return None
    kind, _, k = freeze.partition(":")
    if kind == "stages" and k.isdigit():
        return int(k)
    raise ValueError(f"freeze must be 'none', 'backbone' or 'stages:K' (K >= 0), got {freeze!r}")


@dataclass(frozen=True)
class BackboneConfig:
    """A torchvision model with hpsearch's MLP head; see the module docstring."""

    name: str  # torchvision name; a "tv/" prefix is stripped
    num_classes: int
    image_size: int  # square input side
    mlp: tuple[int, ...] = ()  # hidden widths of the head
    dropout: float = 0.0  # p after each hidden layer's ReLU (before the only Linear if none)
    pretrained: str | None = None  # None / "none", "imagenet", or a state-dict path
    freeze: str = "none"  # "none", "backbone" or "stages:K"
    batchnorm: bool = False  # BatchNorm1d after each hidden Linear of the head

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a torchvision model name, got {self.name!r}")
        if is_backbone(self.name):
            object.__setattr__(self, "name", self.name[len(BACKBONE_PREFIX) :])
        object.__setattr__(self, "num_classes", _as_int(self.num_classes, "num_classes", 2))
        object.__setattr__(self, "image_size", _as_int(self.image_size, "image_size", 1))
        object.__setattr__(self, "mlp", _as_widths(self.mlp))
        object.__setattr__(self, "dropout", _as_dropout(self.dropout))
        pretrained = self.pretrained
        if isinstance(pretrained, os.PathLike):
            pretrained = os.fspath(pretrained)
        if pretrained is not None and (not isinstance(pretrained, str) or not pretrained):
            raise ValueError(
                f"pretrained must be null, 'imagenet' or a state-dict path, got {pretrained!r}"
            )
        object.__setattr__(self, "pretrained", None if pretrained == "none" else pretrained)
        if not isinstance(self.freeze, str):
            raise ValueError(
                f"freeze must be 'none', 'backbone' or 'stages:K', got {self.freeze!r}"
            )
        _stages_of(self.freeze)
        object.__setattr__(self, "batchnorm", _as_bool(self.batchnorm, "batchnorm"))

    @property
    def arch(self) -> str:
        return BACKBONE_PREFIX + self.name

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "mlp": list(self.mlp)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BackboneConfig:
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise ValueError(f"unknown backbone key {unknown[0]!r}; allowed: {', '.join(allowed)}")
        return cls(**d)

    def replace(self, **changes: Any) -> BackboneConfig:
        """A copy with some fields changed (``dataclasses.replace``, re-validated)."""
        allowed = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(allowed))
        if unknown:
            raise ValueError(f"unknown config field {unknown[0]!r}; allowed: {', '.join(allowed)}")
        return dataclasses.replace(self, **changes)


class BackboneInfeasible(InfeasibleArchitecture):
    """The image size does not suit a backbone (the advice differs from a preset's)."""

    def __init__(self, layer: str, in_size: int, detail: str) -> None:
        super().__init__(layer, in_size, detail)
        self.args = (
            f"{layer}: {detail}. Use an image size the backbone accepts, or another backbone.",
        )


# -- weights ---------------------------------------------------------------------------------


def _default_weights(name: str) -> Any:
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    from torchvision.models import get_model_weights

    bare = check_backbone_name(name)
    weights = getattr(get_model_weights(bare), "DEFAULT", None)
    if weights is None:
        raise ValueError(f"torchvision has no pretrained weights for tv/{bare}")
    return weights


def weights_file(name: str) -> Path:
    """Where torch.hub caches the default weights of ``name`` (honours TORCH_HOME)."""
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    import torch

    basename = os.path.basename(urlparse(_default_weights(name).url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / basename


def _pretrained_file(cfg: BackboneConfig) -> Path | None:
    if cfg.pretrained is None:
        return None
    if cfg.pretrained == "imagenet":
        return weights_file(cfg.name)
    return Path(cfg.pretrained).expanduser()


def missing_weights(cfg: BackboneConfig) -> str | None:
    """None when ``cfg``'s weights can be loaded offline, else what is missing and how to get it."""
    path = _pretrained_file(cfg)
    if path is None or path.is_file():
        return None
    if cfg.pretrained == "imagenet":
        return (
            f"{cfg.arch}: pretrained: imagenet needs {path}, which does not exist. "
            f"Run `hpsearch weights fetch {cfg.arch}` on a machine with internet and copy the "
            f"file there, or point TORCH_HOME at a directory holding hub/checkpoints/{path.name}."
        )
    return (
        f"{cfg.arch}: pretrained: {cfg.pretrained} does not exist (resolved: {path.absolute()}). "
        "Give a state-dict file (torch.save(model.state_dict(), PATH)), imagenet, or null."
    )


def fetch_weights(names: Iterable[str]) -> list[Path]:
    """Download the default weights of each backbone into torch.hub's cache; their paths."""
    paths = []
    for name in names:
        weights, path = _default_weights(name), weights_file(name)
        if not path.is_file():
            try:  # torchvision's own download: torch.hub, with the url's hash checked
                weights.get_state_dict(
                    progress=True, check_hash=True, weights_only=True, map_location="cpu"
                )
            except (OSError, RuntimeError, ValueError) as err:
                raise RuntimeError(
                    f"could not download the weights of tv/{check_backbone_name(name)} from "
                    f"{weights.url} to {path}: {err}. Fetching needs access to "
                    "download.pytorch.org; on an offline machine copy the file to that path."
                ) from err
        paths.append(path)
    return paths


def input_normalization(cfg: BackboneConfig) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) the weights expect, or None (random init: use the data's own)."""
    if cfg.pretrained is None:
        return None
    try:
        transforms = _default_weights(cfg.name).transforms()
        return tuple(transforms.mean), tuple(transforms.std)
    except (ValueError, AttributeError):  # a file for a model without torchvision weights
        return IMAGENET_MEAN, IMAGENET_STD


def trained_size(name: str) -> int | None:
    """The crop size of the default weights' transforms (224 for most), None if unknown."""
    try:
        crop = _default_weights(name).transforms().crop_size
    except (ValueError, AttributeError):
        return None
    return int(crop[0]) if crop else None


def size_warning(cfg: BackboneConfig) -> str | None:
    """A warning when pretrained weights meet images under half or over twice their size."""
    size = trained_size(cfg.name) if cfg.pretrained is not None else None
    if size is None or size / 2 <= cfg.image_size <= size * 2:
        return None
    return (
        f"{cfg.arch}: the weights were trained on {size}x{size} images but the cache's are "
        f"{cfg.image_size}x{cfg.image_size}; their features may transfer poorly "
        f"(rebuild the cache nearer {size} px)"
    )


# -- building --------------------------------------------------------------------------------


def _torchvision_model(name: str) -> nn.Module:
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    from torchvision.models import get_model

    with warnings.catch_warnings():  # googlenet / inception_v3 warn about a future init change
        warnings.filterwarnings("ignore", "The default weight initialization", FutureWarning)
        return get_model(check_backbone_name(name))


def _classifier_plan(model: nn.Module) -> tuple[str, list[str], int]:
    """(attribute, children of it to keep, feature width) of the classifier to remove.

    A Sequential classifier is cut at its first Linear / Conv2d: norm and flatten
    layers before it stay (convnext), dropout goes, pooling after it stays (squeezenet).
    """
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    from torch import nn

    for attr in _HEAD_ATTRS:
        module = getattr(model, attr, None)
        if isinstance(module, nn.Linear):
            return attr, [], module.in_features
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        cut = next(
            (i for i, (_, m) in enumerate(children) if isinstance(m, nn.Linear | nn.Conv2d)), None
        )
        if cut is None:
            continue
        layer = children[cut][1]
        pools = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)
        keep = [n for n, m in children[:cut] if not isinstance(m, nn.Dropout)]
        keep += [n for n, m in children[cut + 1 :] if isinstance(m, pools)]
        width = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
        return attr, keep, width
    raise ValueError(
        f"{type(model).__name__} has no fc / classifier / head that hpsearch can replace"
    )


def _remove_classifier(model: nn.Module, attr: str, keep: list[str]) -> None:
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    from torch import nn

    old = getattr(model, attr)
    kept = OrderedDict((n, old.get_submodule(n)) for n in keep)
    setattr(model, attr, nn.Sequential(kept) if kept else nn.Identity())
    if getattr(model, "aux_logits", False):  # googlenet / inception: no auxiliary heads
        model.aux_logits = False
        for aux in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, aux):
                setattr(model, aux, None)


def _load_state(model: nn.Module, cfg: BackboneConfig, attr: str, keep: list[str]) -> None:
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    import torch

    problem = missing_weights(cfg)
    if problem:
        raise FileNotFoundError(problem)
    path = _pretrained_file(cfg)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"{path} holds no state dict (a mapping of tensor names to tensors)")
    if state and all(k.startswith(("backbone.", "head.")) for k in state):  # a BackboneNet's
        state = {k[9:]: v for k, v in state.items() if k.startswith("backbone.")}
    kept = tuple(f"{attr}.{n}." for n in keep)

    def is_classifier(key: str) -> bool:
        return key.startswith(f"{attr}.") and not key.startswith(kept)

    state = {k: v for k, v in state.items() if not is_classifier(k)}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit {cfg.arch}: {err}") from None
    missing = [k for k in result.missing_keys if not is_classifier(k)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{path} does not fit {cfg.arch}: missing {missing[:4]}, "
            f"unexpected {result.unexpected_keys[:4]} (of {len(missing)} and "
            f"{len(result.unexpected_keys)}); is it a state dict of torchvision's {cfg.name}?"
        )
    if hasattr(model, "transform_input"):  # as torchvision's builders set it for their weights
        model.transform_input = True


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _stages(backbone: nn.Module) -> list[list[str]]:
    """Module names per freezable stage (see the module docstring)."""
    stages: list[list[str]] = []
    stem: list[str] = []

    def flush() -> None:
        if any(_has_params(backbone.get_submodule(n)) for n in stem):
            stages.append(list(stem))
        stem.clear()

    for name, child in backbone.named_children():
        if name in _HEAD_ATTRS:
            continue
        if name in _STAGE_CONTAINERS and len(child) > 0:
            flush()
            stages += [[f"{name}.{n}"] for n, m in child.named_children() if _has_params(m)]
        elif next(child.children(), None) is None:  # a single layer: part of a stem
            stem.append(name)
        else:
            flush()
            if _has_params(child):
                stages.append([name])
    flush()
    return stages


def _frozen_modules(backbone: nn.Module, cfg: BackboneConfig) -> list[str]:
    k = _stages_of(cfg.freeze)
    if k is None:
        return [""]
    stages = _stages(backbone)
    if k > len(stages):
        raise ValueError(
            f"freeze {cfg.freeze!r}: {cfg.arch} has {len(stages)} stages "
            f"({', '.join('+'.join(s) for s in stages)}); use stages:0..{len(stages)} or backbone"
        )
    return [n for stage in stages[:k] for n in stage]


def _head(width: int, cfg: BackboneConfig) -> nn.Sequential:
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    from torch import nn

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for j, hidden in enumerate(cfg.mlp, start=1):
        # BatchNorm's own bias replaces the Linear's, as in models.convnet.
        layers[f"fc{j}"] = nn.Linear(width, hidden, bias=not cfg.batchnorm)
        if cfg.batchnorm:
            layers[f"bn{j}"] = nn.BatchNorm1d(hidden)
        layers[f"relu{j}"] = nn.ReLU(inplace=True)
        if cfg.dropout > 0:
            layers[f"drop{j}"] = nn.Dropout(cfg.dropout)
        width = hidden
    if not cfg.mlp and cfg.dropout > 0:
        layers["drop"] = nn.Dropout(cfg.dropout)
    layers["head"] = nn.Linear(width, cfg.num_classes)
    return nn.Sequential(layers)


@functools.cache
def _net_class() -> type:
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    from torch import nn

    class BackboneNet(nn.Module):
        """``head(backbone(x))``: a torchvision feature extractor and hpsearch's MLP head."""

        def __init__(self, cfg: BackboneConfig, *, load_weights: bool = True) -> None:
            super().__init__()
            check_feasible(cfg)  # on the meta device: an infeasible size fails before allocating
            self.cfg = cfg
            model = _torchvision_model(cfg.name)
            attr, keep, width = _classifier_plan(model)
            if load_weights and cfg.pretrained is not None:
                _load_state(model, cfg, attr, keep)  # before the classifier goes: its keys fit
            _remove_classifier(model, attr, keep)
            self.backbone = model
            self.head = _head(width, cfg)
            self.frozen = tuple(f"backbone.{n}".rstrip(".") for n in _frozen_modules(model, cfg))
            for name in self.frozen:
                self.get_submodule(name).requires_grad_(False)
            self.train()

        def train(self, mode: bool = True) -> BackboneNet:
            super().train(mode)
            for name in self.frozen:  # frozen BN statistics and dropout stay as loaded
                self.get_submodule(name).eval()
            return self

        def forward(self, x):
            return self.head(self.backbone(x))

    BackboneNet.__module__, BackboneNet.__qualname__ = __name__, "BackboneNet"  # pickles
    return BackboneNet


def __getattr__(name: str) -> Any:
    if name == "BackboneNet":
        return _net_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_backbone(cfg: BackboneConfig | Mapping[str, Any]) -> BackboneNet:
    """A BackboneNet from a config or its ``to_dict()`` form; loads the weights offline."""
    if not isinstance(cfg, BackboneConfig):
        cfg = BackboneConfig.from_dict(cfg)
    return _net_class()(cfg)


def param_groups(model: BackboneNet) -> tuple[list, list]:
    """(trainable backbone parameters, trainable head parameters), for two optimizer groups."""
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    return backbone, [p for p in model.head.parameters() if p.requires_grad]


def num_stages(name: str) -> int:
    """How many stages ``freeze: stages:K`` can freeze in ``name``."""
    return _probe(check_backbone_name(name), 224)[2]


# -- cost and feasibility, on the meta device ------------------------------------------------


def _on_meta(make: Callable[[], nn.Module]) -> nn.Module:
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    import torch

    try:
        with torch.device("meta"):
            return make()
    except NotImplementedError:  # regnet computes its widths with tensors: build, then move
        return make().to("meta")


@functools.lru_cache(maxsize=256)
def _probe(name: str, image_size: int) -> tuple[str | None, int, int]:
    """(reason it is infeasible or None, feature width, number of stages) of a meta forward."""
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    import torch

    model = _on_meta(lambda: _torchvision_model(name))
    attr, keep, width = _classifier_plan(model)
    _remove_classifier(model, attr, keep)
    n_stages = len(_stages(model))
    try:
        min_size = _default_weights(name).meta.get("min_size")
    except ValueError:
        min_size = None
    if min_size and image_size < max(min_size):
        side = max(min_size)
        return (
            f"the {image_size}x{image_size} input is under {side}x{side}, torchvision's min_size for {name}",
            0,
            n_stages,
        )
    entered: list[tuple[str, nn.Module, tuple]] = []
    hooks = [
        m.register_forward_pre_hook(lambda m, args, n=n: entered.append((n, m, args)))
        for n, m in model.named_modules()
        if next(m.children(), None) is None
    ]
    try:
        with torch.no_grad():
            out = model.eval()(torch.empty(1, 3, image_size, image_size, device="meta"))
    except (RuntimeError, ValueError, AssertionError, IndexError) as err:
        where = ""
        if entered:
            n, m, args = entered[-1]
            shape = (
                "x".join(map(str, args[0].shape[1:])) if args and hasattr(args[0], "shape") else "?"
            )
            where = f" in {n} ({type(m).__name__}) on a {shape} map"
        return (
            f"the {image_size}x{image_size} image fails{where}: {str(err).splitlines()[0]}",
            0,
            n_stages,
        )
    finally:
        for h in hooks:
            h.remove()
    return None, int(out.reshape(1, -1).shape[1]), n_stages


def check_feasible(cfg: BackboneConfig) -> None:
    """Raise BackboneInfeasible (an InfeasibleArchitecture) if the backbone refuses the size."""
    reason = _probe(check_backbone_name(cfg.name), cfg.image_size)[0]
    if reason is not None:
        raise BackboneInfeasible(cfg.arch, cfg.image_size, reason)


def feasibility(cfg: BackboneConfig) -> str | None:
    """None when the backbone takes the image size, else the reason."""
    try:
        check_feasible(cfg)
    except InfeasibleArchitecture as err:
        return str(err)
    return None


def feature_shape(cfg: BackboneConfig) -> tuple[int]:
    """(F,): the vector the backbone hands the head."""
    check_feasible(cfg)
    return (_probe(check_backbone_name(cfg.name), cfg.image_size)[1],)


def _cost_key(cfg: BackboneConfig) -> BackboneConfig:
    return cfg.replace(pretrained=None, freeze="none", dropout=0.0)  # none changes the cost


@functools.lru_cache(maxsize=256)
def _cost(cfg: BackboneConfig) -> tuple[int, int]:
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    check_feasible(cfg)
    model = _on_meta(lambda: _net_class()(cfg, load_weights=False))
    params = sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.empty(1, 3, cfg.image_size, cfg.image_size, device="meta"))
    return params, counter.get_total_flops() // 2


def count_params(cfg: BackboneConfig) -> int:
    """All parameters (frozen ones too), as ``sum(p.numel() for p in build_backbone(cfg).parameters())``."""
    return _cost(_cost_key(cfg))[0]


def count_macs(cfg: BackboneConfig) -> int:
    """Multiply-accumulates of one forward pass of one image (convs and linears)."""
    return _cost(_cost_key(cfg))[1]
