"""Every benchmark of this change runs end to end at tiny sizes (so none rots)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))  # repo root: benchmarks/
    monkeypatch.setenv("HPSEARCH_CACHE", str(tmp_path))  # never the user's cache

    def load(name: str):
        return importlib.import_module(f"benchmarks.{name}")

    return load


def run_smoke(bench, name: str, capsys: pytest.CaptureFixture, *extra: str) -> str:
    bench(name).main(["--smoke", *extra])
    return capsys.readouterr().out


def test_bench_step_smoke(bench, capsys) -> None:
    out = run_smoke(bench, "bench_step", capsys)
    for line in ("machine", "AMX tiles", "fp32 eager", "default", "forced bf16", "ratio"):
        assert line in out


def test_bench_gpu_smoke(bench, capsys) -> None:
    import torch

    out = run_smoke(bench, "bench_gpu", capsys)
    if torch.cuda.is_available():
        assert "of the" in out or "peak unknown" in out
        assert "packing" in out
    else:
        assert "no CUDA device" in out and "not measured" in out


@pytest.mark.slow
def test_bench_search_smoke(bench, capsys, ray_session) -> None:
    out = run_smoke(bench, "bench_search", capsys, "--trials", "1")
    for line in ("machine", "baseline ImageFolder+DataLoader", "hpsearch decode-once", "ratio"):
        assert line in out


@pytest.mark.slow
def test_bench_overhead_smoke(bench, capsys, ray_session) -> None:
    out = run_smoke(bench, "bench_overhead", capsys, "--trials", "1")
    for line in ("machine", "own time", "wall", "overhead"):
        assert line in out


@pytest.mark.slow
def test_bench_efficiency_smoke(bench, capsys, ray_session) -> None:
    out = run_smoke(bench, "bench_efficiency", capsys, "--trials", "1")
    for line in ("machine", "seed 0", "random best", "TPE+ASHA best", "ratio"):
        assert line in out


@pytest.mark.slow  # over 3 s: make test runs it, make check does not
def test_bench_prepare_smoke(bench, capsys) -> None:
    out = run_smoke(bench, "bench_prepare", capsys)
    for line in ("machine", "start    hpsearch prepare's imports", "pair 1", "ratio    smoke warm"):
        assert line in out
    assert "torch" not in out.split("imports: ")[1].splitlines()[0].split("pyarrow: ")[1]


def test_options_after_dashes_go_to_one_benchmark(bench, capsys) -> None:
    runner = bench("__main__")
    with pytest.raises(SystemExit) as exc:
        runner.main(["bench_gpu", "--", "--help"])
    assert exc.value.code == 0 and "--smoke" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        runner.main(["bench_gpu", "bench_step", "--", "--steps", "2"])
    assert exc.value.code == 2 and "name exactly one" in capsys.readouterr().err


def test_bench_replay_smoke(bench, capsys) -> None:
    """The replay on the first shipped table, 3 seeds: its last line is the headline's form."""
    out = run_smoke(bench, "bench_replay", capsys, "--processes", "1")
    last = out.strip().splitlines()[-1]
    assert "ratio" in last and "95 % CI" in last and "random search" in last


def test_bench_audit_smoke(bench, capsys) -> None:
    """Digits at both sizes, a tiny memmap timed with recall and memory, and the baseline's
    line (measured, or saying imagehash is not installed)."""
    out = run_smoke(bench, "bench_audit", capsys)
    for line in ("machine", "digits   16 px", "digits   32 px", "hashing", "recall", "baseline"):
        assert line in out
