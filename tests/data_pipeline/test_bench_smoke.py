"""The data benchmark runs end to end at tiny sizes (so it cannot rot)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest


def test_bench_data_smoke(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.syspath_prepend(
        str(Path(__file__).resolve().parents[2])
    )  # the repo root holds benchmarks/
    bench = importlib.import_module("benchmarks.bench_data")
    bench.main(["--smoke", "--workers", "2"])
    out = capsys.readouterr().out
    for line in (
        "machine",
        "build    1 process",
        "epoch    ImageFolder+DataLoader",
        "Batches",
        "fidelity",
    ):
        assert line in out
