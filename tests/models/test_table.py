from __future__ import annotations

import pytest

from hpsearch.models import ConvNetConfig, ConvSpec, format_models_table, list_models
from hpsearch.models import presets as presets_module
from hpsearch.models.table import human


def _rows(table: str) -> dict[str, str]:
    lines = table.splitlines()
    assert lines[0].split() == ["preset", "input", "params", "MACs", "features", "status"]
    assert set(lines[1]) <= {"-", " "}
    return {line.split()[0]: line for line in lines[2:]}


def test_default_table_lists_every_preset_at_its_own_size():
    rows = _rows(format_models_table())
    assert list(rows) == list_models()
    assert rows["AlexNet"].split() == ["AlexNet", "227x227", "58.4M", "1.13G", "256x6x6", "ok"]
    assert all(line.endswith("ok") for line in rows.values())


def test_table_at_32_px_uses_the_adapted_presets():
    rows = _rows(format_models_table(image_size=32, num_classes=10))
    assert list(rows) == list_models()
    assert rows["AlexNet"].split()[1] == "32x32"
    assert rows["AlexNet"].split()[4] == "256x3x3"


def test_tiny_images_do_not_crash_the_table():
    rows = _rows(format_models_table(image_size=4))
    assert list(rows) == list_models()


def test_an_infeasible_preset_is_a_row_with_its_reason(monkeypatch):
    broken = ConvNetConfig(convs=(ConvSpec(8, 11, stride=4),), image_size=8)
    monkeypatch.setitem(presets_module.model_cfgs, "Broken", broken)
    rows = _rows(format_models_table())
    assert list(rows)[-1] == "Broken"
    assert "infeasible: conv1: the 8x8 input image is smaller than the kernel 11" in rows["Broken"]
    assert rows["Broken"].split()[1:5] == ["8x8", "-", "-", "-"]
    assert rows["AlexNet"].endswith("ok")


@pytest.mark.parametrize(
    "n, text",
    [
        (58_396_060, "58.4M"),
        (1_070_000_000, "1.07G"),
        (999, "999"),
        (91_200_000, "91.2M"),
        (151_000_000, "151M"),
        (2_300_000, "2.30M"),
        (999_960, "1000k"),
    ],
)
def test_human_numbers(n, text):
    assert human(n) == text
