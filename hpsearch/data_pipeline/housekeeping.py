"""Old caches: `hpsearch cache list` and `hpsearch cache clean`.

Every process that opens a cache through `prepare` (so every `run`, `resume`, `kfold` and
`final`) holds a shared lock on the cache's `in-use.lock` (POSIX `flock`) until it exits, and
touches the file: its mtime is the cache's last use. `clean` removes a cache only when it can
take that lock exclusively, so a cache in use by a running process is never removed.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from hpsearch.data_pipeline.cache import META

IN_USE = "in-use.lock"
_held: dict[str, int] = {}  # cache folder -> the open descriptor of its lock (process lifetime)


def build_lock_path(cache_dir: Path) -> Path:
    """The file `prepare` locks (filelock) while it builds or re-splits `cache_dir`."""
    return Path(cache_dir) / ".prepare.lock"


def mark_in_use(cache_dir: Path) -> None:
    """Hold a shared lock on `cache_dir` for the rest of this process, and record the use."""
    key = str(Path(cache_dir).resolve())
    if key in _held:
        os.utime(Path(key) / IN_USE)
        return
    path = Path(key) / IN_USE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.utime(path)
    _held[key] = fd


def _in_use(cache_dir: Path) -> bool:
    path = cache_dir / IN_USE
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


@dataclass(frozen=True)
class CacheInfo:
    path: Path
    source: str  # the image folder it was decoded from ("" when incomplete)
    image_size: int | None
    images: int | None
    bytes: int
    last_used: float  # epoch seconds: the last prepare/run that opened it (or its newest file)
    complete: bool
    in_use: bool

    @property
    def days_unused(self) -> float:
        return (time.time() - self.last_used) / 86400


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def list_caches(root: Path) -> list[CacheInfo]:
    """Every cache folder under `root` (complete or not), newest use first."""
    out = []
    for path in (
        sorted(p for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
    ):
        meta_file = path / META
        meta = {}
        if meta_file.exists():
            try:
                meta = json.loads(meta_file.read_text())
            except (OSError, ValueError):
                meta = {}
        if not meta and not (path / "building").exists():
            continue  # not a cache folder (e.g. a generated photo folder beside them)
        marker = path / IN_USE
        stamps = [marker.stat().st_mtime] if marker.exists() else [path.stat().st_mtime]
        out.append(
            CacheInfo(
                path=path,
                source=str(meta.get("source", "")),
                image_size=meta.get("image_size"),
                images=(meta.get("counts") or {}).get("images"),
                bytes=_size(path),
                last_used=max(stamps),
                complete=bool(meta),
                in_use=_in_use(path),
            )
        )
    return sorted(out, key=lambda c: -c.last_used)


def clean_caches(
    root: Path, *, older_than_days: float | None = None, everything: bool = False
) -> Iterator[tuple[CacheInfo, str]]:
    """Remove the caches unused for `older_than_days` (or all, `everything`) that no process
    is using; yields (cache, what was done) for each cache considered."""
    if older_than_days is None and not everything:
        raise ValueError("say which caches to remove: --older-than DAYS or --all")
    for cache in list_caches(root):
        if not everything and cache.days_unused < older_than_days:
            continue
        if cache.in_use:
            yield cache, "kept: in use by a running process"
            continue

        lock = FileLock(str(build_lock_path(cache.path)))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            yield cache, "kept: being built or split by a running process"
            continue
        try:
            shutil.rmtree(cache.path)
        finally:
            lock.release()
        yield cache, "removed"


def format_caches(caches: list[CacheInfo]) -> str:
    if not caches:
        return "no caches"
    rows = [("cache", "source", "size", "images", "on disk", "last used", "state")]
    for c in caches:
        when = dt.datetime.fromtimestamp(c.last_used).strftime("%Y-%m-%d %H:%M")
        state = "in use" if c.in_use else ("complete" if c.complete else "incomplete")
        rows.append(
            (
                c.path.name,
                c.source or "-",
                f"{c.image_size} px" if c.image_size else "-",
                str(c.images) if c.images is not None else "-",
                f"{c.bytes / 1e9:.2f} GB" if c.bytes >= 1e8 else f"{c.bytes / 1e6:.1f} MB",
                when,
                state,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)
