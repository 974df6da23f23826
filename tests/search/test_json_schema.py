"""`hpsearch schema` and the experiment-file reference (`search.experiment.reference`).

The JSON Schema editors use accepts every packaged experiment file and every form of every
dimension (from the table), and rejects what `load_experiment` rejects for its shape: unknown
keys at any depth, wrong types, values out of bounds. The reference page names every section,
field and dimension."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from hpsearch.search.cli import main
from hpsearch.search.experiment.dimensions import DIMENSIONS, OPTIMIZER, OPTIMIZER_PARAMS
from hpsearch.search.experiment.files import packaged_experiments, packaged_path
from hpsearch.search.experiment.reference import render_markdown
from hpsearch.search.experiment.schema import Experiment

DIMS = [d for d in DIMENSIONS.values() if d is not OPTIMIZER]


@pytest.fixture(scope="module")
def schema(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("schema") / "editor" / "experiment.schema.json"
    assert main(["schema", "--out", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def validator(schema) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _errors(validator, doc: dict) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def _demo() -> dict:
    return yaml.safe_load(packaged_path("demo").read_text())


def test_stdout_gets_the_same_schema(schema, capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == schema


def test_the_schema_is_draft_07_and_every_section_forbids_unknown_keys(schema):
    # draft-07: the draft VS Code's YAML extension implements
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["name"]
    for name, section in schema["definitions"].items():
        assert section.get("additionalProperties") is False, name


@pytest.mark.parametrize("name", sorted(packaged_experiments()))
def test_every_packaged_experiment_file_validates(validator, name):
    assert _errors(validator, yaml.safe_load(packaged_path(name).read_text())) == []


def _set(doc: dict, path: str, value) -> dict:
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return doc


BAD = [
    pytest.param("colour", "red", id="unknown top-level key"),
    pytest.param("train.epoch", 3, id="unknown key in train"),
    pytest.param("data.colour_mode", "rgb", id="unknown key in data"),
    pytest.param("search.space.depth", 3, id="unknown dimension"),
    pytest.param("search.space.optimizer.sgd.nesterov", True, id="unknown optimizer parameter"),
    pytest.param("search.space.optimizer.adagrad", {}, id="unknown optimizer"),
    pytest.param("search.space.dropout", {"low": 0.0, "high": 0.5, "scale": "log"}, id="range"),
    pytest.param("train.epochs", "ten", id="string for an integer"),
    pytest.param("data.image_size", 32.5, id="number for an integer"),
    pytest.param("data.image_size", 4, id="below the minimum"),
    pytest.param("search.algorithm", "bayes", id="not one of the choices"),
    pytest.param("search.space.batchnorm", "yes", id="string for a boolean"),
    pytest.param("search.space.strides", [4, 0, 1], id="a stride of 0"),
    pytest.param("search.space.optimizer.sgd.lr", {"low": "1e-4", "high": 0.1}, id="1e-4"),
    pytest.param("train.same_init", 1, id="number for a section"),
    pytest.param("name", "my run", id="a name that is no folder name"),
    pytest.param("resources.gpus", 2, id="more than one GPU per trial"),
    pytest.param("search.budget", {}, id="a budget without a limit"),
    pytest.param("search.budget.flops", "1G", id="unknown key in the budget"),
    pytest.param("search.budget.macs", 0, id="a budget of 0"),
    pytest.param("search.budget.macs", "300X", id="an unknown suffix"),
]


@pytest.mark.parametrize(("path", "value"), BAD)
def test_a_malformed_file_is_rejected_by_the_schema_and_by_pydantic(validator, path, value):
    doc = _set(_demo(), path, value)
    assert _errors(validator, doc), f"the schema accepts {path}: {value!r}"
    with pytest.raises(ValidationError):
        Experiment.model_validate(doc)


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, list | tuple) else value


def _forms(dim) -> list:
    """Every form of `dim` built from its two examples: one value, a list, a range, null."""
    first, second = dim.examples
    forms = [first, [first, second], None]
    if dim.kind.ranges:
        forms.append({"low": min(first, second), "high": max(first, second)})
    return [_plain(f) for f in forms]


def _at(dim) -> str:
    where = "search.space.optimizer.sgd" if dim in OPTIMIZER_PARAMS else "search.space"
    return f"{where}.{dim.name}"


@pytest.mark.parametrize("dim", DIMS, ids=[d.name for d in DIMS])
def test_every_form_of_every_dimension_is_accepted(validator, dim):
    for value in _forms(dim):
        doc = _set(_demo(), _at(dim), value)
        assert _errors(validator, doc) == [], value
        Experiment.model_validate(doc)  # and pydantic agrees


def _outside(bounds):
    if bounds.low is not None:
        return bounds.low if bounds.low_open else bounds.low - 1
    return bounds.high if bounds.high_open else bounds.high + 1


BOUNDED = [d for d in DIMS if d.bounds is not None]


@pytest.mark.parametrize("dim", BOUNDED, ids=[d.name for d in BOUNDED])
def test_a_dimension_out_of_its_bounds_is_rejected_in_every_form(validator, dim):
    bad = _outside(dim.bounds)
    ok = dim.examples[0]
    for value in (bad, [ok, bad], {"low": min(bad, ok), "high": max(bad, ok)}):
        doc = _set(_demo(), _at(dim), value)
        assert _errors(validator, doc), value
        with pytest.raises(ValidationError):
            Experiment.model_validate(doc)


@pytest.mark.parametrize("value", [300_000_000, 3.0e8, "300e6", "300M", "1.5 G", "750k"])
def test_every_form_of_a_budget_count_is_accepted(validator, value):
    doc = _set(_demo(), "search.budget", {"macs": value, "params": "5M"})
    assert _errors(validator, doc) == []
    Experiment.model_validate(doc)


@pytest.mark.parametrize("value", ["adam", ["sgd", "rmsprop"], {"adam": None}])
def test_the_short_forms_of_the_optimizer_are_accepted(validator, value):
    doc = _set(_demo(), "search.space.optimizer", value)
    assert _errors(validator, doc) == []
    Experiment.model_validate(doc)


def test_the_reference_names_every_section_field_and_dimension():
    page = render_markdown()
    for name, field in Experiment.model_fields.items():
        assert f"| `{name}` |" in page, name
        for model in [field.annotation, *getattr(field.annotation, "__args__", ())]:
            for sub in getattr(model, "model_fields", {}):
                assert f"| `{sub}` |" in page, f"{name}.{sub}"
    for section in ("data", "search", "search-space", "train", "train-same-init", "kfold"):
        assert f"{{#{section}}}" in page, section
    for dim in DIMENSIONS.values():
        assert f"| `{dim.name}` |" in page or f"`search.space.{dim.name}`" in page, dim.name
        assert dim.help.replace("|", "\\|") in page, dim.name  # as a table cell


def test_the_reference_and_the_schema_import_neither_torch_nor_ray():
    code = (
        "import sys\n"
        "from hpsearch.search.experiment.reference import json_schema, render_markdown\n"
        "json_schema(), render_markdown()\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'ray') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
