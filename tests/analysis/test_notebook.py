"""Run examples/analysis.ipynb on a fixture run, in a kernel that is this venv's python."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "analysis.ipynb"


@pytest.fixture
def kernel_name(tmp_path, monkeypatch) -> str:
    """A kernelspec pointing at sys.executable, found first on JUPYTER_PATH."""
    from ipykernel.kernelspec import install

    name = "hpsearch-test"
    install(kernel_name=name, prefix=str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter" / "share" / "jupyter"))
    return name


@pytest.mark.slow  # over 3 s: make test runs it, make check does not
def test_notebook_runs_on_a_fixture_run(run_dir, kernel_name, tmp_path, monkeypatch):
    import json

    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    spec = KernelSpecManager().get_kernel_spec(kernel_name)
    assert spec.argv[0] == sys.executable
    monkeypatch.setenv("HPSEARCH_RUN", str(run_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")  # %matplotlib inline takes over in the notebook
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=kernel_name,
        timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 8
    text = json.dumps([o.get("data", {}).get("text/plain", "") for o in outputs])
    assert "fixture-run" in text and "Celebrities=People" in text
