"""List an image folder the way torchvision's `ImageFolder` reads it, into a manifest.

A class is a first-level folder; its files are found recursively (symlinks followed,
loops cut) and kept when their extension is in torchvision's `IMG_EXTENSIONS`. Every
other entry gets a row too, with status "skipped" and the reason, so that nothing in
the folder is silently ignored. Listing reads no file content (only `stat`): a file's
pixels are checked when it is decoded into the cache (`decode.decode_shard`), which
marks the files it cannot decode in the same manifest. Unlike ImageFolder, entries whose
name starts with "." are skipped (".DS_Store", "._x.jpg" AppleDouble files, a
".ipynb_checkpoints" folder that ImageFolder would take for a class).

Manifest columns: path (relative, "/"-separated), folder (first-level folder), bytes,
mtime_ns, status ("ok" | "skipped"; `prepare` adds "excluded" for the files an exclude
file names, see `data_pipeline.edits`), reason, detail. Rows are sorted by path, so the
manifest never depends on the order the filesystem lists entries in.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from hpsearch.data_pipeline.decode import DECODE_VERSION, REASON_EMPTY

OK = "ok"
SKIPPED = "skipped"
EXCLUDED = "excluded"  # named in an exclude file (data_pipeline.edits): decoded, in no part

REASON_HIDDEN = "hidden file"
REASON_HIDDEN_FOLDER = "hidden folder, not scanned"
# torchvision.datasets.folder.IMG_EXTENSIONS, copied: importing torchvision takes seconds
# (it pulls in torch._dynamo), and `hpsearch run` with a built cache needs nothing else from
# it. tests/data_pipeline checks the two are equal.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
REASON_EXTENSION = "extension not in torchvision's IMG_EXTENSIONS"
REASON_OUTSIDE = "not inside a class folder"
REASON_EMPTY_CLASS = "empty class folder (no image files)"
REASON_BROKEN_LINK = "broken symlink"
REASON_NO_ACCESS = "cannot be listed or stat-ed"
REASON_LINK_LOOP = "symlink loop, folder already scanned"

COLUMNS = ["path", "folder", "bytes", "mtime_ns", "status", "reason", "detail"]


class DatasetError(ValueError):
    """The image folder or an option cannot be used; the message says what to change."""


def _row(
    path: str, folder: str, *, size: int = 0, mtime_ns: int = 0, reason: str = "", detail: str = ""
) -> dict:
    status = SKIPPED if reason else OK
    return dict(
        path=path,
        folder=folder,
        bytes=size,
        mtime_ns=mtime_ns,
        status=status,
        reason=reason,
        detail=detail,
    )


def _list_dir(path: str) -> list[os.DirEntry]:
    return list(os.scandir(path))


def _walk_class(root: Path, folder: str, rows: list[dict]) -> int:
    """Append one row per entry under root/folder; return how many image files were found."""
    found = 0
    seen: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        rel_dir = stack.pop()
        abs_dir = root / rel_dir
        try:
            st = abs_dir.stat()
            if (st.st_dev, st.st_ino) in seen:
                rows.append(_row(rel_dir + "/", folder, reason=REASON_LINK_LOOP))
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = _list_dir(str(abs_dir))
        except OSError as exc:
            rows.append(_row(rel_dir + "/", folder, reason=REASON_NO_ACCESS, detail=str(exc)))
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}"
            if entry.name.startswith("."):
                is_dir = entry.is_dir()
                reason = REASON_HIDDEN_FOLDER if is_dir else REASON_HIDDEN
                rows.append(_row(rel + ("/" if is_dir else ""), folder, reason=reason))
                continue
            try:
                st = entry.stat()  # follows symlinks, like ImageFolder's os.walk(followlinks=True)
            except FileNotFoundError as exc:
                reason = REASON_BROKEN_LINK if entry.is_symlink() else REASON_NO_ACCESS
                rows.append(_row(rel, folder, reason=reason, detail=str(exc)))
                continue
            except OSError as exc:
                rows.append(_row(rel, folder, reason=REASON_NO_ACCESS, detail=str(exc)))
                continue
            if entry.is_dir():
                stack.append(rel)
                continue
            if not entry.name.lower().endswith(IMG_EXTENSIONS):  # as ImageFolder checks
                reason = REASON_EXTENSION
            elif st.st_size == 0:
                reason = REASON_EMPTY
            else:
                reason = ""
                found += 1
            rows.append(_row(rel, folder, size=st.st_size, mtime_ns=st.st_mtime_ns, reason=reason))
    return found


def scan(root: str | os.PathLike) -> pd.DataFrame:
    """List `root` (one sub-folder per class) into a manifest DataFrame; reads no pixels.

    Raises DatasetError when `root` is not a folder or holds no image file in any class
    folder. `df.attrs["root"]` is the absolute root.
    """
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        what = "does not exist" if not root_path.exists() else "is not a folder"
        raise DatasetError(
            f"image folder {str(root)!r} {what}: pass a folder with one sub-folder per class"
        )
    root_path = root_path.resolve()
    rows: list[dict] = []
    try:
        entries = _list_dir(str(root_path))
    except OSError as exc:
        raise DatasetError(
            f"cannot list image folder {str(root_path)!r} ({exc}): check its permissions"
        ) from exc
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            is_dir = entry.is_dir()
            rows.append(
                _row(
                    name + ("/" if is_dir else ""),
                    "",
                    reason=REASON_HIDDEN_FOLDER if is_dir else REASON_HIDDEN,
                )
            )
        elif entry.is_dir():
            if _walk_class(root_path, name, rows) == 0:
                rows.append(_row(name + "/", name, reason=REASON_EMPTY_CLASS))
        else:
            rows.append(
                _row(
                    name,
                    "",
                    reason=REASON_BROKEN_LINK
                    if not entry.is_file() and entry.is_symlink()
                    else REASON_OUTSIDE,
                )
            )
    manifest = pd.DataFrame(rows, columns=COLUMNS).astype({"bytes": "int64", "mtime_ns": "int64"})
    manifest = manifest.sort_values("path", kind="stable", ignore_index=True)
    manifest.attrs["root"] = str(root_path)
    usable = manifest[manifest["status"] == OK]
    if usable.empty:
        raise DatasetError(
            f"no image files in class folders of {str(root_path)!r} ({_found(manifest)}): "
            f"expected ROOT/<class>/<image> with extensions {', '.join(IMG_EXTENSIONS)}"
        )
    return manifest


def _found(manifest: pd.DataFrame) -> str:
    folders = sorted(f for f in manifest["folder"].unique() if f)
    parts = [
        f"{len(folders)} class folder(s)" + (f": {', '.join(folders[:10])}" if folders else "")
    ]
    skipped = manifest[manifest["status"] != OK]
    if len(skipped):
        counts = skipped["reason"].value_counts()
        parts.append("skipped " + ", ".join(f"{n} {reason}" for reason, n in counts.items()))
    return "; ".join(parts)


def merge_map(folders: Sequence[str], merge: Mapping[str, Sequence[str]] | None) -> dict[str, str]:
    """Map each class folder to its final class name under `merge` ({NEW: [OLD, ...]})."""
    mapping = {f: f for f in folders}
    if not merge:
        return mapping
    found = set(folders)
    unknown = sorted({old for olds in merge.values() for old in olds} - found)
    if unknown:
        raise DatasetError(
            f"--merge names class folder(s) {unknown} that do not exist; "
            f"the classes found are: {', '.join(sorted(found))}"
        )
    merged_from: dict[str, str] = {}
    for new, olds in merge.items():
        if isinstance(olds, str):
            raise DatasetError(
                f"merge {new!r}: give a list of old class names, not the string {olds!r}"
            )
        for old in olds:
            if old in merged_from and merged_from[old] != new:
                raise DatasetError(
                    f"class {old!r} is merged into both {merged_from[old]!r} and {new!r}: pick one"
                )
            merged_from[old] = new
    chained = sorted(new for new in merge if new in merged_from and merged_from[new] != new)
    if chained:
        raise DatasetError(
            f"class(es) {chained} are both merge targets and merged away: merge each old class straight into its final name"
        )
    mapping.update(merged_from)
    return mapping


def assign_labels(
    manifest: pd.DataFrame, merge: Mapping[str, Sequence[str]] | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """Add `class_name` and `label` (index into the sorted final class names; -1 if unusable).

    Raises DatasetError for unknown names in `merge` or fewer than two usable classes.
    """
    folders = sorted(f for f in manifest["folder"].unique() if f)
    mapping = merge_map(folders, merge)
    out = manifest.copy()
    out["class_name"] = out["folder"].map(mapping).fillna("")
    ok = out["status"] == OK
    classes = sorted(out.loc[ok, "class_name"].unique())
    if len(classes) < 2:
        counts = out.loc[ok, "class_name"].value_counts()
        found = ", ".join(f"{c!r}: {n} image(s)" for c, n in counts.items()) or "no usable image"
        raise DatasetError(
            f"need at least two classes with usable images, found {len(classes)} ({found}; {_found(out)}): "
            "add a sub-folder per class" + (" or merge fewer classes" if merge else "")
        )
    index = {c: i for i, c in enumerate(classes)}
    out["label"] = out["class_name"].map(index).where(ok, -1).fillna(-1).astype("int64")
    return out, classes


def fingerprint(manifest: pd.DataFrame, image_size: int) -> str:
    """Hex digest of what the decoded cache depends on: the image files and the size."""
    files = manifest.loc[manifest["status"] == OK, ["path", "bytes", "mtime_ns"]]
    payload = json.dumps(
        dict(decode=DECODE_VERSION, size=int(image_size), files=files.values.tolist()),
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def slug(name: str) -> str:
    """A name safe for a cache folder."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "images"
