"""Image folder -> manifest -> stratified split and folds -> decode-once uint8 cache -> batches.

`prepare(src, image_size=...)` does it all and returns a `Cache` and a summary;
`load_cache(path)` reopens a cache; `Batches` iterates normalised mini-batches of it.
Importing this package touches no disk and no GPU, and imports no torch: `Batches` and
`crop_flip` (torch) are loaded on first use, so `hpsearch prepare` starts without it.
`data_pipeline.predict` (`hpsearch predict`: an exported model in onnxruntime, decoded as
`prepare` decodes) is imported on its own, and never imports torch either.
"""

from __future__ import annotations

from hpsearch.data_pipeline.cache import Cache, build_cache, load_cache, mean_std
from hpsearch.data_pipeline.decode import decode_image, decode_shard
from hpsearch.data_pipeline.prepare import (
    PrepareSummary,
    default_cache_root,
    format_summary,
    prepare,
)
from hpsearch.data_pipeline.scan import DatasetError, assign_labels, fingerprint, scan
from hpsearch.data_pipeline.split import assign_folds, assign_split, materialize_split

__all__ = [
    "Batches",
    "Cache",
    "DatasetError",
    "PrepareSummary",
    "assign_folds",
    "assign_labels",
    "assign_split",
    "build_cache",
    "crop_flip",
    "decode_image",
    "decode_shard",
    "default_cache_root",
    "fingerprint",
    "format_summary",
    "load_cache",
    "materialize_split",
    "mean_std",
    "prepare",
    "scan",
]

_LAZY = {"Batches", "crop_flip"}  # data_pipeline.batches imports torch (seconds)


def __getattr__(name: str):
    if name in _LAZY:
        # lazy: torch takes ~2.5 s to import; only building or training a model needs it
        from hpsearch.data_pipeline.batches import Batches, crop_flip

        return {"Batches": Batches, "crop_flip": crop_flip}[name]
    raise AttributeError(f"module 'data_pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
