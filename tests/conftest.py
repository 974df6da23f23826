"""Fixtures shared by every test package: one Ray instance per session, small image folders.
At the session's end no Ray or trial process that the tests started may still be alive."""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

from hpsearch.search.driver.session import set_tune_env_defaults

# The environment hpsearch's own Ray session sets, for tests that drive Tune directly.
set_tune_env_defaults()


def make_image_folder(
    root: Path, *, classes: int = 3, per_class: int = 20, size: int = 24, seed: int = 0
) -> Path:
    """A learnable folder: each class is a colour with a class-specific bar, plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        colour = np.array(
            [(c * 97) % 256, (c * 53 + 80) % 256, (c * 151 + 40) % 256], dtype=np.float64
        )
        for i in range(per_class):
            img = np.tile(colour, (size, size, 1)) + rng.normal(0, 25, (size, size, 3))
            bar = (c * size) // classes
            img[bar : bar + max(2, size // classes), :, :] = 255 - colour
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"img_{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def small_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("folder") / "images")


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session: 127.0.0.1, no dashboard."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def write_experiment():
    """A factory of experiment files: write_experiment(base, folder, **{"dotted.key": value})
    writes `base` (a dict, left unchanged) with the changes to folder/<name>.yaml."""

    def write(base: dict, folder: Path, **changes) -> Path:
        doc = copy.deepcopy(base)
        for key, value in changes.items():
            node = doc
            *parents, last = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = value
        path = Path(folder) / f"{doc.get('name', 'experiment')}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    return write


def read_reports(result_json: Path) -> list[dict]:
    """A trial's reports so far, in order (result.json is appended to while it is read)."""
    rows = []
    for line in result_json.read_text().splitlines() if result_json.exists() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            break
    return rows


@pytest.fixture(scope="session")
def reports():
    """read_reports: a trial's result.json as a list of reports, cut at a partial line."""
    return read_reports


# --- no process outlives the test session ------------------------------------------------------

# Every process the tests start inherits this mark in its environment (Ray's services and
# workers, hpsearch drivers run as subprocesses, their trial actors): at the session's end none
# may be alive. A second test session at the same time has its own mark.
SESSION_MARK = "HPSEARCH_TEST_SESSION"
os.environ[SESSION_MARK] = f"{os.getpid()}-{time.time_ns()}"


def _started_by_the_tests() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid == os.getpid() or p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.environ().get(SESSION_MARK) == os.environ[SESSION_MARK]:
                found.append(p)
        except psutil.Error:  # gone, or another user's
            continue
    return found


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if a process the tests started is alive after Ray's shutdown (waiting up
    to 30 s for Ray's own clean-up), and kill it, so nothing is left behind."""
    deadline = time.monotonic() + 30
    alive = _started_by_the_tests()
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = _started_by_the_tests()
    lines = []
    for p in alive:
        try:
            lines.append(f"  pid {p.pid} ({p.status()}): {' '.join(p.cmdline())[:160]}")
            p.kill()
        except psutil.Error:
            continue
    if lines:
        print(
            "\nprocesses the tests started outlived the session (killed now):\n" + "\n".join(lines)
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
