"""The `search.space` section of the experiment file as a pydantic model, built from the
dimension table: each dimension is a field holding its typed domain (`Fixed`, `Choices`,
`Range`), written back in its YAML form. `schema` holds the rest of the file; `space` reads
this model."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    create_model,
    field_validator,
)

from hpsearch.search.experiment.dimensions import (
    OPTIMIZER,
    OPTIMIZER_PARAMS,
    OPTIMIZERS,
    SPACE_DIMENSIONS,
    Dimension,
)


class Strict(BaseModel):
    """A section of the experiment file: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def _to_data(domain: Any) -> Any:
    return None if domain is None else domain.to_data()


def _dimension_field(dim: Dimension) -> tuple[Any, Any]:
    typ = Annotated[Any, BeforeValidator(dim.parse), PlainSerializer(_to_data)]
    return typ, Field(default=dim.default, description=dim.help)


# Conditional parameters of one optimizer (each a search dimension; left out: its default).
OptimizerSpace = create_model(
    "OptimizerSpace",
    __base__=Strict,
    __module__=__name__,
    **{d.name: _dimension_field(d) for d in OPTIMIZER_PARAMS},
)


def _optimizer_form(cls, v: Any) -> Any:
    # `optimizer: adam` or `optimizer: [sgd, adam]` mean: those, with default parameters.
    if isinstance(v, str):
        v = [v]
    if isinstance(v, list):
        OPTIMIZER.parse(v)  # names the unknown ones
        v = {o: {} for o in v}
    if isinstance(v, dict):
        if not v:
            raise ValueError(f"name at least one optimizer of {list(OPTIMIZERS)}")
        v = {k: ({} if p is None else p) for k, p in v.items()}
    return v


# What the sampler may change. A dimension left out keeps the preset's value.
SearchSpace = create_model(
    "SearchSpace",
    __base__=Strict,
    __module__=__name__,
    __validators__={
        "_optimizer_form": field_validator("optimizer", mode="before")(_optimizer_form)
    },
    **{d.name: _dimension_field(d) for d in SPACE_DIMENSIONS},
    optimizer=(
        dict[Literal[OPTIMIZERS], OptimizerSpace],  # type: ignore[valid-type]
        Field(default_factory=lambda: {"sgd": OptimizerSpace()}, description=OPTIMIZER.help),
    ),
)
