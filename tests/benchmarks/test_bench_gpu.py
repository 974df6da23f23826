"""bench_gpu's verdicts and `make gpu-check`'s summary, fed made-up timings and reports: they run
on the CPU, where the GPU figures themselves cannot be measured."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def load(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(REPO))  # benchmarks/ is a folder of scripts, not installed
    return lambda name: importlib.import_module(f"benchmarks.{name}")


@pytest.fixture
def gpu(load):
    return load("bench_gpu")


# --- streaming ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factor", "status"), [(0.5, "NOT met"), (0.89, "NOT met"), (0.95, "met"), (1.3, "met")]
)
def test_streaming_is_judged_on_per_trial_training_images_per_s(gpu, factor, status) -> None:
    resident = [1000.0, 1100.0, 900.0, 1000.0]
    streamed = [r * factor for r in resident]
    v = gpu.streaming_verdict(streamed, resident, [3.0] * 8)
    assert v.status == status
    assert v.value == pytest.approx(factor)
    assert ("NOT met" in v.text()) == (status == "NOT met")


def test_streaming_under_two_timed_seconds_is_inconclusive(gpu) -> None:
    v = gpu.streaming_verdict([500.0] * 4, [1000.0] * 4, [3.0] * 7 + [1.9])
    assert v.status == "inconclusive" and "1.90 s" in v.text()  # even at 0.5x: too short to say
    assert gpu.streaming_verdict([990.0], [1000.0], 2.0).status == "met"  # 2 s is enough


def test_streaming_with_an_empty_side_is_inconclusive(gpu) -> None:
    assert gpu.streaming_verdict([], [1000.0], [3.0]).status == "inconclusive"


# --- peaks --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA L40S", 362.05),
        ("NVIDIA L40", 181.05),
        ("NVIDIA L4", 121.0),
        ("NVIDIA H200", 989.5),
        ("NVIDIA H100 80GB HBM3", 989.5),
        ("NVIDIA H100 PCIe", 756.5),
        ("NVIDIA H100 NVL", 835.5),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA H200 NVL", None),  # a variant without a checked figure: not the SXM's
        ("NVIDIA H100", None),  # which H100: unknown
        ("NVIDIA GH200 480GB", None),  # "H200" is not a token of it
        ("NVIDIA L40G", None),
        ("NVIDIA GeForce RTX 4090", None),
        ("", None),
    ],
)
def test_peaks_match_whole_tokens_of_the_device_name(gpu, name, peak) -> None:
    assert gpu.peak_tflops(name) == peak


def test_every_peak_cites_its_datasheet_and_is_dense(gpu) -> None:
    for key, (tflops, source) in gpu.BF16_PEAKS.items():
        assert source, key
        if tflops is not None:
            assert "datasheet" in source, key
            assert 100 < tflops < 1000, key  # dense bf16 of these cards; sparse would be ~2x


# --- throughput, packing, syncs -----------------------------------------------------------------


def test_mfu_counts_forward_and_backward_as_three_forwards(gpu) -> None:
    # 10,000 images/s x 1e9 MACs x 2 FLOP x 3 passes = 60 TFLOP/s of a 600 TFLOP/s device
    assert gpu.mfu(10_000, 1_000_000_000, 600.0) == pytest.approx(0.10)
    assert gpu.throughput_verdict(30_000, 1_000_000_000, 600.0, 3.0).status == "met"
    assert gpu.throughput_verdict(29_000, 1_000_000_000, 600.0, 3.0).status == "NOT met"
    unknown = gpu.throughput_verdict(30_000, 1_000_000_000, None, 3.0)
    assert unknown.status == "inconclusive" and "peak unknown" in unknown.text()
    assert gpu.throughput_verdict(30_000, 1_000_000_000, 600.0, 1.0).status == "inconclusive"


def test_packing_compares_images_per_s_of_the_same_work(gpu) -> None:
    # 1 trial: 40,000 images in 8 s; 4 packed: the same 40,000 images in 3.2 s: 2.5x
    assert gpu.packing_ratio(40_000, 8.0, 40_000, 3.2) == pytest.approx(2.5)
    assert gpu.packing_verdict(40_000, 8.0, 40_000, 3.2).status == "met"
    assert gpu.packing_verdict(40_000, 8.0, 40_000, 5.0).status == "NOT met"  # 1.6x
    assert gpu.packing_verdict(40_000, 8.0, 40_000, 1.5).status == "inconclusive"  # < 2 s


def test_syncs_per_step_must_be_zero(gpu) -> None:
    assert gpu.sync_verdict(0, 32).status == "met"
    assert gpu.sync_verdict(1, 32).status == "NOT met"
    assert gpu.sync_verdict(0, 0).status == "inconclusive"


def test_no_figure_is_inconclusive(gpu) -> None:
    assert gpu.judge(None, 1.0, timed_s=5.0).status == "inconclusive"
    assert gpu.judge(math.nan, 1.0, timed_s=5.0).status == "inconclusive"
    assert gpu.judge(1.0, 1.0, timed_s=math.nan).status == "inconclusive"


# --- the summaries ------------------------------------------------------------------------------


def _summary(gpu, rows) -> dict:
    return {
        "date": "2027-01-01T00:00:00+00:00", "device": "NVIDIA H200", "torch": "2.14.1",
        "cuda": "13.0", "smoke": False, "rows": rows,
    }  # fmt: skip


def test_the_bench_summary_lists_every_row_and_what_was_not_measured(gpu, tmp_path) -> None:
    v = gpu.streaming_verdict([950.0] * 4, [1000.0] * 4, [3.0] * 8)
    rows = [
        gpu._row("streaming", v, "per trial: streamed 950, resident 1,000 images/s; 0.95x"),
        gpu.not_measured("packing", "Traceback ...\nRuntimeError: trial 2 died"),
    ]
    paths = gpu.write_summary(tmp_path, _summary(gpu, rows))
    assert [p.name for p in paths] == ["bench_gpu.json", "bench_gpu.md"]
    assert json.loads(paths[0].read_text())["rows"][0]["verdict"] == "met"
    text = paths[1].read_text()
    for name in gpu.ROWS:
        assert f"| {name} |" in text
    assert "NVIDIA H200" in text and "target >= 0.9: met" in text
    assert "RuntimeError: trial 2 died" in text
    unmeasured = [line.split(" |")[0] for line in text.splitlines() if "not measured" in line]
    assert unmeasured == ["| throughput", "| packing", "| syncs"]  # failed, or not run


def test_without_cuda_the_bench_measures_nothing_and_writes_nothing(gpu, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: make gpu-check measures")
    gpu.main(["--out", str(tmp_path)])
    assert "no CUDA device" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def _junit(path: Path, cases: str) -> Path:
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite>{cases}</testsuite></testsuites>')
    return path


def test_gpu_check_names_each_failed_and_skipped_test_and_fails(load, tmp_path) -> None:
    check = load("gpu_check")
    xml = _junit(
        tmp_path / "t.xml",
        '<testcase classname="tests.gpu.test_race" name="test_a"/>'
        '<testcase classname="tests.gpu.test_race" name="test_b">'
        '<failure message="AssertionError: batch 0 differs">long text</failure></testcase>'
        '<testcase classname="tests.gpu.test_syncs" name="test_c">'
        '<error message="RuntimeError: called a synchronizing CUDA operation"/></testcase>'
        '<testcase classname="tests.gpu.test_trial" name="test_d">'
        '<skipped message="needs a CUDA device"/></testcase>',
    )
    outcome = check.read_junit(xml)
    assert outcome.passed == 1 and outcome.ran == 3
    assert outcome.failed == [
        "tests.gpu.test_race::test_b: AssertionError: batch 0 differs",
        "tests.gpu.test_syncs::test_c: RuntimeError: called a synchronizing CUDA operation",
    ]
    assert outcome.skipped == ["tests.gpu.test_trial::test_d: needs a CUDA device"]
    tests = check.Part("CUDA tests", 1, 75.0, "gpu-check-tests.log")
    bench = check.Part("bench_gpu", 0, 140.0, "bench_gpu.log")
    gpu = load("bench_gpu")
    rows = [gpu._row("syncs", gpu.sync_verdict(0, 32), "device: 0 in 16 steps")]
    status = check.exit_status(tests, outcome, bench, rows)
    assert status == 1
    facts = {
        "date": "2027-01-01", "device": "NVIDIA H200", "driver": "580.159.04", "torch": "2.14.1",
        "cuda": "13.0", "git": "abc1234", "status": status,
    }  # fmt: skip
    text = check.render(facts, tests, outcome, bench, rows)
    assert "FAIL (exit 1)" in text and "NVIDIA H200" in text
    assert "- FAILED tests.gpu.test_race::test_b: AssertionError: batch 0 differs" in text
    assert "- skipped tests.gpu.test_trial::test_d" in text
    assert "1 passed, 2 failed, 1 skipped" in text and "| syncs |" in text


@pytest.mark.parametrize(
    ("tests_rc", "cases", "bench_rc", "has_rows", "status"),
    [
        (0, '<testcase classname="a" name="b"/>', 0, True, 0),
        (0, '<testcase classname="a" name="b"/>', 0, False, 1),  # the bench wrote no figures
        (0, '<testcase classname="a" name="b"/>', 1, True, 1),  # a bench row crashed
        (None, "", 0, True, 1),  # the tests were cut at their time limit
        (5, "", 0, True, 1),  # no CUDA test collected
        (0, '<testcase classname="a" name="b"><skipped message="x"/></testcase>', 0, True, 1),
    ],
)
def test_gpu_check_passes_only_when_cuda_tests_ran_and_passed_and_the_bench_wrote_figures(
    load, tmp_path, tests_rc, cases, bench_rc, has_rows, status
) -> None:
    check = load("gpu_check")
    outcome = check.read_junit(_junit(tmp_path / "t.xml", cases))
    tests = check.Part("CUDA tests", tests_rc, 1.0, "t.log")
    bench = check.Part("bench_gpu", bench_rc, 1.0, "b.log")
    assert check.exit_status(tests, outcome, bench, [] if has_rows else None) == status


def test_gpu_check_refuses_without_cuda(load, tmp_path, capsys, monkeypatch) -> None:
    check = load("gpu_check")
    monkeypatch.setattr(check.torch.cuda, "is_available", lambda: False)
    assert check.main(["--out", str(tmp_path / "out")]) == 2
    assert "no CUDA device here, nothing measured" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_pytest_knows_the_cuda_marker() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert '"cuda: ' in text  # --strict-markers: tests/gpu would not even be collected
