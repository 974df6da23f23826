"""`search.budget`: the most one configuration may cost, in multiply-accumulates per image
(`macs`) and parameters (`params`), as `models.cost` counts them.

A configuration over the budget is rejected before any training, as an infeasible architecture
is: its trial ends at once with status `infeasible`, the reason and the worst score, so TPE
learns where the boundary lies. A count is a positive number (`300000000`, `3.0e+8`) or a
string with an SI suffix: `300M`, `300e6`, `1.5G`, `750k` (k, M, G: thousand, million,
billion; either case). PyYAML reads `300e6` (no dot) as a string, so the string forms matter.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from hpsearch.search.experiment.space_model import Strict

if TYPE_CHECKING:
    from hpsearch.models import Cost

__all__ = ["Budget", "Count", "OverBudget", "format_count", "parse_count"]

UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}
# What a count may be written as in a file (the JSON Schema uses the same pattern).
COUNT_PATTERN = r"^\s*([0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][+-]?[0-9]+)?)\s*([kKmMgG]?)\s*$"
_EXAMPLES = "e.g. 300000000, 300e6 or 300M (k, M, G: thousand, million, billion)"


def parse_count(value: Any) -> int:
    """A positive count from a number or a string such as "300M"; ValueError says what to
    write instead."""
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        match = re.fullmatch(COUNT_PATTERN, value)
        if match:
            number = float(match[1].replace("_", "")) * UNITS[match[2].lower()]
    if number is None or not math.isfinite(number) or round(number) < 1:
        raise ValueError(f"{value!r} is not a positive count: write a number, {_EXAMPLES}")
    return int(round(number))


def format_count(n: float, *, up: bool = False) -> str:
    """412_345_678 -> '412 M' (three significant digits); `up` rounds up, for a limit that
    must admit `n`."""
    for scale, prefix in ((1, ""), (10**3, " k"), (10**6, " M"), (10**9, " G")):
        value = n / scale
        decimals = max(0, 3 - len(str(int(abs(value)))))
        if up:
            value = math.ceil(value * 10**decimals - 1e-9) / 10**decimals
        text = f"{value:.{decimals}f}"
        if float(text) < 1000 or scale == 10**9:
            return (text.rstrip("0").rstrip(".") if decimals else text) + prefix
    raise AssertionError("unreachable")


# A positive count: an integer once validated, a number or an SI string in the file.
Count = Annotated[
    int,
    BeforeValidator(parse_count),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": COUNT_PATTERN},
            ]
        }
    ),
]


class OverBudget(ValueError):
    """A configuration's cost exceeds `search.budget` (the message says by how much)."""

    def __init__(self, reason: str, params: int, macs: int) -> None:
        super().__init__(reason)
        self.params, self.macs = params, macs

    def __reduce__(self):  # picklable, as Ray ships exceptions between processes
        return (type(self), (str(self), self.params, self.macs))


class Budget(Strict):
    """The most one configuration may cost: MACs per image, parameters, or both. A
    configuration over it ends at once with status `infeasible` (nothing is trained) and the
    worst score, so TPE learns the boundary; `hpsearch validate` refuses a budget that no
    configuration of the space fits. A count is a number or a string such as `300M`, `300e6`
    or `1.5G` (k, M, G: thousand, million, billion)."""

    model_config = ConfigDict(frozen=True, json_schema_extra={"minProperties": 1})

    macs: Count | None = Field(
        None, description=f"multiply-accumulates of one image's forward pass, > 0, {_EXAMPLES}"
    )
    params: Count | None = Field(
        None, description="parameters (frozen ones too), > 0, e.g. 5000000 or 5M"
    )

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if self.macs is None and self.params is None:
            raise ValueError(
                "search.budget needs macs, params or both, e.g. {macs: 300M}; leave budget "
                "out for no limit"
            )
        return self

    def limits(self) -> dict[str, int]:
        """The limits set, by cost name (`macs`, `params`)."""
        return {k: v for k, v in (("macs", self.macs), ("params", self.params)) if v is not None}

    def describe(self) -> str:
        """'macs <= 300 M, params <= 5 M'."""
        return ", ".join(f"{k} <= {format_count(v)}" for k, v in self.limits().items())

    def excess(self, cost: Cost) -> float:
        """The largest ratio of a cost to its limit: at most 1 when `cost` fits."""
        return max(getattr(cost, k) / v for k, v in self.limits().items())

    def check(self, cost: Cost) -> None:
        """Raise OverBudget naming each limit `cost` exceeds: 'over budget: 412 M MACs >
        search.budget.macs 300 M'."""
        over = []
        for key, limit in self.limits().items():
            value = getattr(cost, key)
            if value > limit:
                shown, cap = format_count(value), format_count(limit)
                if shown == cap:  # (412.3 M against 412 M: the digits tell them apart)
                    shown, cap = f"{value:,}", f"{limit:,}"
                unit = "MACs" if key == "macs" else "parameters"
                over.append(f"{shown} {unit} > search.budget.{key} {cap}")
        if over:
            raise OverBudget("over budget: " + ", ".join(over), cost.params, cost.macs)
