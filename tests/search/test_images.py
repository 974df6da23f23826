"""One copy of the images per node: trials memory-map the cache file instead of receiving the
pixels through Ray's object store; only a node without the file fetches them, from the
driver's image server."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from hpsearch.search.driver.tune_setup import trainable
from hpsearch.search.experiment.schema import Experiment
from hpsearch.search.trial.images import ImageSource, start_image_server
from hpsearch.search.trial.inputs import load_data


@pytest.fixture(scope="module")
def exp(small_folder, cache_root):
    return Experiment.model_validate(
        {
            "name": "images",
            "data": {"folder": str(small_folder), "cache": str(cache_root), "image_size": 24},
            "resources": {"cpus": 1, "gpus": 0},
        }
    )


def test_the_images_travel_as_a_reference_to_the_cache_file(exp):
    data = load_data(exp, progress=False)
    file = data.source.file
    assert file is not None and file.path.endswith("images.npy")
    blob = pickle.dumps(data)
    assert len(blob) < data.images.nbytes / 2 and len(blob) < 20_000  # no pixels inside
    again = pickle.loads(blob)
    images = again.images
    assert isinstance(images, np.memmap) and images.filename == file.path
    assert not images.flags.writeable  # read-only: every process shares the page cache's copy
    np.testing.assert_array_equal(images, data.images)


def test_arrays_that_are_no_file_travel_as_they_are():
    array = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    source = pickle.loads(pickle.dumps(ImageSource(array)))
    assert source.file is None
    np.testing.assert_array_equal(source.array(), array)


def test_a_node_without_the_file_says_how_to_get_it(exp, tmp_path):
    data = load_data(exp, progress=False)
    source = pickle.loads(pickle.dumps(data.source))
    source._file = dataclasses.replace(source.file, path=str(tmp_path / "elsewhere.npy"))
    with pytest.raises(FileNotFoundError, match="not on this node.*hpsearch prepare"):
        source.array()


def test_a_node_without_the_file_fetches_it_from_the_image_server(ray_session, exp, tmp_path):
    data = load_data(exp, progress=False)
    served = data.source.with_server(start_image_server(data.source))
    source = pickle.loads(pickle.dumps(served))
    source._file = dataclasses.replace(source.file, path=str(tmp_path / "elsewhere.npy"))
    np.testing.assert_array_equal(source.array(), data.images)


def test_a_trial_reads_the_cache_through_a_memory_map(ray_session, exp, tmp_path):
    from ray import tune

    def probe(config, *, data):
        images = data.images
        tune.report(
            {
                "memmap": isinstance(images, np.memmap),
                "writeable": bool(images.flags.writeable),
                "filename": str(getattr(images, "filename", "")),
                "checksum": int(images[:4].sum()),
            }
        )

    data = load_data(exp, progress=False)
    tuner = tune.Tuner(
        trainable(exp, probe, data=data),
        run_config=tune.RunConfig(name="probe", storage_path=str(tmp_path), verbose=0),
    )
    (result,) = tuner.fit()
    metrics = result.metrics
    assert metrics["memmap"] and not metrics["writeable"]
    assert metrics["filename"] == data.source.file.path
    assert metrics["checksum"] == int(data.images[:4].sum())
