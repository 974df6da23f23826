"""The experiment files shipped with hpsearch: `experiments/*.yaml`, installed as package data
of the `experiments` package and found through `importlib.resources`, so `hpsearch demo`,
`hpsearch validate demo` and `hpsearch run experiments/demo.yaml` work from any directory after
`pip install`, not only from a checkout of the repository.

Pure standard library: the CLI resolves a file before pydantic, Ray or torch are imported.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from importlib.resources import as_file, files
from importlib.resources.abc import Traversable
from pathlib import Path, PurePath

PACKAGE = "hpsearch.experiments"
# The folders a packaged experiment is written under: `experiments/demo.yaml` (as the docs and
# earlier versions name them) and `hpsearch/experiments/demo.yaml` (where the file lives).
FOLDERS = (("experiments",), ("hpsearch", "experiments"))
SUFFIX = ".yaml"

# Resources that are not plain files (a zipped install) are extracted once per process and
# removed at exit.
_extracted = contextlib.ExitStack()
atexit.register(_extracted.close)


def packaged_experiments() -> dict[str, Traversable]:
    """Every packaged experiment, name (file name without `.yaml`) -> resource, sorted by
    name. Empty if the `experiments` package is not installed."""
    try:
        root = files(PACKAGE)
    except ModuleNotFoundError:
        return {}
    found = {
        entry.name.removesuffix(SUFFIX): entry
        for entry in root.iterdir()
        if entry.name.endswith(SUFFIX) and entry.is_file()
    }
    return dict(sorted(found.items()))


def packaged_name(path: str | os.PathLike[str]) -> str | None:
    """The packaged experiment `path` names, or None: `demo`, `demo.yaml` and
    `experiments/demo.yaml` all name `demo` (whether or not it exists)."""
    parts = PurePath(path).parts
    if parts[:-1] in FOLDERS and parts[-1].endswith(SUFFIX):
        return parts[-1].removesuffix(SUFFIX)
    if len(parts) == 1 and parts[0] not in ("", ".", ".."):
        return parts[0].removesuffix(SUFFIX)
    return None


def packaged_path(name: str) -> Path:
    """A filesystem path of the packaged experiment `name` (KeyError if there is none)."""
    resource = packaged_experiments()[name]
    if isinstance(resource, Path):
        return resource
    return _extracted.enter_context(as_file(resource))


def resolve_experiment(path: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """The experiment file the CLI reads for `path`: `path` itself if it is a file; else the
    packaged experiment it names (see `packaged_name`), so a folder `demo/` in the current
    directory does not hide the packaged `demo`; else `path` unchanged, so the loader reports
    it as missing (and lists the packaged names)."""
    if Path(path).is_file():
        return path
    name = packaged_name(path)
    if name is not None and name in packaged_experiments():
        return packaged_path(name)
    return path


def packaged_names_hint() -> str:
    """One line for error messages: which experiment names work without a file."""
    names = list(packaged_experiments())
    if not names:
        return "no packaged experiments are installed"
    return "packaged experiments (usable by name from any directory): " + ", ".join(names)
