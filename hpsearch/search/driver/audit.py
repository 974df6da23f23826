"""`hpsearch audit RUN`: after `hpsearch kfold`, find likely wrong labels (confident learning
over the k-fold models' out-of-sample probabilities), near-duplicates across the parts and
classes (perceptual hashes of the decoded cache: nothing is decoded again) and look-alike
classes; write RUN/audit.parquet, the suggestion files RUN/audit/exclude.csv and relabel.csv
that `hpsearch prepare` / `run` take (--exclude, --relabel), and thumbnails of the surest
findings for the report (RUN/audit/thumbnails.npz)."""

from __future__ import annotations

import io
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hpsearch.analysis.audit import (
    CONFLICT,
    DUPLICATE,
    LABEL,
    LEAK,
    LOOKALIKE,
    audit_table,
    duplicate_findings,
    label_findings,
    lookalike_findings,
    out_of_sample,
)
from hpsearch.data_pipeline.cache import cache_paths, part_names
from hpsearch.data_pipeline.duplicates import find_duplicates
from hpsearch.rundir import (
    AUDIT_DIR,
    AUDIT_EXCLUDE,
    AUDIT_FILE,
    AUDIT_LOOKALIKES,
    AUDIT_RELABEL,
    AUDIT_THUMBNAILS,
    COMPARISON_FILE,
    EXPERIMENT_FILE,
    KFOLD_DIR,
    KFOLD_SPEC,
    PREDICTIONS_FILE,
    atomic_write,
    write_parquet,
)
from hpsearch.search.errors import ExperimentError
from hpsearch.search.experiment.schema import load_run_experiment
from hpsearch.search.storage.run_store import RunStore
from hpsearch.search.trial.inputs import load_cache_and_data

THUMBNAIL_SIDE = 96  # at most: larger images are shown subsampled
SHOWN = {LABEL: 24, CONFLICT: 12, LEAK: 12, DUPLICATE: 12}  # thumbnails kept per issue


@dataclass
class AuditResult:
    run_dir: Path
    audit: pd.DataFrame
    config_id: str
    images: int  # images with out-of-sample probabilities
    exclude: Path
    relabel: Path
    commands: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def _predictions(run_dir: Path) -> pd.DataFrame:
    path = run_dir / PREDICTIONS_FILE
    predictions = pd.read_parquet(path) if path.exists() else None
    if predictions is None or predictions.empty:
        if (run_dir / KFOLD_DIR / KFOLD_SPEC).exists():
            raise ExperimentError(
                f"{run_dir} has k-fold results but no out-of-sample predictions "
                f"({PREDICTIONS_FILE}): they are kept by the k-fold trials of this version; "
                f"run `hpsearch kfold {run_dir}` to finish the folds, or delete "
                f"{run_dir / KFOLD_DIR} and run it again if it had finished before"
            )
        raise ExperimentError(
            f"{run_dir} has no out-of-sample predictions ({PREDICTIONS_FILE}): the audit reads "
            f"the k-fold models' predictions; run `hpsearch kfold {run_dir}` first "
            "(e.g. --k 5 --top 1)"
        )
    return predictions


def _audited_config(run_dir: Path, predictions: pd.DataFrame, config_id: str | None) -> str:
    """The config whose predictions are audited: the one asked for, else the k-fold
    comparison's best (rank 1), else the one with the most predictions."""
    have = set(predictions["config_id"].astype(str))
    if config_id is not None:
        if config_id not in have:
            raise ExperimentError(
                f"--config {config_id}: no k-fold predictions of it; configs with some: "
                f"{', '.join(sorted(have))}"
            )
        return config_id
    comparison = run_dir / COMPARISON_FILE
    if comparison.exists():
        ranked = pd.read_parquet(comparison).sort_values("rank")
        for candidate in ranked["config_id"].astype(str):
            if candidate in have:
                return candidate
    return str(predictions["config_id"].astype(str).value_counts().index[0])


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """uint8 [3, S, S] -> [h, w, 3], subsampled to at most THUMBNAIL_SIDE px."""
    step = -(-image.shape[-1] // THUMBNAIL_SIDE)
    return np.ascontiguousarray(image[:, ::step, ::step].transpose(1, 2, 0))


def _write_thumbnails(path: Path, audit: pd.DataFrame, cache, rows: dict[str, int]) -> None:
    shown = set()
    for issue, top in SHOWN.items():
        found = audit[audit["issue"] == issue].head(top)
        shown |= set(found["path"].dropna())
        if issue != LABEL:
            shown |= set(found["duplicate_of"].dropna())
    names = sorted(p for p in shown if p in rows)
    images = np.stack([_thumbnail(cache.images[rows[p]]) for p in names]) if names else None
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        paths=np.asarray(names, dtype=str),
        images=images if images is not None else np.zeros((0, 1, 1, 3), np.uint8),
    )
    atomic_write(path, buf.getvalue())


def _suggestions(audit: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(exclude, relabel): every near-copy but the one its group keeps; every likely wrong
    label with its suggested class (a file in both stays in exclude only)."""
    copies = audit[audit["issue"].isin([DUPLICATE, LEAK, CONFLICT])]
    exclude = pd.DataFrame({"path": sorted(set(copies["path"]))})
    labels = audit[(audit["issue"] == LABEL) & ~audit["path"].isin(exclude["path"])]
    relabel = pd.DataFrame(
        {"path": labels["path"].to_numpy(), "class": labels["suggested"].to_numpy()}
    )
    return exclude, relabel


def _commands(
    run_dir: Path, exp, files: dict[str, tuple[Path, pd.DataFrame]], audit: pd.DataFrame
) -> list[str]:
    """The `prepare` and `run` commands that act on the suggestion files (`files`: option ->
    (file, its rows)); a file without rows is left out."""
    edits = []
    for option, (file, rows) in files.items():
        if len(rows):
            edits += [f"--{option}", str(file)]
    merges = []
    for r in audit[audit["issue"] == LOOKALIKE].itertuples(index=False):
        merges += ["--merge", str(getattr(r, "merge", None) or f"{r.given}={r.suggested}")]
    out = []
    if edits or merges:
        prepare = ["hpsearch", "prepare", str(exp.data.folder), "--image-size"]
        prepare += [str(exp.data.image_size), *edits]
        out.append(shlex.join(prepare))
        if merges:
            out.append(shlex.join([*prepare, *merges]) + "   # also joining the look-alikes")
    if edits:
        name = f"{exp.name}-audited" if getattr(exp, "name", None) else "audited"
        run = ["hpsearch", "run", str(run_dir / EXPERIMENT_FILE), "--name", name, *edits]
        out.append(shlex.join(run))
    return out


def run_audit(
    run_dir: str | Path,
    *,
    config_id: str | None = None,
    lookalike_threshold: float = 0.1,
    progress: bool = True,
) -> AuditResult:
    """Audit the data of a run after `hpsearch kfold`; write audit.parquet and the suggestion
    files; return what was found."""
    store = RunStore.checkout(run_dir)  # an s3:// run: its working copy, up to date
    run_dir = store.path
    exp = load_run_experiment(run_dir)
    predictions = _predictions(run_dir)
    config_id = _audited_config(run_dir, predictions, config_id)
    spec = json.loads((run_dir / KFOLD_DIR / KFOLD_SPEC).read_text())
    # The cache as the k-fold run prepared it (the same folds: nothing is rewritten).
    cache, _ = load_cache_and_data(exp, folds=int(spec["k"]), progress=progress)
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    images, probs = out_of_sample(predictions, config_id)
    if probs.shape[1] != len(cache.classes):
        raise ExperimentError(
            f"the k-fold predictions have {probs.shape[1]} classes but the data now has "
            f"{len(cache.classes)}: the data changed since `hpsearch kfold`; run it again"
        )
    labels = label_findings(images, probs, cache.classes)
    lookalikes = lookalike_findings(images, probs, cache.classes, threshold=lookalike_threshold)
    seconds["labels"] = time.perf_counter() - started

    started = time.perf_counter()
    paths = cache_paths(cache)
    parts = part_names(cache)
    in_parts = np.flatnonzero(parts != "")  # not the files a run was told to exclude
    confidence = pd.Series(
        probs[np.arange(len(images)), images["label"].to_numpy()], index=images["path"]
    )
    info = pd.DataFrame(
        {
            "path": paths[in_parts],
            "class_name": np.asarray(cache.classes, dtype=object)[cache.labels[in_parts]],
            "part": parts[in_parts],
            "confidence": confidence.reindex(paths[in_parts]).to_numpy(),
        }
    )
    if progress:
        print(f"hashing {len(in_parts)} images of the cache ...", file=sys.stderr, flush=True)
    pairs = find_duplicates(cache.images, progress=progress)
    position = np.full(len(paths), -1)
    position[in_parts] = np.arange(len(in_parts))
    pairs = pairs.assign(a=position[pairs["a"]], b=position[pairs["b"]])
    pairs = pairs[(pairs["a"] >= 0) & (pairs["b"] >= 0)]
    duplicates = duplicate_findings(pairs, info)
    seconds["duplicates"] = time.perf_counter() - started

    audit = audit_table(labels, duplicates, lookalikes)
    write_parquet(audit.drop(columns=["merge"], errors="ignore"), run_dir / AUDIT_FILE)
    folder = run_dir / AUDIT_DIR
    folder.mkdir(exist_ok=True)
    exclude, relabel = _suggestions(audit)
    exclude_file, relabel_file = folder / AUDIT_EXCLUDE, folder / AUDIT_RELABEL
    atomic_write(exclude_file, exclude.to_csv(index=False).encode())
    atomic_write(relabel_file, relabel.to_csv(index=False).encode())
    looks = audit[audit["issue"] == LOOKALIKE].reindex(
        columns=["given", "suggested", "score", "merge"]
    )
    looks.columns = ["class_a", "class_b", "score", "merge"]
    atomic_write(folder / AUDIT_LOOKALIKES, looks.to_csv(index=False).encode())
    rows = {p: i for i, p in enumerate(paths)}
    _write_thumbnails(folder / AUDIT_THUMBNAILS, audit, cache, rows)
    store.upload([AUDIT_FILE, AUDIT_DIR])
    return AuditResult(
        run_dir=run_dir,
        audit=audit,
        config_id=config_id,
        images=len(images),
        exclude=exclude_file,
        relabel=relabel_file,
        commands=_commands(
            run_dir,
            exp,
            {"exclude": (exclude_file, exclude), "relabel": (relabel_file, relabel)},
            audit,
        ),
        seconds=seconds,
    )
