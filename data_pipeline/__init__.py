"""Image folder -> manifest -> stratified split and folds -> decode-once uint8 cache -> batches.

`prepare(src, image_size=...)` does it all and returns a `Cache` and a summary;
`load_cache(path)` reopens a cache; `Batches` iterates normalised mini-batches of it.
Importing this package touches no disk and no GPU.
"""

from __future__ import annotations

from data_pipeline.batches import Batches, crop_flip
from data_pipeline.cache import Cache, build_cache, load_cache, mean_std
from data_pipeline.decode import decode_image, decode_shard
from data_pipeline.prepare import PrepareSummary, default_cache_root, format_summary, prepare
from data_pipeline.scan import DatasetError, assign_labels, fingerprint, scan
from data_pipeline.split import assign_folds, assign_split, materialize_split

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
