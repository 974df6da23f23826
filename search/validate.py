"""What `run` checks before it loads any data, and `hpsearch validate`'s summary of it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from search.session import check_storage
from search.space import check_space

if TYPE_CHECKING:
    from search.schema import Experiment


def check_experiment(exp: Experiment) -> list[str]:
    """Raise ExperimentError for a storage or space that cannot run; return the reasons of the
    architecture combinations that are infeasible (those trials end at once)."""
    check_storage(exp.storage)
    # The class count only sizes the classifier: feasibility depends on the feature maps.
    return check_space(exp.search.space, image_size=exp.data.image_size, num_classes=2)


def format_validation(exp: Experiment, source: str, skipped: list[str]) -> str:
    s = exp.search
    lines = [
        f"{source}: ok. {exp.name}: {s.algorithm} over {s.num_trials} trials, "
        f"metric {s.metric} ({s.mode}),",
        f"  scheduler {exp.scheduler.type}, {exp.train.epochs} epochs, "
        f"image size {exp.data.image_size} px",
    ]
    if skipped:
        lines.append(
            f"  {len(skipped)} architecture combination(s) are infeasible and will end at once:"
        )
        lines += [f"    {reason}" for reason in skipped]
    return "\n".join(lines)
