"""The one atomic writer: a reader (or a run resumed after a crash or power loss) sees the old
file or the new one, never half of one. Temporary names start with a dot, in the target's
folder (a rename is only atomic within one filesystem)."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; best effort where directories cannot be synced."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


@contextmanager
def _staged(path: Path) -> Iterator[Path]:
    """Yield a temporary path; on success rename it onto `path`, on any failure remove it."""
    tmp = _tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """For writers that need a real path (np.lib.format.open_memmap, torch.save(path)):
    write to the yielded temporary path; it is synced and renamed onto `path` on success."""
    with _staged(Path(path)) as tmp:
        yield tmp
        fd = os.open(tmp, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(
    path: str | os.PathLike[str], data: bytes | str | Callable[[BinaryIO], Any]
) -> None:
    """Replace `path` with `data` (str as UTF-8), or with what `data(file)` writes."""
    with _staged(Path(path)) as tmp, open(tmp, "xb") as f:
        if callable(data):
            data(f)
        else:
            f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> None:
    atomic_write(path, text.encode(encoding))


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> None:
    atomic_write(path, json.dumps(obj, indent=indent))


def write_parquet(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    atomic_write(path, lambda f: df.to_parquet(f, index=False))


def write_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:

    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))
