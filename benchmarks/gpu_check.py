"""`make gpu-check`: what a lent GPU machine runs for the GPU path (issue #23), as one command
with one summary.

1. Refuses (exit 2), saying why, where torch sees no CUDA device: nothing is measured.
2. The CUDA tests: `pytest -m cuda tests` (tests/gpu and any other test marked `cuda`).
3. `python -m benchmarks bench_gpu -- --out OUT` (its rows: benchmarks/README.md, GPU).
4. Writes OUT/gpu-check.md: the device, the versions, each part's time, the tests' outcome
   (every failure and skip named) and the bench's rows; logs beside it.
Exit 1 when a CUDA test failed, none ran, or a part crashed or ran out of time (the summary is
written all the same); a bench target missed is a figure, not a failure.

Time budget on one H200, the install done (planned, not yet run on a GPU): tests ~1.5 min, cut
at TESTS_TIMEOUT_S; bench ~2.5 min, cut at BENCH_TIMEOUT_S; under 8 min in all.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_gpu import default_out, rows_table
from hpsearch.search.trial.device import cuda_problem, driver_version

TESTS_TIMEOUT_S = 180
BENCH_TIMEOUT_S = 270
SUMMARY = "gpu-check.md"
TESTS_LOG, TESTS_XML, BENCH_LOG = "gpu-check-tests.log", "gpu-check-tests.xml", "bench_gpu.log"


@dataclass
class Part:
    """One command's run: exit status (None: cut at its time limit), seconds, log."""

    name: str
    rc: int | None
    seconds: float
    log: str

    @property
    def timed_out(self) -> bool:
        return self.rc is None


@dataclass
class TestOutcome:
    passed: int = 0
    failed: list[str] = field(default_factory=list)  # "test id: first line of the message"
    skipped: list[str] = field(default_factory=list)

    @property
    def ran(self) -> int:
        return self.passed + len(self.failed)


def read_junit(path: Path) -> TestOutcome:
    """pytest's --junitxml report: passed count, failures and errors, skips with reasons."""
    outcome = TestOutcome()
    if not path.exists():
        return outcome
    for case in ET.parse(path).getroot().iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        bad = [c for c in case if c.tag in ("failure", "error")]
        skip = [c for c in case if c.tag == "skipped"]
        if bad:
            message = (bad[0].get("message") or bad[0].text or "").strip().splitlines()
            outcome.failed.append(f"{test}: {message[0][:200] if message else bad[0].tag}")
        elif skip:
            outcome.skipped.append(f"{test}: {(skip[0].get('message') or '').strip()[:200]}")
        else:
            outcome.passed += 1
    return outcome


def exit_status(tests: Part, outcome: TestOutcome, bench: Part, bench_rows: list | None) -> int:
    """1 when a CUDA test failed or errored, none ran, or a part crashed or timed out."""
    broken = tests.rc != 0 or bench.rc != 0 or bench_rows is None
    return 1 if broken or outcome.failed or outcome.ran == 0 else 0


def render(facts: dict[str, Any], tests: Part, outcome: TestOutcome, bench: Part, rows) -> str:
    """gpu-check.md: the one summary of a run."""

    def part(p: Part) -> str:
        end = f"cut at its {p.seconds:.0f} s limit" if p.timed_out else f"exit {p.rc}"
        return f"{p.seconds:.0f} s, {end}; log `{p.log}`"

    lines = [
        f"# make gpu-check, {facts['date']}",
        "",
        f"- device: {facts['device']}; driver {facts['driver']}",
        f"- torch {facts['torch']} (CUDA {facts['cuda']}); git {facts['git']}",
        f"- result: {'PASS' if facts['status'] == 0 else 'FAIL'} (exit {facts['status']})",
        "",
        f"## CUDA tests (`pytest -m cuda tests`): {part(tests)}",
        "",
        f"{outcome.passed} passed, {len(outcome.failed)} failed, {len(outcome.skipped)} skipped",
    ]
    lines += [f"- FAILED {f}" for f in outcome.failed]
    lines += [f"- skipped {s}" for s in outcome.skipped]
    if outcome.ran == 0:
        lines.append("- no CUDA test ran: see the log")
    lines += ["", f"## bench_gpu: {part(bench)}", ""]
    lines.append(rows_table(rows) if rows is not None else "no figures: the bench wrote none")
    return "\n".join(lines) + "\n"


def run_part(name: str, cmd: list[str], log: Path, timeout_s: float) -> Part:
    """Run `cmd` in its own process group, its output to the console and to `log`; the group is
    killed at `timeout_s`."""
    print(f"=== gpu-check: {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )

        def copy() -> None:
            for line in proc.stdout:
                sys.stdout.write(line)
                f.write(line)
            sys.stdout.flush()

        reader = threading.Thread(target=copy, daemon=True)
        reader.start()
        try:
            rc: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this call started, nothing else
            proc.wait()
            rc = None
        reader.join(timeout=10)
    seconds = time.perf_counter() - t0
    print(f"=== gpu-check: {name} took {seconds:.0f} s (exit {rc})", flush=True)
    return Part(name, rc, seconds, log.name)


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True)
        return rev + (" with uncommitted changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__)
    p.add_argument(
        "--out", type=Path, default=None, help="summary folder ($OUT or benchmarks/results)"
    )
    args = p.parse_args(argv)
    out = args.out or default_out()
    if not torch.cuda.is_available():
        why = cuda_problem() or "torch sees no CUDA device"
        print(
            "make gpu-check: no CUDA device here, nothing measured (run it on a machine with an "
            f"NVIDIA GPU). {why}",
            file=sys.stderr,
        )
        return 2
    out.mkdir(parents=True, exist_ok=True)
    facts = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0),
        "driver": driver_version() or "unknown",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "git": _git_revision(),
    }
    print(f"=== gpu-check on {facts['device']}, torch {facts['torch']}", flush=True)
    py = sys.executable
    for stale in (TESTS_XML, "bench_gpu.json", "bench_gpu.md"):
        (out / stale).unlink(missing_ok=True)  # a crashed part must not show an older run's
    tests = run_part(
        "CUDA tests",
        [py, "-m", "pytest", "-m", "cuda", "tests", "-q", "-rfEs", f"--junitxml={out / TESTS_XML}"],
        out / TESTS_LOG,
        TESTS_TIMEOUT_S,
    )
    outcome = read_junit(out / TESTS_XML)
    bench = run_part(
        "bench_gpu",
        [py, "-m", "benchmarks", "bench_gpu", "--", "--out", str(out)],
        out / BENCH_LOG,
        BENCH_TIMEOUT_S,
    )
    figures = out / "bench_gpu.json"
    rows = json.loads(figures.read_text())["rows"] if figures.exists() else None
    facts["status"] = exit_status(tests, outcome, bench, rows)
    (out / SUMMARY).write_text(render(facts, tests, outcome, bench, rows))
    print(f"=== gpu-check: wrote {out / SUMMARY}; exit {facts['status']}", flush=True)
    return facts["status"]


if __name__ == "__main__":
    sys.exit(main())
