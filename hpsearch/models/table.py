"""Plain-text tables of the presets and the torchvision backbones: size, cost and feasibility.

``hpsearch models [--image-size N] [--classes K]`` prints them. At another
image size than a preset's own the preset is adapted first (see
``models.presets``), exactly as ``get_config`` would build it for a trial.
A backbone is shown at the given size, or at the size its weights were
trained at, with the hpsearch head of no hidden layers; its cost comes from
a meta-device forward (see ``models.backbones``), which imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence

from hpsearch.models import backbones
from hpsearch.models.backbones import list_backbones
from hpsearch.models.presets import get_config, list_models, model_cfgs
from hpsearch.models.shapes import InfeasibleArchitecture, count_macs, count_params, feature_shapes

__all__ = ["format_backbones_table", "format_models_table", "human"]

_HEADER = ("preset", "input", "params", "MACs", "features", "status")
_BACKBONE_HEADER = ("backbone", "input", "params", "MACs", "features", "weights", "status")


def human(n: int) -> str:
    """58_350_000 -> '58.4M', 1_070_000_000 -> '1.07G': three significant digits."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            v = n / scale
            # Round first, so 999.96k reads '1000k' rather than '1000.0k'.
            digits = 0 if round(v, 1) >= 100 else 1 if round(v, 2) >= 10 else 2
            return f"{v:.{digits}f}{suffix}"
    return str(n)


def _row(name: str, image_size: int | None, num_classes: int) -> tuple[str, ...]:
    size = image_size if image_size is not None else model_cfgs[name].image_size
    overrides: dict[str, int] = {"num_classes": num_classes}
    if image_size is not None:
        overrides["image_size"] = image_size
    try:
        cfg = get_config(name, **overrides)
    except InfeasibleArchitecture as err:
        return (name, f"{size}x{size}", "-", "-", "-", f"infeasible: {err}")
    c, h, w = feature_shapes(cfg)[-1][1]
    return (
        name,
        f"{size}x{size}",
        human(count_params(cfg)),
        human(count_macs(cfg)),
        f"{c}x{h}x{w}",
        "ok",
    )


def _backbone_row(name: str, image_size: int | None, num_classes: int) -> tuple[str, ...]:

    size = image_size or backbones.trained_size(name) or 224
    cfg = backbones.BackboneConfig(name, num_classes, size, pretrained="imagenet")
    weights = "cached" if backbones.missing_weights(cfg) is None else "not cached"
    reason = backbones.feasibility(cfg)
    if reason is not None:
        return (cfg.arch, f"{size}x{size}", "-", "-", "-", weights, f"infeasible: {reason}")
    return (
        cfg.arch,
        f"{size}x{size}",
        human(backbones.count_params(cfg)),
        human(backbones.count_macs(cfg)),
        str(backbones.feature_shape(cfg)[0]),
        weights,
        "ok",
    )


def _align(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    right = {2, 3}  # numbers align right
    lines = []
    for r in rows:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(r, widths, strict=False))
        ]
        lines.append("  ".join([*cells, r[-1]]))
    lines.insert(1, "  ".join("-" * w for w in [*widths, len(rows[0][-1])]))
    return "\n".join(lines)


def format_backbones_table(
    image_size: int | None = None, num_classes: int = 28, names: Sequence[str] | None = None
) -> str:
    """One aligned row per backbone (``names`` or the suggested ones).

    ``image_size=None`` shows each at the crop size of its ImageNet weights.
    ``features`` is the length of the vector the head gets; ``weights`` says
    whether the ImageNet weights are in torch.hub's cache (``hpsearch weights
    fetch`` puts them there).
    """

    names = list_backbones() if names is None else names
    return _align([_BACKBONE_HEADER] + [_backbone_row(n, image_size, num_classes) for n in names])


def format_models_table(
    image_size: int | None = None, num_classes: int = 28, *, backbones: bool = False
) -> str:
    """One aligned row per preset; infeasible presets show the reason.

    ``image_size=None`` shows every preset at its own input size. MACs are
    per image and forward pass; ``features`` is the C x H x W map the
    classifier flattens. ``backbones=True`` appends ``format_backbones_table``
    after a blank line.
    """
    table = _align([_HEADER] + [_row(name, image_size, num_classes) for name in list_models()])
    if backbones:
        table += "\n\n" + format_backbones_table(image_size, num_classes)
    return table
