"""`prepare`: scan, merge, split and decode an image folder into a cache, and summarise it.

Everything that can be rejected without decoding (the options, the class folders, the
merge map, the exclude and relabel files, too few images per class) is checked before the
decode starts. A rerun with the same files and size decodes nothing; changing only the merge
map, the exclude or relabel files, the split or the folds rewrites the small files next to
the arrays (labels, manifest, meta) and decodes nothing either: an excluded image stays
decoded, in no part.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from hpsearch.data_pipeline.cache import (
    LABELS,
    MANIFEST,
    META,
    PIXEL_SUMS,
    Cache,
    build_cache,
    default_workers,
    load_cache,
    mean_std,
)
from hpsearch.data_pipeline.edits import DataEdits, apply_edits, read_edits, relabel_moves
from hpsearch.data_pipeline.housekeeping import build_lock_path, mark_in_use
from hpsearch.data_pipeline.scan import (
    OK,
    SKIPPED,
    DatasetError,
    assign_labels,
    fingerprint,
    scan,
    slug,
)
from hpsearch.data_pipeline.split import (
    PARTS,
    TEST,
    TRAIN,
    VAL,
    assign_folds,
    assign_split,
    check_class_sizes,
    check_split_options,
)
from hpsearch.rundir import check_component, write_json, write_npy, write_parquet

META_FORMAT = 1


def default_cache_root() -> Path:
    """$HPSEARCH_CACHE, else ~/.cache/hpsearch."""
    return Path(
        os.environ.get("HPSEARCH_CACHE") or Path.home() / ".cache" / "hpsearch"
    ).expanduser()


@dataclass(frozen=True)
class PrepareSummary:
    """What `prepare` found and did; `format_summary` renders it."""

    source: str
    cache_path: Path
    image_size: int
    classes: list[str]
    per_class: dict[str, int]  # usable images per final class
    merge: dict[str, list[str]]
    files: int  # entries listed in the folder (manifest rows)
    train: int
    val: int
    test: int
    folds: int
    skipped: dict[str, int]  # reason -> number of files
    skipped_examples: dict[str, list[str]]  # reason -> first few relative paths
    decoded: int  # images decoded by this call; 0 when the decoded arrays were reused
    split_written: bool  # labels / manifest / meta (re)written by this call
    cache_bytes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seconds: float
    edits: DataEdits = field(default_factory=DataEdits)  # the exclude and relabel files
    relabel_moves: dict[str, int] = field(default_factory=dict)  # "old -> new": files

    @property
    def reused(self) -> bool:
        """True when nothing was decoded: the cache of these files and size existed."""
        return self.decoded == 0


def _apply_decode(listing: pd.DataFrame, decoded: pd.DataFrame) -> pd.DataFrame:
    out = listing.merge(
        decoded.rename(columns={"reason": "decode_reason", "detail": "decode_detail"}),
        on="path",
        how="left",
    )
    failed = out["decode_reason"].fillna("") != ""
    out.loc[failed, "status"] = SKIPPED
    out.loc[failed, "reason"] = out.loc[failed, "decode_reason"]
    out.loc[failed, "detail"] = out.loc[failed, "decode_detail"]
    out["row"] = out["row"].fillna(-1).astype("int64")
    out.attrs = dict(listing.attrs)
    return out.drop(columns=["decode_reason", "decode_detail"])


def _normalise_merge(merge: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    out = {str(new): [str(o) for o in olds] for new, olds in (merge or {}).items()}
    for new in out:  # a class name becomes a folder name (materialize_split, reports)
        try:
            check_component(new, "merged class name")
        except ValueError as e:
            raise DatasetError(str(e)) from None
    return out


def prepare(
    src: str | os.PathLike,
    *,
    image_size: int,
    cache_root: str | os.PathLike | None = None,
    test_fraction: float = 0.1,
    val_fraction: float = 0.1,
    folds: int = 0,
    merge: Mapping[str, Sequence[str]] | None = None,
    exclude: str | os.PathLike | None = None,
    relabel: str | os.PathLike | None = None,
    workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Cache, PrepareSummary]:
    """Scan `src`, merge classes, apply the exclude and relabel files, split, decode once into a
    cache; return it and a summary.

    `exclude` / `relabel` are CSV or Parquet files of paths (and new classes) in `src`
    (`data_pipeline.edits`). Raises DatasetError (a ValueError whose message says what to
    change) for unusable folders, files or options; an EditsError (a DatasetError) names the
    exclude or relabel file.
    """
    started = time.perf_counter()
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DatasetError(f"image size {image_size!r}: use a positive number of pixels, e.g. 227")
    if workers is not None and workers < 1:
        raise DatasetError(
            f"workers = {workers}: use at least 1 (default: all {default_workers()} cores)"
        )
    check_split_options(test_fraction=test_fraction, val_fraction=val_fraction, folds=folds)
    merge = _normalise_merge(merge)

    listing = scan(src)
    root = listing.attrs["root"]
    edits = read_edits(root, exclude=exclude, relabel=relabel)
    # Fail before decoding on what the listing already shows (the decode can only remove files).
    listed, _ = apply_edits(*assign_labels(listing, merge), edits)
    check_class_sizes(
        listed.loc[listed["status"] == OK, "class_name"].value_counts(),
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        folds=folds,
    )

    digest = fingerprint(listing, image_size)
    cache_dir = (
        Path(cache_root or default_cache_root()).expanduser()
        / f"{slug(Path(root).name)}-{image_size}px-{digest[:16]}"
    )
    # One process at a time per cache folder: the decode happens once (a second process waits,
    # then finds it built), and the split it writes is the one it reads back, whatever other
    # settings another run of the same folder uses meanwhile.
    with _cache_lock(cache_dir, progress=progress):
        decoded, n_decoded = build_cache(
            root, listing, cache_dir, image_size=image_size, workers=workers, progress=progress
        )

        manifest, classes = apply_edits(
            *assign_labels(_apply_decode(listing, decoded), merge), edits
        )
        split_options = dict(
            test_fraction=test_fraction, val_fraction=val_fraction, folds=folds, seed=seed
        )
        stored = _stored_split(cache_dir, manifest, digest, classes, merge, split_options, edits)
        if stored is not None:
            manifest = stored
        else:
            manifest = assign_split(
                manifest, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed
            )
            manifest = assign_folds(manifest, folds=folds, seed=seed)
        # Every decoded image has a row (label -1 and split "" when excluded); the figures count
        # the parts only.
        in_cache = manifest[manifest["row"] >= 0].sort_values("row")
        in_parts = in_cache[in_cache["split"].isin(PARTS)]
        labels = in_cache["label"].to_numpy(dtype=np.int64)
        train_rows = in_cache.loc[in_cache["split"] == TRAIN, "row"].to_numpy()
        mean, std = mean_std(np.load(cache_dir / PIXEL_SUMS), train_rows, image_size)

        skipped = manifest[manifest["status"] == SKIPPED]
        meta = dict(
            format=META_FORMAT,
            source=root,
            fingerprint=digest,
            image_size=image_size,
            classes=classes,
            merge=merge,
            edits=edits.to_meta(),
            split=split_options,
            mean=list(mean),
            std=list(std),
            counts=dict(
                files=len(manifest),
                images=len(labels),
                train=len(train_rows),
                val=int((in_cache["split"] == VAL).sum()),
                test=int((in_cache["split"] == TEST).sum()),
                skipped=len(skipped),
                excluded=len(edits.exclude),
                relabelled=len(edits.relabel),
                per_class={
                    c: int(n) for c, n in in_parts["class_name"].value_counts().sort_index().items()
                },
            ),
            skipped=skipped[["path", "reason", "detail"]].to_dict(orient="records"),
        )
        split_written = _write_split(cache_dir, meta, labels, manifest)
        cache = load_cache(cache_dir)
        mark_in_use(cache_dir)  # until this process exits: `hpsearch cache clean` keeps it
    summary = PrepareSummary(
        source=root,
        cache_path=cache_dir,
        image_size=image_size,
        classes=classes,
        per_class=dict(meta["counts"]["per_class"]),
        merge=merge,
        files=len(manifest),
        train=meta["counts"]["train"],
        val=meta["counts"]["val"],
        test=meta["counts"]["test"],
        folds=folds,
        skipped={r: int(n) for r, n in skipped["reason"].value_counts().items()},
        skipped_examples={r: g["path"].head(3).tolist() for r, g in skipped.groupby("reason")},
        decoded=n_decoded,
        split_written=split_written,
        cache_bytes=sum(f.stat().st_size for f in cache_dir.iterdir() if f.is_file()),
        mean=mean,
        std=std,
        seconds=time.perf_counter() - started,
        edits=edits,
        relabel_moves=relabel_moves(manifest, edits),
    )
    return cache, summary


@contextlib.contextmanager
def _cache_lock(cache_dir: Path, *, progress: bool) -> Iterator[None]:
    """An exclusive lock on `cache_dir` across processes (filelock); says so when it waits."""

    cache_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(build_lock_path(cache_dir)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if progress:
            print(
                f"waiting for another hpsearch process using the cache {cache_dir} ...",
                file=sys.stderr,
                flush=True,
            )
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _stored_split(
    cache_dir: Path,
    manifest: pd.DataFrame,
    digest: str,
    classes: list[str],
    merge: dict[str, list[str]],
    split_options: dict,
    edits: DataEdits,
) -> pd.DataFrame | None:
    """`manifest` with the split and folds the cache already stores, when they were made from
    the same files, classes, edits and options (the split is a function of those alone), else
    None.
    Spares every `hpsearch run` on a prepared cache the split, and scikit-learn's import."""
    meta = _read_json(cache_dir / META)
    if not (
        meta.get("fingerprint") == digest
        and meta.get("classes") == classes
        and meta.get("merge") == merge
        and meta.get("split") == split_options
        and edits.same_data(meta.get("edits"))
        and (cache_dir / MANIFEST).exists()
    ):
        return None
    try:
        stored = pd.read_parquet(cache_dir / MANIFEST, columns=["path", "split", "fold"])
    except (OSError, ValueError, KeyError):
        return None
    if len(stored) != len(manifest) or not stored["path"].is_unique:
        return None
    by_path = stored.set_index("path")
    try:
        part = by_path.loc[manifest["path"]]
    except KeyError:
        return None
    out = manifest.copy()
    out["split"] = part["split"].to_numpy()
    out["fold"] = part["fold"].to_numpy(dtype=np.int64)
    return out


def _write_split(cache_dir: Path, meta: dict, labels: np.ndarray, manifest: pd.DataFrame) -> bool:
    """Write labels, manifest and meta (last) unless the same meta is there already."""
    meta_file = cache_dir / META
    if meta_file.exists() and (cache_dir / LABELS).exists() and (cache_dir / MANIFEST).exists():
        old = _read_json(meta_file)
        old.pop("created", None)
        if old == meta:
            return False
    meta_file.unlink(missing_ok=True)  # the cache is incomplete until the new meta is written
    write_npy(cache_dir / LABELS, labels)
    write_parquet(manifest, cache_dir / MANIFEST)
    write_json(
        meta_file,
        dict(meta, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds")),
        indent=1,
    )
    return True


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _size(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    raise AssertionError


def _files(n: int) -> str:
    return "file" if n == 1 else "files"


def format_edits(summary: PrepareSummary) -> list[str]:
    """The lines on the exclude and relabel files of a `prepare` (none without them)."""
    edits, moved = summary.edits, summary.relabel_moves
    lines = []
    if edits.exclude_file is not None:
        n = len(edits.exclude)
        lines.append(f"excluded {n} {_files(n)} (listed in {edits.exclude_file}): in no part")
    if edits.relabel_file is not None:
        n = len(edits.relabel)
        moves = ", ".join(f"{pair} ({k})" for pair, k in list(moved.items())[:5])
        lines.append(
            f"relabelled {n} {_files(n)} (listed in {edits.relabel_file})"
            + (f": {moves}{', ...' if len(moved) > 5 else ''}" if moves else "")
        )
    return lines


def format_summary(summary: PrepareSummary) -> str:
    """A human-readable report of a `prepare` call, for the CLI."""
    s = summary
    n_images = sum(s.per_class.values())
    if s.reused:
        how = "reused: nothing decoded" + ("; split rewritten" if s.split_written else "")
    else:
        how = f"built: decoded {s.decoded} images"
    lines = [
        f"prepared {s.source}",
        f"  cache    {s.cache_path} ({_size(s.cache_bytes)} on disk; {how}; {s.seconds:.1f} s)",
        f"  images   {n_images} usable of {s.files} files listed, {s.image_size}x{s.image_size} px, {len(s.classes)} classes",
        f"  split    train {s.train} / validation {s.val} / test {s.test} (held out)"
        + (f"; {s.folds} stratified folds of train + validation" if s.folds else ""),
        f"  mean     {', '.join(f'{m:.4f}' for m in s.mean)}   std {', '.join(f'{v:.4f}' for v in s.std)} (train split, RGB)",
    ]
    for new, olds in s.merge.items():
        lines.append(f"  merged   {', '.join(olds)} -> {new}")
    lines += [f"  {line}" for line in format_edits(s)]
    lines.append("  images per class:")
    width = max(len(c) for c in s.classes)
    lines += [f"    {c:<{width}}  {s.per_class.get(c, 0):>7}" for c in s.classes]
    if s.skipped:
        lines.append(f"  skipped {sum(s.skipped.values())} files:")
        for reason, n in sorted(s.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            examples = ", ".join(s.skipped_examples.get(reason, []))
            lines.append(f"    {n:>6}  {reason}  (e.g. {examples})")
    else:
        lines.append("  skipped  none")
    return "\n".join(lines)
