"""What `run` checks before it loads any data, and `hpsearch validate`'s summary of it."""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

from hpsearch.models import BackboneConfig, is_backbone, missing_weights, size_warning
from hpsearch.search.driver.gpus import check_local_gpu
from hpsearch.search.driver.session import check_storage
from hpsearch.search.errors import ExperimentError
from hpsearch.search.experiment.budget import format_count
from hpsearch.search.experiment.space import BudgetFit, check_budget, check_space, grid_size

if TYPE_CHECKING:
    from hpsearch.search.experiment.schema import Experiment


def check_experiment(
    exp: Experiment, *, address: str | None = None, verb: str = "run"
) -> list[str]:
    """Raise ExperimentError for a storage or space that cannot run, for a search.budget that
    no configuration of the space fits, or for pretrained weights that are not on this
    machine; return the reasons of the architecture combinations that are infeasible (those
    trials end at once). Warns when only a small part of the space fits the budget. Also
    raises for a `tracking:` library that is not installed, and, without a cluster `address`
    to join, for GPUs that CUDA cannot use here (`verb` says which command's fix the message
    names)."""
    check_storage(exp.storage)
    check_local_gpu(exp.resources.gpus, address, verb)
    check_weights(exp)
    check_tracking(exp)
    # The class count only sizes the classifier: feasibility depends on the feature maps.
    skipped = check_space(exp.search.space, image_size=exp.data.image_size, num_classes=2)
    fit = budget_fit(exp)  # raises when nothing fits
    if fit is not None and fit.fits < SMALL_PART * fit.total:
        warnings.warn(
            f"search.budget ({exp.search.budget.describe()}): only {fit.fits} of {fit.total} "
            "architecture combinations of search.space fit; the others end at once as "
            "infeasible, so many trials may only teach TPE where the boundary lies. Leave "
            "the over-budget ones out of search.space to spend the trials on those that fit, "
            "e.g. " + "; ".join(fit.over[:3]),
            stacklevel=2,
        )
    return skipped


# `validate` and `run` warn when fewer than this share of the space's architectures fit the
# budget.
SMALL_PART = 0.25


def budget_fit(exp: Experiment) -> BudgetFit | None:
    """How much of the space fits `search.budget` (None without one); ExperimentError when
    nothing does. Costs are counted for the classes of data.folder (2 without it)."""
    if exp.search.budget is None:
        return None
    return check_budget(
        exp.search.space,
        exp.search.budget,
        image_size=exp.data.image_size,
        num_classes=class_count(exp) or 2,
    )


def class_count(exp: Experiment) -> int | None:
    """How many classes data.folder holds after data.merge, counted from its sub-folders
    without reading an image (the classifier's size, for the budget); None without a folder."""
    folder = exp.data.folder
    if not folder or not os.path.isdir(folder):
        return None
    try:
        names = {e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")}
    except OSError:
        return None
    for new, olds in exp.data.merge.items():
        if names & set(olds):
            names = (names - set(olds)) | {new}
    return len(names) or None


def grid_coverage(exp: Experiment) -> str | None:
    """For `search.algorithm: grid`, how much of the grid `search.num_trials` runs (the schema
    refuses more trials than distinct configurations); None for the other samplers."""
    s = exp.search
    if s.algorithm != "grid":
        return None
    size = grid_size(s.space)
    if s.num_trials < size:
        return (
            f"search.num_trials ({s.num_trials}) covers only part of the grid: {s.num_trials} "
            f"of its {size} distinct configurations, in an order drawn by search.seed; leave "
            f"num_trials out (or set it to {size}) to run them all"
        )
    return f"the grid's {size} distinct configurations, each once"


def check_tracking(exp: Experiment) -> None:
    """The libraries the `tracking:` section asks for are installed (else ExperimentError with
    the command that installs them)."""
    if exp.tracking.enabled:  # (search.integrations.tracking imports Ray Tune)
        # lazy: Ray Tune's logger callbacks (~0.8 s), only when tracking is on
        from hpsearch.search.integrations.tracking import check_tracking as check

        check(exp.tracking)


def _values(domain) -> list:
    return list(domain.values() or domain.ends()) if domain is not None else []


def check_weights(exp: Experiment) -> None:
    """Every backbone x pretrained weights the space can draw must load offline: raise
    ExperimentError naming the file expected and the command that fetches it. Warns when the
    weights were trained at a size far from the cache's."""

    space = exp.search.space
    backbones = [a for a in _values(space.arch) if is_backbone(a)]
    if not backbones:
        return
    pretrained = [p for p in _values(space.pretrained) if p not in (None, "none")]
    for arch in backbones:
        for weights in pretrained:
            cfg = BackboneConfig(
                arch, num_classes=2, image_size=exp.data.image_size, pretrained=weights
            )
            try:
                missing = missing_weights(cfg)
            except ValueError as e:  # e.g. a model torchvision has no weights for
                raise ExperimentError(f"search.space.pretrained: {e}") from None
            if missing:
                raise ExperimentError(f"search.space.pretrained: {missing}")
            warning = size_warning(cfg)
            if warning:
                warnings.warn(warning, stacklevel=2)


def format_validation(exp: Experiment, source: str, skipped: list[str]) -> str:
    s = exp.search
    lines = [
        f"{source}: ok. {exp.name}: {s.algorithm} over {s.num_trials} trials, "
        f"metric {s.metric} ({s.mode}),",
        f"  scheduler {exp.scheduler.type}, {exp.train.epochs} epochs, "
        f"image size {exp.data.image_size} px",
    ]
    coverage = grid_coverage(exp)
    if coverage is not None:
        lines.append(f"  grid: {coverage}")
    if exp.tracking.tensorboard:
        lines.append("  tracking: TensorBoard event files per trial (tensorboard --logdir RUN_DIR)")
    if exp.tracking.mlflow is not None:
        lines.append(
            f"  tracking: one MLflow run per trial at {exp.tracking.mlflow}, "
            f"experiment {exp.name!r}"
        )
    fit = budget_fit(exp)
    if fit is not None:
        lines.append(
            f"  budget: {exp.search.budget.describe()}: {fit.fits} of {fit.total} architecture "
            "combination(s) fit"
            + ("" if fit.fits == fit.total else "; the others end at once as infeasible")
            + f" (cheapest: {fit.cheapest}, {format_count(fit.cost.macs)} MACs, "
            f"{format_count(fit.cost.params)} parameters)"
        )
    if skipped:
        lines.append(
            f"  {len(skipped)} architecture combination(s) are infeasible and will end at once:"
        )
        lines += [f"    {reason}" for reason in skipped]
    return "\n".join(lines)
