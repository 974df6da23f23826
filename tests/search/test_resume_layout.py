"""A run directory made before the move to one import package is refused by resume, saying
which version made it and what to do; runs of this layout pass."""

from __future__ import annotations

import json
import shutil

import pytest

from hpsearch.search.cli import main
from hpsearch.search.driver.resume import check_layout
from hpsearch.search.errors import ExperimentError
from hpsearch.search.experiment.files import packaged_path


def _run_dir(tmp_path, version: str | None):
    run_dir = tmp_path / "runs" / "old"
    run_dir.mkdir(parents=True)
    shutil.copy(packaged_path("demo"), run_dir / "experiment.yaml")
    (run_dir / "tuner.pkl").write_bytes(b"pickled by an older hpsearch")
    if version is not None:
        (run_dir / "versions.json").write_text(json.dumps({"hpsearch": version}))
    return run_dir


def test_a_run_of_hpsearch_0_1_is_refused_naming_the_version_and_what_to_do(tmp_path, capsys):
    run_dir = _run_dir(tmp_path, "0.1.0")
    assert main(["resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "made by hpsearch 0.1.0" in err
    assert "hpsearch==0.1.0" in err and "hpsearch run" in err


@pytest.mark.parametrize("version", ["0.2.0", "1.3.1", "0+unknown", None])
def test_runs_of_this_layout_pass_the_check(tmp_path, version):
    check_layout(_run_dir(tmp_path, version))


def test_the_check_names_the_run_as_the_user_gave_it(tmp_path):
    with pytest.raises(ExperimentError, match=r"^s3://bucket/old was made by hpsearch 0\.1\.5"):
        check_layout(_run_dir(tmp_path, "0.1.5"), "s3://bucket/old")
