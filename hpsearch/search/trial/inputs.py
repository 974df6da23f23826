"""What every trial receives, as frozen hand-offs: `TrialData` (the cache's arrays and the split)
and `TrialSettings` (the experiment's fixed training settings). `run`, `resume`, `kfold` and the
same-init warm-up all build them here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpsearch.data_pipeline import DatasetError, prepare
from hpsearch.data_pipeline.edits import EditsError
from hpsearch.data_pipeline.prepare import format_edits
from hpsearch.search.errors import ExperimentError
from hpsearch.search.experiment.budget import Budget
from hpsearch.search.trial.images import ImageSource, start_image_server

if TYPE_CHECKING:
    import numpy as np

    from hpsearch.search.experiment.schema import Experiment


@dataclass(frozen=True, eq=False)
class TrialData:
    """The decoded images and how they are split, shared with every trial; nothing in it is
    changed after it is built. The images travel as a reference to the cache file (see
    `search.trial.images`): each trial memory-maps it, so a node holds one copy, the page cache's."""

    source: ImageSource  # the images, as `images` gives them in the process that uses them
    labels: np.ndarray  # int64 [N]
    train_idx: np.ndarray  # rows trials train on
    val_idx: np.ndarray  # rows trials report val_* metrics on
    folds: np.ndarray  # int64 [N]: fold of each row, -1 without folds
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, of the training rows, in [0, 1] units
    std: tuple[float, ...]
    init_state: dict[str, Any] | None = None  # train.same_init's start weights
    # The held-out test part: in no fold; k-fold trials predict it (`hpsearch audit`), and
    # nothing is selected on it.
    test_idx: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def images(self) -> np.ndarray:
        """uint8 [N, 3, S, S], read-only where it is a memory map of the cache file."""
        return self.source.array()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, fold: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(train, validation) rows: the fixed split, or fold `fold` against the other folds."""

        if fold is None:
            return self.train_idx, self.val_idx
        return np.flatnonzero((self.folds >= 0) & (self.folds != fold)), np.flatnonzero(
            self.folds == fold
        )


@dataclass(frozen=True)
class TrialSettings:
    """The experiment's fixed training settings (what the search does not vary)."""

    epochs: int
    batch_size: int
    eval_batch_size: int
    precision: str
    seed: int
    augment: bool
    image_size: int
    metric: str
    mode: str
    cpus: float
    gpus: float
    data_on_device: str | float = "auto"  # train.data_on_device
    # search.budget: a trial over it ends at once as infeasible. k-fold drops it (it re-trains
    # configs the search found within budget, or that the user named).
    budget: Budget | None = None

    @classmethod
    def from_experiment(cls, exp: Experiment, **changes: Any) -> TrialSettings:
        settings = cls(
            epochs=exp.train.epochs,
            batch_size=exp.train.batch_size,
            eval_batch_size=exp.train.eval_batch_size,
            precision=exp.train.precision,
            seed=exp.train.seed,
            augment=exp.train.augment,
            image_size=exp.data.image_size,
            metric=exp.search.metric,
            mode=exp.search.mode,
            cpus=exp.resources.cpus,
            gpus=exp.resources.gpus,
            data_on_device=exp.train.data_on_device,
            budget=exp.search.budget,
        )
        return dataclasses.replace(settings, **changes)


def for_cluster(data: TrialData, address: str | None) -> TrialData:
    """`data` as trials on other machines reach it: joined to a cluster (`--address`), the
    driver starts an image server next to the cache file for nodes that do not have it. Call
    inside `ray_session`."""
    if not address or data.source.file is None:
        return data
    source = data.source.with_server(start_image_server(data.source))
    return dataclasses.replace(data, source=source)


def load_data(exp: Experiment, *, folds: int | None = None, progress: bool = True) -> TrialData:
    """Decode (or reuse) the cache of the experiment's folder. `folds` overrides data.folds.
    Trials train on the train part and validate on the validation part; the held-out test part
    is in neither (nor in any fold)."""

    return load_cache_and_data(exp, folds=folds, progress=progress)[1]


def load_cache_and_data(exp: Experiment, *, folds: int | None = None, progress: bool = True):
    """(the prepared cache, `load_data`'s TrialData): for a driver that also needs the
    manifest (which file each row is)."""
    cache = _prepared_cache(exp, folds=folds, progress=progress)
    data = _trial_data(cache, cache.indices("train"), cache.indices("val"))
    return cache, dataclasses.replace(data, test_idx=cache.indices("test"))


def load_final_data(exp: Experiment, *, progress: bool = True) -> TrialData:
    """The final evaluation's data (`hpsearch final`): train on train + validation, evaluate
    on the held-out test part."""

    cache = _prepared_cache(exp, folds=None, progress=progress)
    train = np.sort(np.concatenate([cache.indices("train"), cache.indices("val")]))
    return _trial_data(cache, train, cache.indices("test"))


def _prepared_cache(exp: Experiment, *, folds: int | None, progress: bool):

    data = exp.data
    if not data.folder:
        raise ExperimentError(
            "data.folder is not set: name the image folder in the file or pass --data DIR"
        )
    if not Path(data.folder).is_dir():
        raise ExperimentError(
            f"data.folder: {data.folder!r} is not a folder (one sub-folder per class)"
        )
    try:
        cache, summary = prepare(
            data.folder,
            image_size=data.image_size,
            cache_root=data.cache,
            test_fraction=data.test_fraction,
            val_fraction=data.val_fraction,
            folds=data.folds if folds is None else folds,
            merge=data.merge or None,
            exclude=data.exclude,
            relabel=data.relabel,
            workers=data.workers,
            seed=data.seed,
            progress=progress,
        )
    except EditsError as e:
        raise ExperimentError(f"data.{e.option}: {e}") from None
    except DatasetError as e:
        raise ExperimentError(f"data.folder: {e}") from None
    edits = format_edits(summary)
    if edits and progress:  # what the run, k-fold or final evaluation sees, on its console
        print(
            f"data: {summary.train} train / {summary.val} validation / {summary.test} test "
            f"images of {summary.source}; " + "; ".join(edits)
        )
    return cache


def _trial_data(cache, train_idx, val_idx) -> TrialData:

    return TrialData(
        source=ImageSource(cache.images),  # the cache's memory map: no copy here either
        labels=np.asarray(cache.labels, dtype=np.int64),
        train_idx=np.asarray(train_idx, dtype=np.int64),
        val_idx=np.asarray(val_idx, dtype=np.int64),
        folds=np.asarray(cache.fold, dtype=np.int64),
        classes=tuple(cache.classes),
        mean=tuple(float(m) for m in cache.mean),
        std=tuple(float(s) for s in cache.std),
    )
