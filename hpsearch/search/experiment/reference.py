"""The experiment file described for readers and for editors, from its two sources of truth:
the pydantic schema (`schema.Experiment`: sections, fields, types, defaults, descriptions) and
the dimension table (`dimensions.DIMENSIONS`). `render_markdown()` is the page
docs/reference/experiment-file.md; `json_schema()` is what `hpsearch schema` writes (draft-07,
the draft VS Code's YAML extension implements).

Regenerate the page after changing either source (`make docs` does):

    python -m hpsearch.search.experiment.reference docs/reference/experiment-file.md

No torch, no Ray: pydantic and the tables only.
"""

from __future__ import annotations

import copy
import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from hpsearch.search.experiment.budget import Count
from hpsearch.search.experiment.dimensions import (
    DIMENSIONS,
    OPTIMIZER,
    OPTIMIZER_PARAMS,
    OPTIMIZERS,
    Dimension,
)
from hpsearch.search.experiment.schema import Experiment
from hpsearch.search.experiment.space_model import OptimizerSpace, SearchSpace

__all__ = ["REFERENCE_PAGE", "json_schema", "render_markdown", "write_markdown"]

# Where the rendered page lives in the repository (tests/test_docs.py checks it is current).
REFERENCE_PAGE = Path("docs") / "reference" / "experiment-file.md"
REGENERATE = f"python -m hpsearch.search.experiment.reference {REFERENCE_PAGE.as_posix()}"
DRAFT = "http://json-schema.org/draft-07/schema#"


# -- JSON Schema --------------------------------------------------------------------------------


def _bounded(schema: dict[str, Any], dim: Dimension) -> dict[str, Any]:
    b = dim.bounds
    if b is not None and b.low is not None:
        schema["exclusiveMinimum" if b.low_open else "minimum"] = b.low
    if b is not None and b.high is not None:
        schema["exclusiveMaximum" if b.high_open else "maximum"] = b.high
    return schema


def _one_value(dim: Dimension) -> dict[str, Any]:
    """The JSON Schema of one value of `dim` (a per-layer dimension: one list)."""
    kind = dim.kind.name
    if kind == "layers":
        item = {"type": "integer", "minimum": 1}
        return {"type": "array", "items": item, "minItems": 1}
    if kind in ("float", "int"):
        return _bounded({"type": "number" if kind == "float" else "integer"}, dim)
    if kind == "bool":
        return {"type": "boolean"}
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if dim.allowed is not None:
        names = list(dim.allowed())
        # A dimension that also accepts other forms (tv/<name>, stages:K) lists its names as
        # completions only; the validator names what is wrong with any other string.
        schema["examples" if dim.accept is not None else "enum"] = names
    return schema


def dimension_schema(dim: Dimension) -> dict[str, Any]:
    """Every form `dim` takes in a file: one value, a list of choices, a range, or null."""
    value = _one_value(dim)
    forms: list[dict[str, Any]] = [value, {"type": "array", "items": value, "minItems": 1}]
    if dim.kind.ranges:
        end = {k: v for k, v in value.items() if k != "examples"}
        forms.append(
            {
                "type": "object",
                "properties": {
                    "low": end,
                    "high": end,
                    "log": {"type": "boolean"},
                    "step": {"type": "number", "exclusiveMinimum": 0},
                },
                "required": ["low", "high"],
                "additionalProperties": False,
            }
        )
    forms.append({"type": "null"})
    return {"anyOf": forms}


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft-07) of an experiment file, as `hpsearch schema` writes it.

    pydantic's `model_json_schema()` of `Experiment` (sections and unknown keys forbidden),
    with each dimension's accepted forms from the dimension table: pydantic sees a dimension
    as `Any`, since its validator parses it into a domain."""
    schema = Experiment.model_json_schema(ref_template="#/definitions/{model}")
    defs = schema.pop("$defs")
    for model in (SearchSpace, OptimizerSpace):
        props = defs[model.__name__]["properties"]
        for name in props:
            if name in DIMENSIONS and name != OPTIMIZER.name:
                kept = {k: v for k, v in props[name].items() if k in ("title", "description")}
                default = model.model_fields[name].default
                props[name] = {**kept, **dimension_schema(DIMENSIONS[name]), "default": default}
    # `optimizer: adam`, `optimizer: [sgd, adam]`, or a mapping to each one's parameters.
    props = defs[SearchSpace.__name__]["properties"]
    params = {"anyOf": [{"$ref": f"#/definitions/{OptimizerSpace.__name__}"}, {"type": "null"}]}
    mapping = copy.deepcopy(props[OPTIMIZER.name])
    mapping.update(additionalProperties=params, minProperties=1)
    for key in ("title", "description"):
        mapping.pop(key, None)
    names = {"type": "string", "enum": list(OPTIMIZERS)}
    props[OPTIMIZER.name] = {
        "title": props[OPTIMIZER.name].get("title", "Optimizer"),
        "description": OPTIMIZER.help,
        "anyOf": [names, {"type": "array", "items": names, "minItems": 1}, mapping],
        "default": {"sgd": {}},
    }
    return {
        "$schema": DRAFT,
        "title": "hpsearch experiment file",
        "description": "One experiment: `hpsearch validate FILE` checks what this schema "
        "cannot (cross-field rules, preset names, feasibility).",
        **{k: v for k, v in schema.items() if k != "title"},
        "definitions": defs,
    }


# -- Markdown -----------------------------------------------------------------------------------


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _yaml(value: Any) -> str:
    """`value` as it is written in a file, in flow style: `{low: 64, high: 4096, log: true}`."""
    value = _plain(value)
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000)
    return "`" + text.strip().removesuffix("...").strip() + "`"


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _anchor(path: str) -> str:
    return path.replace(".", "-").replace("_", "-")


def _section_models(annotation: Any) -> list[type[BaseModel]]:
    """The sections (pydantic models) a field's type holds: `SameInit | None` -> [SameInit]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in _section_models(a)]


_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}


def _type(annotation: Any, path: str) -> str:
    if annotation == Count:
        return "count (a number or a string such as `300M`)"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type(a, path) for a in args)
    if origin is dict:
        return f"mapping of {_type(args[0], path)} to {_type(args[1], path)}"
    if origin is list:
        return f"list of {_type(args[0], path)}s"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"section, [below](#{_anchor(path)})"
    return _NAMES.get(annotation, "any value")


def _constraints(field: Any) -> str:
    """A field's bounds as pydantic keeps them (annotated-types' Ge, Lt, MaxLen, ...)."""
    out = []
    for m in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                out.append(f"{sign} {getattr(m, attr)}")
        if getattr(m, "max_length", None) is not None:
            out.append(f"at most {m.max_length} characters")
        if getattr(m, "pattern", None):
            out.append(f"matches `{m.pattern}`")
    return ", ".join(out)


def _default(field: Any, path: str) -> str:
    if field.is_required():
        return "required"
    factory = field.default_factory
    if isinstance(factory, type) and issubclass(factory, BaseModel):
        return f"[its defaults](#{_anchor(path)})"
    return _yaml(factory() if factory is not None else field.default)


def _section(model: type[BaseModel], path: str, level: int) -> list[str]:
    """A table of `model`'s fields, then a sub-section for each nested section."""
    if model is SearchSpace:
        return _space_section(path, level)
    title = f"`{path}` {{#{_anchor(path)}}}" if path else "Top level {#top-level}"
    lines = [f"{'#' * level} {title}", ""]
    if path and model.__doc__ and model.__doc__ is not BaseModel.__doc__:
        lines += [" ".join(model.__doc__.split()), ""]
    lines += ["| key | type | default | bounds | description |", "|---|---|---|---|---|"]
    nested = []
    for name, field in model.model_fields.items():
        sub = f"{path}.{name}" if path else name
        row = [f"`{name}`", _type(field.annotation, sub), _default(field, sub)]
        row += [_constraints(field), field.description or ""]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
        nested += [(m, sub) for m in _section_models(field.annotation)]
    lines.append("")
    for sub_model, sub in nested:  # the top level's sections are level-2 headings too
        lines += _section(sub_model, sub, level + 1 if path else level)
    return lines


def _dimension_default(dim: Dimension) -> str:
    if dim.per_optimizer is not None:
        return ", ".join(
            f"{opt} {_yaml(v)}" for opt, v in dim.per_optimizer.items() if v is not None
        )
    return "–" if dim.default is None else _yaml(dim.default)


def _dimension_values(dim: Dimension) -> str:
    out = []
    if dim.bounds is not None:
        out.append(dim.bounds.describe())
    if dim.allowed is not None:
        out.append(", ".join(f"`{n}`" for n in dim.allowed()))
    return "; ".join(out)


def _dimension_row(dim: Dimension) -> str:
    help_ = dim.help + (" (backbones only; presets ignore it)" if dim.backbone_only else "")
    examples = ", ".join(_yaml(e) for e in dim.examples)
    row = [f"`{dim.name}`", dim.kind.name, _dimension_default(dim), examples]
    row += [_dimension_values(dim), dim.reaches, help_]
    return "| " + " | ".join(_cell(c) for c in row) + " |"


def _space_section(path: str, level: int) -> list[str]:
    kinds = {d.kind.name: d.kind for d in DIMENSIONS.values()}
    dims = [d for d in DIMENSIONS.values() if d.name not in OptimizerSpace.model_fields]
    example = next(d for d in dims if d.kind.name == "float" and not d.backbone_only)
    low, high = example.examples
    opt = f"{path}.{OPTIMIZER.name}"
    lines = [
        f"{'#' * level} `{path}`: the dimensions {{#{_anchor(path)}}}",
        "",
        "What the sampler may change. Each dimension is fixed, a list of choices, or (for "
        f"numbers) a range: `{example.name}: {low}`, `{example.name}: [{low}, {high}]`, "
        f"`{example.name}: {{low: {low}, high: {high}}}` (`log: true` for a log scale, "
        "`step:` to grid it). A dimension left out takes its default below; one without a "
        "default (–) keeps the preset's own value. The optimizer's own parameters sit under "
        f"[`{opt}`](#{_anchor(opt)}).",
        "",
        "| kind | forms |",
        "|---|---|",
        *(f"| {name} | {_cell(k.forms)} |" for name, k in kinds.items()),
        "",
        "| dimension | kind | default | examples | values | changes | what it is |",
        "|---|---|---|---|---|---|---|",
        *(_dimension_row(d) for d in dims if d is not OPTIMIZER),
        "",
        f"{'#' * (level + 1)} `{opt}` {{#{_anchor(opt)}}}",
        "",
        f"{OPTIMIZER.help}: one of {', '.join(f'`{o}`' for o in OPTIMIZERS)}, a list of them, "
        "or a mapping from each to its own parameters (Optuna samples them conditionally, as "
        f"`sgd_lr`, `adam_lr`, ...). Default: {_yaml({'sgd': {}})}, e.g.",
        "",
        "```yaml",
        f"{OPTIMIZER.name}:",
        "  sgd: {lr: {low: 0.003, high: 0.1, log: true}, momentum: 0.9}",
        "  adam: {lr: 0.001}",
        "```",
        "",
        "| parameter | kind | default | examples | values | changes | what it is |",
        "|---|---|---|---|---|---|---|",
        *(_dimension_row(d) for d in OPTIMIZER_PARAMS),
        "",
    ]
    return lines


def render_markdown() -> str:
    """The page docs/reference/experiment-file.md."""
    lines = [
        "# Experiment file",
        "",
        f"<!-- Generated from hpsearch/search/experiment/schema.py and dimensions.py by "
        f"`make docs` ({REGENERATE}): edit those, not this page. -->",
        "",
        "An experiment is one YAML file, validated by a pydantic schema: unknown keys are "
        "errors, and every error names its field. Every section has defaults; only `name` is "
        "required. `hpsearch validate FILE` checks a file (exit 2 naming each bad field); "
        "`--set key.path=value` overrides any field below on the command line (the value is "
        "read as YAML). `hpsearch/experiments/demo.yaml` is a complete example, and "
        "`hpsearch schema` writes the JSON Schema that lets an editor check and complete "
        "these files ([editor support](../guides/editor.md)).",
        "",
    ]
    lines += _section(Experiment, "", 2)
    return "\n".join(lines).rstrip() + "\n"


def write_markdown(path: str | Path = REFERENCE_PAGE) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown())
    return path


if __name__ == "__main__":
    print(write_markdown(*sys.argv[1:2]))
