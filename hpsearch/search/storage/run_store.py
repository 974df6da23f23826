"""A run directory wherever it is stored, behind one interface: a local folder, or the local
working copy of a run in object storage (`s3://`, `gs://`). A verb opens its run once and then
calls `upload` / `download` unconditionally: for a local run both do nothing, so no verb tests
where its run lives."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hpsearch.search.storage.remote import RemoteRun, checkout, open_run


@dataclass(frozen=True)
class RunStore:
    path: Path  # where the driver reads and writes: the run folder, or its working copy
    remote: RemoteRun | None = None  # the run in object storage; None for a local run

    @classmethod
    def checkout(cls, location: str | os.PathLike[str]) -> RunStore:
        """An existing run; a stored one's working copy is brought up to date first."""
        path, remote = checkout(location)
        return cls(path, remote)

    @classmethod
    def of_working_copy(cls, path: str | os.PathLike[str]) -> RunStore:
        """The run whose folder (or working copy) `path` is, without downloading anything."""
        return cls(Path(path), open_run(path))

    @property
    def shown(self) -> str:
        """The run as the user names it: its URI, or its folder."""
        return str(self.remote.uri) if self.remote is not None else str(self.path)

    def tune_path(self, *parts: str) -> str | Path:
        """Where Ray Tune reads and writes the run (or a folder of it, e.g. the k-fold's): the
        URI of a stored run, the folder of a local one."""
        if self.remote is not None:
            return str(self.remote.uri.child(*parts)) if parts else str(self.remote.uri)
        return self.path.joinpath(*parts)

    def upload(self, names: Iterable[str]) -> None:
        """Store these files of the working copy (paths relative to the run); local: nothing."""
        if self.remote is not None:
            self.remote.upload(list(names))

    def download(self, under: str = "", *, results_only: bool = False) -> None:
        """Bring the working copy up to date with the stored run; local: nothing."""
        if self.remote is not None:
            self.remote.download(under, results_only=results_only)
