"""Named architectures of the seed study, as data, and the factory for them.

``model_cfgs`` holds one literal per preset: AlexNet as the seed's code has
it, and the variants the seed compared (depth, width, strides, kernels, MLP).
The seed's ``networks.py`` is lost, so the variants' concrete values are
chosen here; all are sized for 227 x 227 inputs.

Small images
------------
Asking for another ``image_size`` than a preset's own (``get_config(name,
image_size=32)``) adapts it with ``adapt_to_image_size``. Every conv keeps
its channels and its place, the MLP and the pools stay. With
r = image_size / native size (rounding half up):

* r < 1, every conv: kernel = max(3, nearest odd integer to kernel * r),
  stride = max(1, round(stride * r)), padding = kernel // 2 (a "same" conv,
  so no map ever vanishes: the result is always feasible);
* r > 1, the first conv only: kernel and stride as above, padding =
  min(round(padding * r), kernel // 2). Its output is then about the native
  one, so the layers after it see the maps they were designed for; scaling
  their strides too would compound (2 per layer at r = 1.5) and make most
  presets infeasible from about 350 px;
* a max-pool is dropped when its input is smaller than its kernel.

Because kernels bottom out at 3 and strides at 1, variants that differ only
in strides or kernels can coincide at small sizes (at 32 px the three
FlatAlexNet stride variants are the same network). ``strides=`` / ``kernels=``
/ ``paddings=`` / ``channels=`` overrides apply after adaptation, so a search
can still vary them; a combination that does not fit raises
``InfeasibleArchitecture`` naming the layer.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import TYPE_CHECKING, Any

from hpsearch.models.config import ConvNetConfig, ConvSpec
from hpsearch.models.shapes import check_feasible, out_size

if TYPE_CHECKING:
    from hpsearch.models.convnet import ConvNet

__all__ = [
    "adapt_to_image_size",
    "create_model",
    "get_config",
    "list_models",
    "model_cfgs",
]


def _flat(
    kernels: tuple[int, int, int],
    strides: tuple[int, int, int],
    paddings: tuple[int, int, int],
    mlp: tuple[int, ...] = (4096, 4096),
) -> ConvNetConfig:
    # FlatAlexNet's three conv stages (AlexNet without conv3 and conv4), each pooled.
    return ConvNetConfig(
        convs=tuple(
            ConvSpec(c, k, s, p, pool=True)
            for c, k, s, p in zip((96, 256, 256), kernels, strides, paddings, strict=True)
        ),
        mlp=mlp,
    )


model_cfgs: dict[str, ConvNetConfig] = dict(
    # The seed's AlexNet: 5 convs, 3 max-pools (3/2), MLP 4096-4096, no dropout/BN.
    AlexNet=ConvNetConfig(
        convs=(
            ConvSpec(96, 11, stride=4, padding=0, pool=True),
            ConvSpec(256, 5, stride=1, padding=2, pool=True),
            ConvSpec(384, 3, stride=1, padding=1),
            ConvSpec(384, 3, stride=1, padding=1),
            ConvSpec(256, 3, stride=1, padding=1, pool=True),
        ),
        mlp=(4096, 4096),
        image_size=227,
    ),
    # AlexNet with conv3 and conv4 removed (less depth).
    FlatAlexNet=_flat(kernels=(11, 5, 3), strides=(4, 1, 1), paddings=(0, 2, 1)),
    # AlexNet with half the feature maps in every conv (less width).
    NarrowAlexNet=ConvNetConfig(
        convs=(
            ConvSpec(48, 11, stride=4, padding=0, pool=True),
            ConvSpec(128, 5, stride=1, padding=2, pool=True),
            ConvSpec(192, 3, stride=1, padding=1),
            ConvSpec(192, 3, stride=1, padding=1),
            ConvSpec(128, 3, stride=1, padding=1, pool=True),
        ),
        mlp=(4096, 4096),
        image_size=227,
    ),
    # FlatAlexNet with higher strides in conv1 and conv2 (4, 1 -> 5, 2).
    FlatAlexNetHS=_flat(kernels=(11, 5, 3), strides=(5, 2, 1), paddings=(0, 2, 1)),
    # FlatAlexNet with a lower stride in conv1 (4 -> 3).
    FlatAlexNetLS=_flat(kernels=(11, 5, 3), strides=(3, 1, 1), paddings=(0, 2, 1)),
    # FlatAlexNetHS with smaller kernels (11, 5, 3 -> 7, 3, 3).
    FlatAlexNetLowKernel=_flat(kernels=(7, 3, 3), strides=(5, 2, 1), paddings=(0, 1, 1)),
    # FlatAlexNetHS with larger kernels (11, 5, 3 -> 15, 7, 5).
    FlatAlexNetHighKernel=_flat(kernels=(15, 7, 5), strides=(5, 2, 1), paddings=(0, 3, 2)),
    # FlatAlexNetLowKernel with the seed's Optuna MLP (fc1 2379, fc2 5592, fc3 7864).
    FlatAlexNetOpt=_flat(
        kernels=(7, 3, 3), strides=(5, 2, 1), paddings=(0, 1, 1), mlp=(2379, 5592, 7864)
    ),
)

_LAYER_OVERRIDES = ("strides", "kernels", "paddings", "channels")


def list_models() -> list[str]:
    """Preset names, in the order of the seed's study."""
    return list(model_cfgs)


def _round(x: float) -> int:
    # Half up, not Python's half-to-even, so the rule is easy to state.
    return math.floor(x + 0.5)


def _odd(x: float) -> int:
    """The odd integer nearest to x (ties go up)."""
    return 2 * _round((x - 1) / 2) + 1


def adapt_to_image_size(cfg: ConvNetConfig, image_size: int) -> ConvNetConfig:
    """Rescale kernels, strides and paddings of ``cfg`` to another input size.

    See the module docstring for the rule. Returns ``cfg`` itself when the
    size is unchanged. Smaller sizes always give a feasible config.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral):
        raise ValueError(f"image_size must be an integer, got {image_size!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    image_size = int(image_size)
    if image_size == cfg.image_size:
        return cfg

    r = image_size / cfg.image_size
    size = image_size
    convs = []
    for i, spec in enumerate(cfg.convs):
        kernel, stride, padding = spec.kernel, spec.stride, spec.padding
        if r < 1 or i == 0:
            kernel = max(3, _odd(kernel * r))
            stride = max(1, _round(stride * r))
            padding = kernel // 2 if r < 1 else min(_round(padding * r), kernel // 2)
        size = out_size(size, kernel, stride, padding)
        pool = spec.pool and size >= spec.pool_kernel
        if pool:
            size = out_size(size, spec.pool_kernel, spec.pool_stride)
        convs.append(
            dataclasses.replace(spec, kernel=kernel, stride=stride, padding=padding, pool=pool)
        )
    return dataclasses.replace(cfg, convs=tuple(convs), image_size=image_size)


def get_config(name: str, **overrides: Any) -> ConvNetConfig:
    """The preset ``name`` with overrides applied, checked for feasibility.

    Overrides: any ConvNetConfig field (``num_classes=28``, ``dropout=0.3``,
    ``mlp=(512,)``, ``batchnorm=True``, ``image_size=32``, ...) and the
    per-conv sequences ``strides``, ``kernels``, ``paddings``, ``channels``.
    ``image_size`` adapts the preset (``adapt_to_image_size``) unless ``convs``
    is given too; the per-conv sequences apply last. Raises ValueError for an
    unknown name or override and InfeasibleArchitecture when the result does
    not fit its image size.
    """
    if name not in model_cfgs:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(model_cfgs)}")
    fields = [f.name for f in dataclasses.fields(ConvNetConfig)]
    allowed = [*fields, *_LAYER_OVERRIDES]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown override {unknown[0]!r} for model {name!r}; allowed: {', '.join(allowed)}"
        )

    cfg = model_cfgs[name]
    changes = {k: v for k, v in overrides.items() if k in fields}
    if "image_size" in changes and "convs" not in changes:
        cfg = adapt_to_image_size(cfg, changes.pop("image_size"))
    if changes:
        cfg = cfg.replace(**changes)
    layers = {k: v for k, v in overrides.items() if k in _LAYER_OVERRIDES}
    if layers:
        cfg = cfg.with_layers(**layers)
    check_feasible(cfg)
    return cfg


def create_model(name: str, **overrides: Any) -> ConvNet:
    """``ConvNet(get_config(name, **overrides))``."""
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    from hpsearch.models.convnet import ConvNet

    return ConvNet(get_config(name, **overrides))
