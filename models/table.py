"""A plain-text table of the presets: size, cost and feasibility.

``hpsearch models [--image-size N] [--classes K]`` prints it. At another
image size than a preset's own the preset is adapted first (see
``models.presets``), exactly as ``get_config`` would build it for a trial.
"""

from __future__ import annotations

from models.presets import get_config, list_models, model_cfgs
from models.shapes import InfeasibleArchitecture, count_macs, count_params, feature_shapes

__all__ = ["format_models_table", "human"]

_HEADER = ("preset", "input", "params", "MACs", "features", "status")


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


def format_models_table(image_size: int | None = None, num_classes: int = 28) -> str:
    """One aligned row per preset; infeasible presets show the reason.

    ``image_size=None`` shows every preset at its own input size. MACs are
    per image and forward pass; ``features`` is the C x H x W map the
    classifier flattens.
    """
    rows = [_HEADER] + [_row(name, image_size, num_classes) for name in list_models()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADER) - 1)]
    right = {2, 3}  # numbers align right
    lines = []
    for r in rows:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(r, widths, strict=False))
        ]
        lines.append("  ".join([*cells, r[-1]]))
    lines.insert(1, "  ".join("-" * w for w in [*widths, len(_HEADER[-1])]))
    return "\n".join(lines)
