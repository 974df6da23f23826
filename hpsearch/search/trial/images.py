"""The decoded images as every trial reaches them: one copy per node.

On a node that holds the cache file, each trial memory-maps `images.npy` read-only: every
process shares the page cache's one copy, and nothing goes through Ray's object store. Only a
trial on a node without the file fetches the pixels, once per node, from an `ImageServer` actor
that the driver starts next to the cache when it joins a cluster; Ray's object store then holds
the copy that node needs.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@dataclass(frozen=True)
class CacheFile:
    """Where a memory-mapped image array lives, and enough to tell it is the same file."""

    path: str
    offset: int
    shape: tuple[int, ...]
    dtype: str
    size: int  # bytes of the whole file

    def matches(self) -> bool:
        try:
            return os.path.getsize(self.path) == self.size
        except OSError:
            return False

    def open(self) -> np.ndarray:
        return np.memmap(
            self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape
        )


def _cache_file(array: np.ndarray) -> CacheFile | None:
    """The file `array` maps in full, if it is such a memory map (np.load(mmap_mode='r'))."""
    if not isinstance(array, np.memmap) or getattr(array, "filename", None) is None:
        return None
    if not isinstance(array.base, mmap.mmap):
        return None  # a slice or a copy of a map: not the whole array of the file
    return CacheFile(
        path=str(array.filename),
        offset=int(array.offset),
        shape=tuple(array.shape),
        dtype=array.dtype.str,
        size=os.path.getsize(array.filename),
    )


class ImageSource:
    """uint8 [N, 3, S, S] images that pickle as a file reference when they are a memory map of
    a cache file, so a trial reopens the file instead of receiving a copy; `array()` resolves
    them in the process that uses them."""

    def __init__(self, array: np.ndarray, *, server: Any = None) -> None:
        self._array: np.ndarray | None = array
        self._file = _cache_file(array)
        self._server = server  # ImageServer handle, for nodes without the file

    @property
    def file(self) -> CacheFile | None:
        return self._file

    def with_server(self, server: Any) -> ImageSource:
        out = ImageSource.__new__(ImageSource)
        out._array, out._file, out._server = self._array, self._file, server
        return out

    def __getstate__(self) -> dict[str, Any]:
        if self._file is not None:
            return {"file": self._file, "server": self._server}
        return {"array": self._array}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._file = state.get("file")
        self._server = state.get("server")
        self._array = state.get("array")

    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = self._resolve()
        return self._array

    def _resolve(self) -> np.ndarray:
        assert self._file is not None
        if self._file.matches():
            return self._file.open()
        if self._server is None:
            raise FileNotFoundError(
                f"the image cache {self._file.path} is not on this node, and no image server "
                "was started (the driver starts one when it joins a cluster with --address): "
                "build the cache on this node with `hpsearch prepare`, or run with --address"
            )

        (ref,) = ray.get(self._server.images.remote())
        return ray.get(ref)


def start_image_server(source: ImageSource) -> Any:
    """An actor on this node that serves `source`'s pixels to nodes without the cache file;
    they are put into the object store only on the first request."""

    here = ray.get_runtime_context().get_node_id()
    server = ray.remote(num_cpus=0)(ImageServer).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)
    )
    return server.remote(source.file)


class ImageServer:
    """Holds the driver node's cache file; `images()` returns a reference to its pixels in the
    object store, put there once, on first use."""

    def __init__(self, file: CacheFile) -> None:
        self.file, self.ref = file, None

    def images(self) -> list[Any]:

        if self.ref is None:
            self.ref = ray.put(np.ascontiguousarray(self.file.open()))
        return [self.ref]  # in a list: the caller gets the reference, not a copy
