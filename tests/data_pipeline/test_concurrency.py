"""Several `hpsearch prepare` / runs of one image folder at once, with different settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpsearch.data_pipeline import load_cache

SETTINGS = {
    "plain": [],
    "merged": ["--merge", "ab=a,b"],
    "folds3": ["--folds", "3"],
    "merged_folds4": ["--merge", "ab=a,b", "--folds", "4"],
}
CHECK = """
import json, sys
from hpsearch.data_pipeline import prepare
merge = json.loads(sys.argv[3])
cache, s = prepare(sys.argv[1], image_size=16, cache_root=sys.argv[2], workers=1,
                   test_fraction=0.2, val_fraction=0.2, folds=int(sys.argv[4]),
                   merge=merge or None, progress=True)
# what this process holds must be what its own settings give, whatever the others wrote since
print(json.dumps({"classes": cache.classes, "folds": cache.num_folds,
                  "fold_values": sorted(set(cache.fold.tolist())),
                  "decoded": s.decoded, "path": str(cache.path),
                  "split": cache.split.tolist(), "labels": cache.labels.tolist()}))
"""


@pytest.mark.slow  # over 3 s: make test runs it, make check does not
def test_four_prepares_of_one_folder_at_once_each_get_their_own_settings(
    tmp_path: Path, make_folder
) -> None:
    """Four processes with different merge and fold settings started together on a new cache
    root: before the lock, two died on a shard file another had merged away, and the split
    files were rewritten under each other's feet."""
    src = make_folder(tmp_path / "photos", {"a": 10, "b": 10, "c": 10})
    root = tmp_path / "cache"
    script = tmp_path / "check.py"
    script.write_text(CHECK)
    procs = {}
    for name, args in SETTINGS.items():
        merge = {"ab": ["a", "b"]} if "--merge" in args else {}
        folds = int(args[args.index("--folds") + 1]) if "--folds" in args else 0
        procs[name] = subprocess.Popen(
            [sys.executable, str(script), str(src), str(root), json.dumps(merge), str(folds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}:\n{err}"
        results[name] = json.loads(out.strip().splitlines()[-1])
    assert len({r["path"] for r in results.values()}) == 1  # one cache folder: pixels shared
    assert sum(r["decoded"] for r in results.values()) == 30  # decoded once, by one of them
    assert results["plain"]["classes"] == ["a", "b", "c"] and results["plain"]["folds"] == 0
    assert results["merged"]["classes"] == ["ab", "c"]
    assert results["folds3"]["folds"] == 3 and results["folds3"]["fold_values"] == [-1, 0, 1, 2]
    assert results["merged_folds4"]["classes"] == ["ab", "c"]
    assert results["merged_folds4"]["folds"] == 4
    # each process's labels and split are the ones its settings give when run alone
    for r in results.values():
        labels = np.array(r["labels"])
        assert labels.max() == len(r["classes"]) - 1
        assert {"train", "val", "test"} == set(r["split"])
    # and the cache on disk is complete and consistent afterwards
    last = load_cache(results["plain"]["path"])
    assert len(last.labels) == len(last.split) == 30
