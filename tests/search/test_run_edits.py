"""`hpsearch run --exclude FILE --relabel FILE`: the run sees the edited data, says so, and the
verbs that reload its cache from the stored experiment (resume, kfold, final) see the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from hpsearch.data_pipeline import load_cache
from hpsearch.search.cli import main
from hpsearch.search.errors import ExperimentError
from hpsearch.search.experiment.schema import load_experiment
from hpsearch.search.trial.inputs import load_data, load_final_data
from tests.conftest import make_image_folder

# one of each part's worth from every class; relative paths, as the manifest names them
EXCLUDE = ["class_0/img_003.png", "class_1/img_010.png", "class_2/img_017.png"]
RELABEL = {"class_0/img_004.png": "class_1"}

BASE = {
    "name": "edited",
    "search": {
        "num_trials": 1,
        "space": {"arch": "FlatAlexNet", "width": 0.25, "mlp_layers": 0, "optimizer": "adam"},
    },
    "scheduler": {"type": "none"},
    "train": {"epochs": 1, "batch_size": 16},
}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_experiment) -> Path:
    """A working directory with its own folder and cache (an edited split is rewritten in the
    cache: the shared small folder's stays as other tests expect it), the edit files and an
    experiment naming everything relative to it, as a user's project would."""
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "images")
    pd.DataFrame({"path": EXCLUDE}).to_csv(tmp_path / "exclude.csv", index=False)
    pd.DataFrame({"path": list(RELABEL), "class": list(RELABEL.values())}).to_csv(
        tmp_path / "relabel.csv", index=False
    )
    data = {"folder": "images", "image_size": 16, "cache": "cache"}
    write_experiment(BASE, tmp_path, data=data, storage="runs")
    return tmp_path


def test_bad_edit_files_name_their_field(workdir: Path) -> None:
    exp = load_experiment("edited.yaml", ["data.exclude=nope.csv"])
    with pytest.raises(ExperimentError, match="^data.exclude: exclude file 'nope.csv' does not"):
        load_data(exp, progress=False)
    exp = load_experiment("edited.yaml", ["data.relabel=exclude.csv"])
    with pytest.raises(ExperimentError, match="^data.relabel: relabel file 'exclude.csv' has no"):
        load_data(exp, progress=False)


@pytest.mark.slow  # starts Ray: one trial of one epoch (about 10 s)
def test_a_run_sees_none_of_the_excluded_files(ray_session, workdir: Path, capsys) -> None:
    args = ["run", "edited.yaml", "--name", "r", "--exclude", "exclude.csv"]
    assert main([*args, "--relabel", "relabel.csv"]) == 0
    out = capsys.readouterr().out
    # 57 images: 6 test, 6 validation, 45 train
    assert (
        "data: 45 train / 6 validation / 6 test images of "
        f"{workdir / 'images'}; excluded 3 files (listed in exclude.csv): in no part; "
        "relabelled 1 file (listed in relabel.csv): class_0 -> class_1 (1)"
    ) in out

    run_dir = workdir / "runs" / "r"
    resolved = yaml.safe_load((run_dir / "experiment.yaml").read_text())["data"]
    assert (resolved["exclude"], resolved["relabel"]) == ("exclude.csv", "relabel.csv")
    steps = pd.read_parquet(run_dir / "steps.parquet")
    assert steps["step"].max() == 3  # 45 train images / 16 a batch: the excluded ones left out
    assert pd.read_parquet(run_dir / "confusion.parquet")["count"].sum() == 6

    (meta,) = (workdir / "cache").glob("*/meta.json")
    manifest = pd.read_parquet(meta.parent / "manifest.parquet")
    in_parts = manifest[manifest["split"].isin(["train", "val", "test"])]
    assert len(in_parts) == 57 and not set(in_parts["path"]) & set(EXCLUDE)
    assert sorted(manifest.loc[manifest["status"] == "excluded", "path"]) == EXCLUDE
    assert manifest.set_index("path").loc["class_0/img_004.png", "class_name"] == "class_1"

    # resume, kfold and final reload the cache from the stored experiment, from this directory
    stored = load_experiment(run_dir / "experiment.yaml")
    cache = load_cache(meta.parent)
    excluded_rows = manifest.set_index("path").loc[EXCLUDE, "row"].to_numpy()
    for data in (
        load_data(stored, folds=3, progress=False),
        load_final_data(stored, progress=False),
    ):
        used = np.concatenate([data.train_idx, data.val_idx, np.flatnonzero(data.folds >= 0)])
        assert not set(used) & set(excluded_rows)
    assert len(load_final_data(stored, progress=False).val_idx) == len(cache.indices("test")) == 6
