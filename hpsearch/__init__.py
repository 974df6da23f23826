"""hpsearch: hyperparameter and architecture search for image-folder classifiers.

One import package, rooms by role (see docs/layout.md):

- ``hpsearch.rundir``: the run-directory format and its one atomic writer.
- ``hpsearch.models``: model configs, presets, backbones; ``build(cfg)`` and ``cost(cfg)``.
- ``hpsearch.data_pipeline``: scan, split, folds, the decode-once cache, batches.
- ``hpsearch.search``: experiment files, trials, the driver (Ray Tune + Optuna), the CLI.
- ``hpsearch.analysis``: the notebook API: ``from hpsearch import analysis``;
  ``analysis.load_run("runs/x")`` reads a run's Parquet tables into DataFrames.

Importing ``hpsearch`` imports nothing else: no torch, no Ray, no disk.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hpsearch")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
