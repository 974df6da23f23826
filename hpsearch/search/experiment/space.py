"""The search space of an experiment, read off the dimension table: Optuna's define-by-run
function, the grid, the feasibility check, what of it fits `search.budget`, and the way back
from a trial's config to a model.

A trial's config is flat plain data (Ray stores it as JSON): one key per dimension
(`Dimension.key`: `arch`, `width`, `strides`, `kernels`, `mlp` ("4-1-1", "" for no hidden
layer), `dropout`, `batchnorm`, `batch_size`, `seed`, `optimizer`, `lr`, `momentum`,
`weight_decay`).
Optuna's own parameter names add the raw per-layer and per-optimizer ones (`mlp_layers`,
`mlp_width_0`, `sgd_lr`, ...). A dimension the experiment leaves out is absent, and the
preset's own value applies.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpsearch import models
from hpsearch.models import Cost, InfeasibleArchitecture, ModelConfig
from hpsearch.search.errors import ExperimentError
from hpsearch.search.experiment.budget import Budget, OverBudget, format_count
from hpsearch.search.experiment.dimensions import (
    DIMENSIONS,
    OPTIMIZER,
    OPTIMIZER_PARAMS,
    SPACE_DIMENSIONS,
    Choices,
    Dimension,
    Domain,
    encode_layers,
)

if TYPE_CHECKING:
    from hpsearch.search.experiment.space_model import SearchSpace


def _sampled(space: SearchSpace) -> Iterator[tuple[Dimension, Domain]]:
    """The dimensions under search.space that the experiment sets, in table order."""
    for dim in SPACE_DIMENSIONS:
        domain = getattr(space, dim.name)
        if domain is not None:
            yield dim, domain


def _optimizers(space: SearchSpace) -> Choices:
    return Choices(tuple(space.optimizer))


class DefineSpace:
    """The define-by-run function for Ray's OptunaSearch. It only samples; it computes nothing.
    A class rather than a closure: Ray pickles the searcher into its experiment checkpoint."""

    def __init__(self, space: SearchSpace, *, grid: bool = False) -> None:
        self.space, self.grid = space, grid

    def __call__(self, trial: Any) -> dict[str, Any]:
        space, grid = self.space, self.grid
        out: dict[str, Any] = {}
        depths = []
        for dim, domain in _sampled(space):
            if dim.widths:
                depths.append((dim, domain))  # drawn after the rest, then one width per layer
            elif not dim.width_of:
                out[dim.key] = domain.suggest(trial, dim.name, dim.kind, grid=grid)
        for dim, domain in depths:
            width = DIMENSIONS[dim.widths]
            depth = domain.suggest(trial, dim.name, dim.kind, grid=grid)
            out[dim.key] = encode_layers(
                getattr(space, width.name).suggest(
                    trial, f"{width.name}_{i}", width.kind, grid=grid
                )
                for i in range(depth)
            )
        opt = _optimizers(space).suggest(trial, OPTIMIZER.name, OPTIMIZER.kind, grid=grid)
        out[OPTIMIZER.key] = opt
        params = space.optimizer[opt]
        for dim in OPTIMIZER_PARAMS:
            if opt not in dim.per_optimizer:
                continue  # e.g. Adam has betas, not momentum
            domain = getattr(params, dim.name)
            out[dim.key] = (
                dim.per_optimizer[opt]
                if domain is None
                else domain.suggest(trial, f"{opt}_{dim.name}", dim.kind, grid=grid)
            )
        return out


def build_space(space: SearchSpace, *, grid: bool = False) -> DefineSpace:
    return DefineSpace(space, grid=grid)


def grid_points(space: SearchSpace) -> dict[str, list[Any]]:
    """Every sampled dimension's values for Optuna's GridSampler. Raises ValueError for a
    continuous range (give it a `step` or list the values)."""
    points: dict[str, list[Any]] = {}

    def add(name: str, domain: Domain, dim: Dimension) -> list[Any]:
        values = domain.values()
        if values is None:
            raise ValueError(
                f"search.space.{name}: a grid search needs listed values or a range with `step`"
            )
        if len(values) > 1:
            points[name] = [dim.kind.categorical(v) for v in values]
        return values

    for dim, domain in _sampled(space):
        if dim.width_of:
            continue
        values = add(dim.name, domain, dim)
        if dim.widths and max(values) > 0:
            width = DIMENSIONS[dim.widths]
            for i in range(max(values)):
                add(f"{width.name}_{i}", getattr(space, width.name), width)
    if len(space.optimizer) > 1:
        points[OPTIMIZER.name] = list(space.optimizer)
    for opt, params in space.optimizer.items():
        for dim in OPTIMIZER_PARAMS:
            domain = getattr(params, dim.name)
            if domain is not None and opt in dim.per_optimizer:
                add(f"{opt}_{dim.name}", domain, dim)
    return points


def grid_size(space: SearchSpace) -> int:
    """How many distinct configurations a grid over `space` has: the product of the sampled
    dimensions' values, where a depth counts each of its depths with that many widths (0 hidden
    layers: one configuration, 2: widths squared) and each optimizer only its own parameters.
    Raises ValueError for a continuous range, as `grid_points` does. Counted, not enumerated,
    so a large grid is checked at once (tests/search/test_grid.py enumerates small ones)."""
    grid_points(space)  # names a continuous range
    size = 1
    for dim, domain in _sampled(space):
        if dim.width_of:
            continue
        values = domain.values()
        if dim.widths and max(values) > 0:  # (no hidden layer: the widths are never drawn)
            widths = len(getattr(space, dim.widths).values())
            size *= sum(widths**depth for depth in values)
        else:
            size *= len(values)
    per_optimizer = 0
    for opt, params in space.optimizer.items():
        combos = 1
        for dim in OPTIMIZER_PARAMS:
            domain = getattr(params, dim.name)
            if domain is not None and opt in dim.per_optimizer:
                combos *= len(domain.values())
        per_optimizer += combos
    return size * per_optimizer


def varying_architecture_dims(space: SearchSpace) -> list[str]:
    """The dimensions that change the weights' shapes and are not fixed to one value."""
    out = []
    for dim, domain in _sampled(space):
        if not dim.shapes_weights:
            continue
        if dim.width_of:
            depth = getattr(space, dim.width_of)
            if depth is None or depth.values() in ([0],):
                continue  # no hidden layer: the widths shape nothing
        values = domain.values()
        if values is None or len(values) > 1:
            out.append(dim.name)
    return out


def in_every_config(space: SearchSpace, dim: Dimension) -> bool:
    """Whether every trial's config has `dim.key` (the console shows only such columns)."""
    if dim is OPTIMIZER:
        return True
    if dim.per_optimizer is not None:
        return all(opt in dim.per_optimizer for opt in space.optimizer)
    return getattr(space, dim.name) is not None


def fixed_architecture(space: SearchSpace) -> dict[str, Any]:
    """The trial-config keys that reach the model, for a space that fixes the weights' shapes
    (what the same-init warm-up trains)."""
    import optuna  # not at the top: the CLI validates experiments before it is needed

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    config = DefineSpace(space)(study.ask())
    keep = {d.key for d in SPACE_DIMENSIONS if d.reaches == "model"}
    return {k: v for k, v in config.items() if k in keep}


def model_config(
    config: dict[str, Any], *, image_size: int, num_classes: int, budget: Budget | None = None
) -> ModelConfig:
    """The model config (a preset's ConvNetConfig or a backbone's BackboneConfig: `models`
    chooses) a trial config describes. Raises InfeasibleArchitecture when the feature map would
    vanish, OverBudget when its cost exceeds `budget` (counted, nothing is built), ValueError
    for values the model rejects."""
    fields: dict[str, Any] = {}
    for dim in SPACE_DIMENSIONS:
        if dim.model_field and config.get(dim.key) is not None:
            fields[dim.model_field] = dim.from_config(config[dim.key])
    for key in ("pretrained", "freeze"):  # a backbone's own
        fields[key] = config.get(key)
    cfg = models.make_config(
        config.get("arch", DIMENSIONS["arch"].default),
        image_size=image_size,
        num_classes=num_classes,
        width=float(config.get("width", DIMENSIONS["width"].default)),
        **fields,
    )
    if budget is not None:
        budget.check(models.cost(cfg))
    return cfg


def check_space(space: SearchSpace, *, image_size: int, num_classes: int) -> list[str]:
    """Raise ExperimentError if no architecture the space can produce is feasible at this image
    size; otherwise return the reasons of the infeasible combinations (may be empty).

    The dimensions marked `feasibility` are enumerated (a range is checked at its ends)."""
    dims = [(dim, domain) for dim, domain in _sampled(space) if dim.feasibility]
    options = [domain.values() or domain.ends() for _, domain in dims]
    reasons: list[str] = []
    feasible = 0
    for combo in itertools.product(*options):
        config = {dim.key: dim.kind.categorical(v) for (dim, _), v in zip(dims, combo, strict=True)}
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


@dataclass(frozen=True)
class BudgetFit:
    """How much of a space fits `search.budget`: of its `total` feasible architecture
    combinations (as `check_budget` enumerates them), `fits` are within it; `over` are the
    others' reasons; `cheapest` is the one closest to fitting, with its `cost`."""

    fits: int
    total: int
    cheapest: str
    cost: Cost
    over: tuple[str, ...]


def _cost_options(space: SearchSpace) -> list[tuple[str, list[Any]]]:
    """(config key, values) of every dimension that changes a model's cost: the feasibility
    ones, batch norm and the MLP's depth, each depth with every hidden layer at the narrowest
    width the space has (a wider layer only costs more). A range is taken at its ends."""
    options = []
    for dim, domain in _sampled(space):
        if not dim.shapes_weights or dim.width_of:  # (the feasibility ones shape them too)
            continue
        values = list(domain.values() or domain.ends())
        if dim.widths:
            width = getattr(space, dim.widths)
            narrowest = min(width.values() or width.ends()) if width is not None else 1
            options.append((dim.key, [encode_layers([int(narrowest)] * d) for d in values]))
        else:
            options.append((dim.key, [dim.kind.categorical(v) for v in values]))
    return options


def check_budget(
    space: SearchSpace, budget: Budget, *, image_size: int, num_classes: int
) -> BudgetFit:
    """Count the architecture combinations of `space` that fit `budget` (`models.cost`, by
    arithmetic for presets). Raise ExperimentError, naming the cheapest combination, its cost
    and what to change, when none does."""
    options = _cost_options(space)
    keys = [key for key, _ in options]
    fits, total, over = 0, 0, []
    closest: tuple[float, str, Cost] | None = None
    for combo in itertools.product(*(values for _, values in options)):
        config = dict(zip(keys, combo, strict=True))
        try:
            cfg = model_config(config, image_size=image_size, num_classes=num_classes)
        except InfeasibleArchitecture:
            continue  # check_space lists those
        except ValueError as e:
            raise ExperimentError(f"search.space: {_describe(config)}: {e}") from None
        cost = models.cost(cfg)
        total += 1
        excess = budget.excess(cost)
        if closest is None or excess < closest[0]:
            closest = (excess, _describe(config) or "the preset", cost)
        try:
            budget.check(cost)
            fits += 1
        except OverBudget as e:
            over.append(f"{_describe(config) or 'the preset'}: {e}")
    if closest is None:  # nothing feasible: check_space says so
        raise ExperimentError("search.space: no architecture it can produce is feasible")
    _, cheapest, cost = closest
    if not fits:
        raise ExperimentError(
            f"search.budget: no configuration of search.space fits {budget.describe()} (costs "
            f"for {num_classes} classes at data.image_size={image_size}): the cheapest, "
            f"{cheapest}, costs {format_count(cost.macs)} MACs per image and "
            f"{format_count(cost.params)} parameters. Raise "
            + " and ".join(
                f"search.budget.{k} to at least {format_count(getattr(cost, k), up=True)}"
                for k, v in budget.limits().items()
                if getattr(cost, k) > v
            )
            + ", or add cheaper configurations to search.space: a smaller width, fewer or "
            "narrower MLP layers, larger strides, other presets (`hpsearch models` lists each "
            "one's cost), or a smaller data.image_size"
        )
    return BudgetFit(fits=fits, total=total, cheapest=cheapest, cost=cost, over=tuple(over))


def _describe(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={'none' if v == '' else v}" for k, v in config.items())


def config_label(config: dict[str, Any]) -> str:
    """A short readable name of a trial's config: its architecture and optimizer."""
    parts = [str(config.get("arch", "?"))]
    if config.get("optimizer"):
        parts.append(f"{config['optimizer']} lr={config.get('lr', 0):.2g}")
    return " ".join(parts)
