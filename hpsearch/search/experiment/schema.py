"""The experiment file: one YAML document validated into a pydantic model.

Unknown keys are errors, every error names its field path, and `--set a.b=c` overrides are
applied to the raw document before validation, so they are checked like the file itself.
`search.space` is built from the dimension table (`search.experiment.dimensions`): each dimension is a
field holding its typed domain (`Fixed`, `Choices`, `Range`), written back in its YAML form.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from hpsearch.rundir import EXPERIMENT_FILE, METRICS, NAME_PATTERN, metric_mode
from hpsearch.search.errors import ExperimentError
from hpsearch.search.experiment.budget import Budget
from hpsearch.search.experiment.files import packaged_names_hint
from hpsearch.search.experiment.space import grid_size, varying_architecture_dims
from hpsearch.search.experiment.space_model import SearchSpace
from hpsearch.search.experiment.space_model import Strict as _Strict

# train.data_on_device: where a trial keeps its images on a GPU (or a size in GB per trial).
PLACEMENTS = ("auto", "always", "never")

__all__ = ["Experiment", "ExperimentError", "SearchSpace", "apply_overrides", "load_experiment"]


class DataSection(_Strict):
    folder: str | None = Field(
        None,
        description="image folder, one sub-folder per class (relative to the working "
        "directory); --data overrides it",
    )
    cache: str | None = Field(
        None, description="cache root (default $HPSEARCH_CACHE or ~/.cache/hpsearch)"
    )
    image_size: int = Field(
        64, ge=8, le=1024, description="side in px of the square each image is decoded to, once"
    )
    # Three disjoint parts: trials train on train and report on the validation part, which the
    # search selects by; the test part is read only by `hpsearch final`.
    test_fraction: float = Field(
        0.1, gt=0, lt=1, description="the held-out test part, read only by `hpsearch final`"
    )
    val_fraction: float = Field(
        0.1, gt=0, lt=1, description="the validation part: what trials report on"
    )
    folds: int = Field(
        0, ge=0, description="stratified folds of train + validation (0: none, else >= 2)"
    )
    merge: dict[str, list[str]] = Field(
        default_factory=dict,
        description="classes to merge, new name: [old names], e.g. {People: [Celebrities]}",
    )
    # Applied before the split, after the merge; neither decodes anything again (the cache is
    # the folder's). Kept as given, like `folder`: resume, kfold and final read them again.
    exclude: str | None = Field(
        None,
        description="CSV or Parquet file of images to leave out of every part (column path, "
        "relative to the image folder), e.g. the exclude.csv `hpsearch audit` writes; "
        "relative to the working directory; --exclude overrides it",
    )
    relabel: str | None = Field(
        None,
        description="CSV or Parquet file of images to give another class before the split "
        "(columns path and class), e.g. the relabel.csv `hpsearch audit` writes; relative "
        "to the working directory; --relabel overrides it",
    )
    seed: int = Field(0, description="seed of the split and the folds")
    workers: int | None = Field(None, ge=1, description="decoding processes (default: all cores)")

    @field_validator("folds")
    @classmethod
    def _folds(cls, v: int) -> int:
        if v == 1:
            raise ValueError("folds must be 0 (none) or at least 2")
        return v

    @model_validator(mode="after")
    def _parts(self) -> DataSection:
        if self.test_fraction + self.val_fraction >= 1:
            raise ValueError(
                f"test_fraction {self.test_fraction} + val_fraction {self.val_fraction} leave no "
                "training images: keep their sum below 1, e.g. 0.1 and 0.1"
            )
        return self


class SearchSection(_Strict):
    algorithm: Literal["tpe", "random", "grid"] = Field(
        "tpe",
        description="Optuna's sampler: tpe, random, or grid (every distinct configuration of "
        "the space once)",
    )
    num_trials: int = Field(
        20,
        ge=1,
        description="how many trials the search runs (grid: default and at most the grid's "
        "distinct configurations)",
    )
    max_concurrent: int = Field(
        0, ge=0, description="trials at a time (0: as many as the resources allow)"
    )
    metric: Literal[METRICS] = Field(  # type: ignore[valid-type]
        "val_accuracy", description="what the search and ASHA optimise"
    )
    mode: Literal["max", "min"] | None = Field(
        None, description="max or min (default: min for losses, else max)"
    )
    seed: int = Field(0, description="seed of the sampler")
    budget: Budget | None = Field(
        None,
        description="the most one configuration may cost (MACs per image, parameters): one "
        "over it ends at once as infeasible, nothing trained (default: no limit)",
    )
    space: SearchSpace = Field(
        default_factory=SearchSpace,
        description="what the sampler may change; a dimension left out keeps the preset's value",
    )

    @model_validator(mode="after")
    def _mode(self) -> SearchSection:
        natural = metric_mode(self.metric)
        if self.mode is None:
            self.mode = natural
        elif self.mode != natural:
            raise ValueError(
                f"mode {self.mode!r} optimises {self.metric} the wrong way; use mode: {natural!r}"
            )
        return self


class SchedulerSection(_Strict):
    type: Literal["asha", "none"] = Field(
        "asha", description="asha: stop weak trials early; none: every trial trains train.epochs"
    )
    grace_period: int = Field(
        1, ge=1, description="epochs every trial gets before ASHA may stop it"
    )
    reduction_factor: float = Field(
        3.0, gt=1, description="ASHA promotes 1 / reduction_factor of the trials at each rung"
    )
    # Each further bracket starts its trials' first rung a reduction_factor later (a less
    # greedy stop).
    brackets: int = Field(
        1, ge=1, le=8, description="1 = ASHA; more = asynchronous Hyperband (Li et al. 2020)"
    )


class SameInit(_Strict):
    """The seed's optimizer protocol: train the fixed architecture this long with SGD once,
    then start every trial from those weights."""

    epochs: int = Field(1, ge=1, description="epochs of the SGD warm-up")
    lr: float = Field(0.01, gt=0, description="the warm-up's learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="the warm-up's momentum")


class KFoldSection(_Strict):
    """After the search, re-train the top configs on k stratified folds (no early stopping)."""

    top: int = Field(3, ge=1, description="how many of the best configs")
    k: int = Field(10, ge=2, description="number of stratified folds")
    epochs: int | None = Field(None, ge=1, description="epochs per fold (default: train.epochs)")


class TrainSection(_Strict):
    epochs: int = Field(10, ge=1, description="epochs per trial (ASHA may stop one earlier)")
    batch_size: int = Field(
        128, ge=1, description="mini-batch size (search.space.batch_size overrides it)"
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto: bf16 autocast with channels-last where the hardware runs it fast "
        "(a CUDA GPU with bf16, a CPU with AMX), else fp32",
    )
    seed: int = Field(
        0,
        description="seed of each trial's initial weights and batch order "
        "(search.space.seed overrides it)",
    )
    augment: bool = Field(False, description="on-device random crop + flip")
    eval_batch_size: int = Field(512, ge=1, description="batch size of the evaluations")
    same_init: SameInit | None = Field(
        None,
        description="every trial starts from one SGD warm-up's weights (needs a fixed "
        "architecture)",
    )
    data_on_device: str | float = Field(
        "auto",
        description="where a GPU trial keeps its images: auto (resident within its share of "
        "the GPU's free memory, else streamed from host memory), always, never, or a size in "
        "GB per trial (e.g. 6)",
    )

    @field_validator("data_on_device", mode="before")
    @classmethod
    def _data_on_device(cls, v: Any) -> str | float:
        text = v.strip().lower() if isinstance(v, str) else v
        if isinstance(text, str) and text.removesuffix("gb").strip():
            try:  # "6GB", "6 GB", "6"
                text = float(text.removesuffix("gb").strip())
            except ValueError:
                pass
        if text in PLACEMENTS:
            return text
        if isinstance(text, int | float) and not isinstance(text, bool) and 0 < text < math.inf:
            return float(text)
        raise ValueError(
            f"{v!r} is not a placement: use auto (resident within the trial's share of the GPU's "
            "free memory, else streamed), always, never (stream every batch from host memory) "
            "or a size in GB per trial, e.g. 6"
        )


class ResourcesSection(_Strict):
    cpus: float = Field(1.0, gt=0, description="CPUs per trial")
    gpus: float = Field(
        0.0,
        ge=0,
        le=1,
        description="GPUs per trial: 0 (the CPU), a fraction (several trials packed on each "
        "GPU, e.g. 0.25: four) or 1; a trial trains on one GPU",
    )

    @field_validator("gpus", mode="before")
    @classmethod
    def _one_gpu_per_trial(cls, v: Any) -> Any:
        # Before pydantic's own `le` check, so the message says what to set instead.
        try:
            many = float(v) > 1
        except (TypeError, ValueError):
            return v  # (pydantic names the type error)
        if many and not isinstance(v, bool):
            raise ValueError(
                f"a trial trains on one GPU (no data-parallel training across GPUs), so {v} "
                "would keep all but one of its GPUs idle. Set resources.gpus: 1 for one trial "
                "per GPU, or a fraction such as 0.5 to pack trials on each GPU; more GPUs run "
                "more trials at once (search.max_concurrent: 0 fills them)"
            )
        return v


class FailureSection(_Strict):
    max_retries: int = Field(
        1, ge=0, description="how often a crashed trial restarts from its last checkpoint"
    )


# A tracking URI's scheme (file:, sqlite:, http:, https:, databricks, ...): a bare path would be
# resolved against the driver's working directory, which in a Ray job is a temporary copy.
_URI_SCHEME = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*:|databricks$)")


class TrackingSection(_Strict):
    """Copies of every trial's per-epoch metrics for the tools practitioners already use,
    written by those tools' own libraries (`pip install 'hpsearch[tracking]'`)."""

    tensorboard: bool = Field(
        False, description="event files in each trial's folder: tensorboard --logdir RUN_DIR"
    )
    mlflow: str | None = Field(
        None, description="tracking URI: one MLflow run per trial, in the experiment `name`"
    )

    @field_validator("mlflow")
    @classmethod
    def _mlflow(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if not _URI_SCHEME.match(v):
            raise ValueError(
                f"{v!r} is not a tracking URI: give its scheme, e.g. "
                "sqlite:////abs/path/mlflow.db, http://host:5000 or file:///abs/path/mlruns"
            )
        parts = urlsplit(v)
        if parts.username or parts.password:
            raise ValueError(
                "the URI holds credentials, and it is written to the run's experiment.yaml: "
                "leave them out and set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD "
                "(or MLFLOW_TRACKING_TOKEN) in the environment instead"
            )
        return v

    @property
    def enabled(self) -> bool:
        return self.tensorboard or self.mlflow is not None


class Experiment(_Strict):
    name: str = Field(
        pattern=NAME_PATTERN,
        max_length=200,
        description="study name (also the Optuna study's): letters, digits, _ . -",
    )
    data: DataSection = Field(
        default_factory=DataSection, description="the image folder, its cache and its parts"
    )
    search: SearchSection = Field(
        default_factory=SearchSection, description="the sampler, the budget and the space"
    )
    scheduler: SchedulerSection = Field(
        default_factory=SchedulerSection, description="early stopping"
    )
    train: TrainSection = Field(default_factory=TrainSection, description="how a trial trains")
    resources: ResourcesSection = Field(
        default_factory=ResourcesSection, description="what one trial takes"
    )
    failure: FailureSection = Field(
        default_factory=FailureSection, description="what happens when a trial crashes"
    )
    tracking: TrackingSection = Field(
        default_factory=TrackingSection, description="copies of the metrics: TensorBoard, MLflow"
    )
    kfold: KFoldSection | None = Field(
        None, description="k-fold estimates right after the search (default: none)"
    )
    storage: str = Field(
        "runs",
        description="where run directories go: a folder, or s3://BUCKET/PREFIX or "
        "gs://BUCKET/PREFIX (--storage overrides it)",
    )

    @model_validator(mode="after")
    def _grid(self) -> Experiment:
        if self.search.algorithm == "grid":
            self._grid_trials(grid_size(self.search.space))  # raises for a continuous range
        if self.train.same_init is not None:
            varying = varying_architecture_dims(self.search.space)
            if varying:
                raise ValueError(
                    f"train.same_init needs a fixed architecture, but search.space varies {varying}: "
                    "fix them to one value each (the optimizer, lr, dropout and batch size may vary)"
                )
        if self.scheduler.type == "asha" and self.scheduler.grace_period > self.train.epochs:
            raise ValueError(
                f"scheduler.grace_period ({self.scheduler.grace_period}) exceeds train.epochs "
                f"({self.train.epochs}); lower it or train longer"
            )
        return self

    def _grid_trials(self, size: int) -> None:
        """A grid runs each of its distinct configurations once: num_trials defaults to their
        number, and more trials than that would only repeat configurations."""
        s = self.search
        if "num_trials" not in s.model_fields_set:
            s.num_trials = size
        elif s.num_trials > size:
            raise ValueError(
                f"search.num_trials ({s.num_trials}) exceeds the grid's {size} distinct "
                f"configurations, so trials would repeat configurations: set it to {size} or "
                "leave it out (a grid's default); to train every configuration several times, "
                "list training seeds, e.g. search.space.seed: [0, 1]"
            )

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def apply_overrides(doc: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a raw experiment document."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ExperimentError(f"--set {item!r}: expected key.path=value, e.g. train.epochs=3")
        parts = key.strip().split(".")
        node = doc
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ExperimentError(f"--set {item!r}: {where} is a value, not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return doc


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid experiment ({err.error_count()} error(s)):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling"
        # whole-experiment checks name their fields in the message itself
        lines.append(f"  {loc}: {msg}" if loc else f"  {msg}")
    return "\n".join(lines)


def load_experiment(path: str | Path, overrides: Iterable[str] = ()) -> Experiment:
    """Read, override and validate an experiment file. Raises ExperimentError."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ExperimentError(f"{path}: no such experiment file; {packaged_names_hint()}") from None
    except yaml.YAMLError as e:
        raise ExperimentError(f"{path}: not valid YAML: {e}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ExperimentError(
            f"{path}: the top level must be a mapping (name:, data:, search:, ...)"
        )
    doc = apply_overrides(doc, overrides)
    try:
        return Experiment.model_validate(doc)
    except ValidationError as e:
        raise ExperimentError(format_validation_error(e, str(path))) from None


def load_run_experiment(run_dir: str | Path) -> Experiment:
    """The experiment of a run directory, for `resume`, `kfold` and `final`. Raises
    ExperimentError for a folder that is not a run directory, or a run made before the
    three-part split: its trials validated on what is now the held-out test part, so neither
    continuing it nor a final evaluation of it would be honest."""
    path = Path(run_dir) / EXPERIMENT_FILE
    if not path.is_file():
        raise ExperimentError(
            f"{run_dir} is not a run directory of hpsearch (no {EXPERIMENT_FILE})"
        )
    check_trusted(Path(run_dir))
    raw = yaml.safe_load(path.read_text()) or {}
    data = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(data, dict) or "val_fraction" not in data:
        raise ExperimentError(
            f"{run_dir} was made before hpsearch split the images into train / validation / "
            "test: its trials were selected on the part that is now held out for the final "
            f"test. Start a new run from its experiment: hpsearch run {path} --name NEW_NAME"
        )
    return load_experiment(path)


def check_trusted(run_dir: Path) -> None:
    """Refuse a run directory that another user owns or others may write to: `resume` and
    `kfold` unpickle Ray Tune's state from it (tuner.pkl, the searcher), which runs code, so
    a run directory must be trusted like code. Checked: the folder and its pickles."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    paths = [run_dir, *sorted(run_dir.glob("*.pkl")), *sorted(run_dir.glob("kfold/*.pkl"))]
    for path in paths:
        st = path.stat()
        if uid is not None and st.st_uid != uid:
            raise ExperimentError(
                f"{path} belongs to another user (uid {st.st_uid}); resume, kfold and final "
                "load pickled state from a run directory, which runs code. Copy the run "
                "directory (cp -r) after checking where it comes from, and use the copy"
            )
        if st.st_mode & stat.S_IWOTH:  # (group-writable is left alone: user private groups)
            raise ExperimentError(
                f"{path} is writable by every user (mode {stat.filemode(st.st_mode)}); its "
                f"pickled state could have been replaced. If you trust it: chmod o-w {path}"
            )
