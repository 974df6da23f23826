"""hpsearch as an installed package, not a checkout: the experiment files are package data.

The slow tests build a wheel of this checkout, install it with `pip install --target` into a
folder outside the repository, and run the `hpsearch` entry point from an empty directory with
the repository removed from `sys.path` (the editable install's .pth file would otherwise put it
back), so a module or data file that the wheel lacks fails them instead of being found in the
checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from hpsearch.search.experiment.files import (
    packaged_experiments,
    packaged_name,
    packaged_path,
    resolve_experiment,
)
from hpsearch.search.experiment.schema import ExperimentError, load_experiment

REPO = Path(__file__).resolve().parents[2]
REPO_EXPERIMENTS = sorted(p.stem for p in (REPO / "hpsearch" / "experiments").glob("*.yaml"))
# The generic names hpsearch once installed at the top level. A user's own modules of these
# names (a `models.py` beside a notebook) must never shadow hpsearch's, in the driver or in a
# Ray worker (Ray puts the driver's working directory on every worker's sys.path).
GENERIC_NAMES = ("models", "search", "analysis", "data_pipeline", "rundir", "experiments")
# Not needed to build a wheel; copying them would only cost time (or pick up stale output).
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "runs",
    "demo_data",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".cache",
)


# --- resolving experiment files (in-process, fast) -------------------------------------------


def test_every_experiment_file_is_packaged():
    assert list(packaged_experiments()) == REPO_EXPERIMENTS
    assert "demo" in REPO_EXPERIMENTS


@pytest.mark.parametrize("given", ["demo", "demo.yaml", "experiments/demo.yaml"])
def test_a_packaged_name_resolves_from_any_directory(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert packaged_name(given) == "demo"
    resolved = resolve_experiment(given)
    assert Path(resolved).is_file() and Path(resolved).name == "demo.yaml"
    assert Path(resolved) == packaged_path("demo")
    assert load_experiment(resolved).name == "demo"


def test_an_existing_file_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # a folder is no experiment file
    assert Path(resolve_experiment("demo")) == packaged_path("demo")
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "demo.yaml").write_text("name: mine\n")
    assert resolve_experiment("experiments/demo.yaml") == "experiments/demo.yaml"
    assert load_experiment(resolve_experiment("experiments/demo.yaml")).name == "mine"


@pytest.mark.parametrize("given", ["nope", "nope.yaml", "experiments/nope.yaml", "a/demo.yaml"])
def test_an_unknown_name_is_reported_with_the_packaged_names(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_experiment(given) == given
    with pytest.raises(ExperimentError, match="no such experiment file") as err:
        load_experiment(resolve_experiment(given))
    assert ", ".join(REPO_EXPERIMENTS) in str(err.value)


def test_the_demo_experiment_is_the_packaged_one():
    from hpsearch.search.driver.demo import DEMO_EXPERIMENT

    assert DEMO_EXPERIMENT == packaged_path("demo")
    assert DEMO_EXPERIMENT.is_file()


# --- the installed wheel (slow: a build, an install and a tiny demo search) -------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> SimpleNamespace:
    """The wheel of a copy of this checkout, installed into TARGET; an env and an empty cwd in
    which only TARGET's code can be imported."""
    root = tmp_path_factory.mktemp("package")
    src, wheels, target, shim = root / "src", root / "wheels", root / "target", root / "shim"
    # Build from a copy so the checkout's build/ and *.egg-info stay as they are.
    shutil.copytree(REPO, src, ignore=COPY_IGNORE)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    # Offline: no dependencies are installed, and the build uses this venv's setuptools (torch
    # requires setuptools>=77, above the build-system's >=68).
    pip_env = {**os.environ, "PIP_NO_INDEX": "1"}
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)]
    subprocess.run(build, check=True, timeout=180, env=pip_env, cwd=root)
    (wheel,) = wheels.glob("hpsearch-*.whl")
    install = [*pip, "install", "--no-deps", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, timeout=180, env=pip_env, cwd=root)

    # Run in every Python process of the tests, Ray's workers included (PYTHONPATH is
    # inherited): drop the checkout that the editable install's .pth file adds to sys.path.
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        textwrap.dedent(f"""\
            import os
            import sys

            sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != {str(REPO)!r}]
            """)
    )
    cwd = root / "cwd"
    cwd.mkdir()
    for name in GENERIC_NAMES:  # the user's own files, each raising when imported
        (cwd / f"{name}.py").write_text(f"raise ImportError('the user\\'s own {name}.py')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONSTARTUP")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(target), str(shim)]),
        PYTHONNOUSERSITE="1",
        PYTHONUNBUFFERED="1",
        HPSEARCH_CACHE=str(root / "cache"),
    )
    return SimpleNamespace(root=root, target=target, cwd=cwd, env=env)


def hpsearch(installed, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The console script pip wrote into TARGET/bin, run with this venv's interpreter."""
    script = installed.target / "bin" / "hpsearch"
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=installed.cwd,
        env=installed.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_package_and_the_experiments(installed):
    names = {p.name for p in installed.target.iterdir()}
    packages = {n for n in names if (installed.target / n / "__init__.py").is_file()}
    modules = {n for n in names if n.endswith(".py")}
    assert packages == {"hpsearch"} and not modules, sorted(names)
    assert (installed.target / "bin" / "hpsearch").is_file()
    shipped = sorted(p.stem for p in (installed.target / "hpsearch" / "experiments").glob("*.yaml"))
    assert shipped == REPO_EXPERIMENTS


@pytest.mark.slow
def test_only_the_installed_code_is_importable(installed):
    probe = textwrap.dedent("""\
        import importlib.util, json, sys
        import hpsearch, hpsearch.search.cli
        from hpsearch import analysis, data_pipeline, experiments, models, search
        from hpsearch.search.driver.demo import DEMO_EXPERIMENT
        mods = [hpsearch, analysis, data_pipeline, experiments, models, search, search.cli]
        print(json.dumps({
            "files": [m.__file__ for m in mods] + [str(DEMO_EXPERIMENT)],
            "path": sys.path,
            "benchmarks": importlib.util.find_spec("benchmarks") is not None,
        }))
        """)
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=installed.cwd,
        env=installed.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    target = installed.target.resolve()
    for file in seen["files"]:
        assert Path(file).resolve().is_relative_to(target), file
    assert str(REPO) not in [os.path.realpath(p or installed.cwd) for p in seen["path"]]
    assert not seen["benchmarks"]


@pytest.mark.slow
def test_installed_cli_validates_packaged_experiments_and_lists_models(installed):
    for name in ("demo", "experiments/demo.yaml"):
        out = hpsearch(installed, "validate", name)
        assert out.returncode == 0, out.stderr
        assert "ok. demo: tpe" in out.stdout

    out = hpsearch(installed, "validate", "nope.yaml")
    assert out.returncode == 2
    assert "nope.yaml: no such experiment file" in out.stderr
    assert ", ".join(REPO_EXPERIMENTS) in out.stderr

    out = hpsearch(installed, "models")
    assert out.returncode == 0, out.stderr
    for preset in ("AlexNet", "NarrowAlexNet", "FlatAlexNet"):
        assert preset in out.stdout


@pytest.mark.slow
def test_installed_demo_runs_beside_the_users_own_models_py(installed):
    """Two trials complete from a folder holding models.py, search.py, analysis.py, ... that
    raise on import: neither the driver nor a Ray worker resolves a generic name."""
    import pandas as pd

    assert all((installed.cwd / f"{n}.py").is_file() for n in GENERIC_NAMES)
    tiny = {
        "search.num_trials": 2,
        "search.max_concurrent": 1,
        "search.space.arch": "FlatAlexNet",
        "search.space.width": 0.25,
        "search.space.mlp_layers": 0,
        "search.space.batch_size": 64,
        "train.epochs": 1,
        "scheduler.type": "none",
        "data.image_size": 16,
    }
    sets = [arg for key, value in tiny.items() for arg in ("--set", f"{key}={value}")]
    args = ["demo", "--out", "digits", "--storage", "runs", "--name", "tiny", *sets]
    out = hpsearch(installed, *args, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run_dir = installed.cwd / "runs" / "tiny"
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert list(trials["status"]) == ["completed", "completed"], trials
    assert (run_dir / "report" / "index.html").is_file()
    assert len(list((installed.cwd / "digits").glob("*/*.png"))) == 1797
