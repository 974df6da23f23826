"""Exclude and relabel files: which images a `prepare` leaves out, and which get another class.

An exclude file is a CSV or Parquet table with a column `path`; a relabel file has `path` and
`class` (or `suggested`, as an audit table names it; `class` wins where both exist). Other
columns are ignored, so the `exclude.csv` / `relabel.csv` that `hpsearch audit` writes, or a
filtered copy of its table, are read as they are. A path is the manifest's: relative to the
image folder, "/"-separated (`cats/img1.jpg`); an absolute path inside the folder is made
relative.

`read_edits` reads and checks the files on their own; `apply_edits` applies them to a labelled
manifest (`scan.assign_labels`): a relabelled file takes its new class before the split (its
folder's class stays in `given_class`), an excluded file gets status "excluded" and so is in
no part, no fold and no count. Neither changes which files are decoded: the cache's arrays,
folder name and fingerprint stay those of the unedited folder.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hpsearch.data_pipeline.scan import EXCLUDED, OK, DatasetError

PATH = "path"
CLASS = "class"
CLASS_ALIASES = (CLASS, "suggested")  # the first one a file has is its new class
GIVEN_CLASS = "given_class"  # manifest column: the class the folder (and merge) gave the file
FORMATS = (".csv", ".parquet")
SHOWN = 5  # offending paths an error lists


class EditsError(DatasetError):
    """An exclude or relabel file cannot be used; `option` names which ("exclude" or
    "relabel"), so a caller can name its own flag or field."""

    def __init__(self, message: str, option: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class DataEdits:
    """The exclusions and new classes of a `prepare`, read by `read_edits`. Paths are relative
    to the image folder, as the manifest names them."""

    exclude: tuple[str, ...] = ()  # sorted, unique
    relabel: Mapping[str, str] = field(default_factory=dict)  # path -> new class, by path
    exclude_file: str | None = None  # as given (relative to the working directory)
    relabel_file: str | None = None

    @property
    def given(self) -> bool:
        """True when a file was given (even one without rows)."""
        return self.exclude_file is not None or self.relabel_file is not None

    def to_meta(self) -> dict:
        """meta.json's `edits`: the files (absolute) and what they said (meta.json's `counts`
        has how many)."""
        return dict(
            exclude_file=_absolute(self.exclude_file),
            relabel_file=_absolute(self.relabel_file),
            excluded=list(self.exclude),
            relabelled=dict(self.relabel),
        )

    def same_data(self, meta_edits: Mapping | None) -> bool:
        """Whether meta.json's `edits` (None: a cache prepared without edits) describe the
        same exclusions and classes, whichever files they came from."""
        meta_edits = meta_edits or {}
        excluded = list(meta_edits.get("excluded", []))
        relabelled = dict(meta_edits.get("relabelled", {}))
        return list(self.exclude) == excluded and dict(self.relabel) == relabelled


def _absolute(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(os.path.expanduser(path))


def _listed(items: Iterable[str]) -> str:
    items = list(items)
    shown = ", ".join(items[:SHOWN])
    return shown + (f", ... ({len(items) - SHOWN} more)" if len(items) > SHOWN else "")


def read_table(
    path: str | os.PathLike, *, option: str, columns: Iterable[str | tuple[str, ...]]
) -> pd.DataFrame:
    """The table in `path` (.csv or .parquet) with `columns` (each a tuple of accepted names,
    or one name) as strings; EditsError naming the file for anything unusable."""
    what = f"{option} file {str(path)!r}"
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if suffix not in FORMATS:
        raise EditsError(
            f"{what}: {suffix or 'no extension'} is not a format it can read: give a .csv or "
            f".parquet file with a column {PATH!r}",
            option,
        )
    if not p.is_file():
        raise EditsError(
            f"{what} {'is not a file' if p.exists() else 'does not exist'}: give the path of a "
            f"{' or '.join(FORMATS)} file (relative to the working directory), e.g. the "
            f"{option}.csv that `hpsearch audit` writes",
            option,
        )
    try:
        if suffix == ".csv":  # every cell a string: a class named "1" stays "1"
            table = pd.read_csv(p, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        else:
            table = pd.read_parquet(p)
    except pd.errors.EmptyDataError:
        raise EditsError(
            f"{what} is empty: its first line must name the columns, e.g. {PATH}", option
        ) from None
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        kind = "CSV" if suffix == ".csv" else "Parquet"
        raise EditsError(
            f"{what} cannot be read as {kind} ({e}): write it as {kind}, or use the other "
            "format with the matching extension",
            option,
        ) from None
    found = {str(c).strip().lower(): c for c in table.columns}
    out = {}
    for wanted in columns:
        names = (wanted,) if isinstance(wanted, str) else tuple(wanted)
        name = next((n for n in names if n in found), None)
        if name is None:
            alias = f" (or {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else ""
            raise EditsError(
                f"{what} has no column {names[0]!r}{alias} (its columns: "
                f"{', '.join(map(str, table.columns)) or 'none'}): name it in the first line",
                option,
            )
        values = table[found[name]]
        text = values.astype(str).str.strip().where(values.notna(), "")
        empty = [str(i + 1) for i in text.index[text == ""]]
        if empty:
            raise EditsError(
                f"{what}: data row(s) {_listed(empty)} have no {name}: fill them in or remove them",
                option,
            )
        out[names[0]] = text.to_numpy()
    return pd.DataFrame(out)


def _relative(raw: str, root: Path) -> str | None:
    """`raw` as the manifest names it (relative, "/"-separated), or None when outside `root`."""
    if os.path.isabs(os.path.expanduser(raw)):
        p = Path(os.path.normpath(os.path.expanduser(raw)))
        for candidate in (p, Path(os.path.realpath(p.parent)) / p.name):  # /tmp -> /private/tmp
            try:
                return candidate.relative_to(root).as_posix()
            except ValueError:
                continue
        return None
    rel = posixpath.normpath(raw)
    return None if rel == "." or rel == ".." or rel.startswith("../") else rel


def _paths(table: pd.DataFrame, root: Path, *, option: str, source: str) -> list[str]:
    rel = [_relative(raw, root) for raw in table[PATH]]
    outside = [raw for raw, r in zip(table[PATH], rel, strict=True) if r is None]
    if outside:
        raise EditsError(
            f"{option} file {source!r} names {len(outside)} path(s) outside the image folder "
            f"{str(root)!r}: {_listed(outside)}; give paths relative to it as the manifest "
            "names them (e.g. cats/img1.jpg), or absolute paths inside it",
            option,
        )
    return [r for r in rel if r is not None]


def read_edits(
    root: str | os.PathLike,
    *,
    exclude: str | os.PathLike | None = None,
    relabel: str | os.PathLike | None = None,
) -> DataEdits:
    """Read the exclude and relabel files (either may be None) for the image folder `root`.

    Raises EditsError for a missing or unreadable file, a missing column, an empty cell, a
    path outside `root`, a path given two different classes, or a path both excluded and
    relabelled. Whether each path is a file of the folder, and each class one of its classes,
    `apply_edits` checks against the manifest.
    """
    root = Path(root).expanduser().resolve()
    excluded: list[str] = []
    new_class: dict[str, str] = {}
    if exclude is not None:
        table = read_table(exclude, option="exclude", columns=[PATH])
        excluded = sorted(set(_paths(table, root, option="exclude", source=str(exclude))))
    if relabel is not None:
        table = read_table(relabel, option="relabel", columns=[PATH, CLASS_ALIASES])
        table[PATH] = _paths(table, root, option="relabel", source=str(relabel))
        classes = table.drop_duplicates().groupby(PATH)[CLASS].agg(list)
        conflicts = classes[classes.map(len) > 1]
        if len(conflicts):
            shown = [f"{p} ({' / '.join(c)})" for p, c in conflicts.items()]
            raise EditsError(
                f"relabel file {str(relabel)!r} gives {len(conflicts)} path(s) more than one "
                f"class: {_listed(shown)}; keep one row per path",
                "relabel",
            )
        new_class = {p: c[0] for p, c in sorted(classes.items())}
    both = sorted(set(excluded) & set(new_class))
    if both:
        raise EditsError(
            f"{len(both)} path(s) are both excluded (in {str(exclude)!r}) and relabelled (in "
            f"{str(relabel)!r}): {_listed(both)}; remove each from one of the files",
            "relabel",
        )
    return DataEdits(
        exclude=tuple(excluded),
        relabel=new_class,
        exclude_file=None if exclude is None else str(exclude),
        relabel_file=None if relabel is None else str(relabel),
    )


def apply_edits(
    manifest: pd.DataFrame, classes: list[str], edits: DataEdits
) -> tuple[pd.DataFrame, list[str]]:
    """Apply `edits` to a manifest labelled by `scan.assign_labels` (with its `classes`).

    Returns a copy with `given_class` (the folder's class after the merge), `class_name` the new
    class of each relabelled file, status "excluded" for each excluded file and labels indexing
    the classes that still have usable images (returned too). A new class may be one of
    `classes` or a class folder merged into one (it names that one). Raises EditsError for a
    path that is not a file of the folder, a class that is neither, or fewer than two classes
    left.
    """
    out = manifest.copy()
    out[GIVEN_CLASS] = out["class_name"]
    if not edits.given:
        return out, classes
    known = set(out["path"])
    for option, paths, source in (
        ("exclude", edits.exclude, edits.exclude_file),
        ("relabel", list(edits.relabel), edits.relabel_file),
    ):
        missing = [p for p in paths if p not in known]
        if missing:
            raise EditsError(
                f"{option} file {source!r} names {len(missing)} path(s) that are not files of "
                f"the image folder {manifest.attrs.get('root', '')!r}: {_listed(missing)}; give "
                "paths relative to it as the manifest names them (e.g. cats/img1.jpg)",
                option,
            )
    # A class folder merged into another names its merged class: the audit may suggest it, and
    # its command adds the merge.
    named = {c: c for c in classes}
    folders = out.loc[out["folder"] != ""].drop_duplicates("folder")
    pairs = zip(folders["folder"], folders["class_name"], strict=True)
    named.update((f, c) for f, c in pairs if c in classes)
    unknown = sorted(set(edits.relabel.values()) - set(named))
    if unknown:
        raise EditsError(
            f"relabel file {edits.relabel_file!r} names {len(unknown)} class(es) that are not "
            f"classes of the image folder: {_listed(map(repr, unknown))}; use one of: "
            f"{', '.join(classes)} (a class folder merged into another also names it)",
            "relabel",
        )
    relabelled = out["path"].isin(edits.relabel.keys())
    new = {p: named[c] for p, c in edits.relabel.items()}
    out.loc[relabelled, "class_name"] = out.loc[relabelled, "path"].map(new)
    out.loc[out["path"].isin(edits.exclude), "status"] = EXCLUDED
    ok = out["status"] == OK
    kept = sorted(out.loc[ok, "class_name"].unique())
    if len(kept) < 2:
        raise EditsError(
            f"after the exclude and relabel files, {len(kept)} class(es) have usable images "
            f"({', '.join(kept) or 'none'}): exclude fewer files, or relabel fewer out of a class",
            "exclude" if edits.exclude else "relabel",
        )
    index = {c: i for i, c in enumerate(kept)}
    out["label"] = out["class_name"].map(index).where(ok, -1).fillna(-1).astype("int64")
    return out, kept


def relabel_moves(manifest: pd.DataFrame, edits: DataEdits) -> dict[str, int]:
    """{"old -> new": files} of the files an edited manifest relabelled, most first."""
    moved = manifest[manifest["path"].isin(edits.relabel.keys())]
    moved = moved[moved[GIVEN_CLASS] != moved["class_name"]]
    pairs = (moved[GIVEN_CLASS] + " -> " + moved["class_name"]).value_counts()
    return {pair: int(n) for pair, n in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))}
