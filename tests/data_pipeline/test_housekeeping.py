"""`hpsearch cache list` / `clean`: old caches go, a cache in use by a running process stays."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from hpsearch.search.cli import main

PREPARE = """
import sys, time
from hpsearch.data_pipeline import prepare
prepare(sys.argv[1], image_size=int(sys.argv[2]), cache_root=sys.argv[3], workers=1,
        test_fraction=0.25, val_fraction=0.25, progress=False)
print("ready", flush=True)
time.sleep(float(sys.argv[4]))
"""


def _prepare(script: Path, src: Path, size: int, root: Path, hold: float = 0.0):
    return subprocess.Popen(
        [sys.executable, str(script), str(src), str(size), str(root), str(hold)],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_clean_removes_old_caches_and_never_one_in_use(tmp_path: Path, make_folder, capsys):
    src = make_folder(tmp_path / "photos", {"a": 8, "b": 8})
    root = tmp_path / "cache"
    script = tmp_path / "prepare.py"
    script.write_text(PREPARE)
    for size in (16, 24):
        assert _prepare(script, src, size, root).wait(timeout=120) == 0
    assert main(["cache", "list", "--cache", str(root)]) == 0
    out = capsys.readouterr().out
    assert "16 px" in out and "24 px" in out and "2 cache(s)" in out and "16" in out
    caches = sorted(p for p in root.iterdir() if p.is_dir())
    old = time.time() - 40 * 86400
    for cache in caches:
        os.utime(cache / "in-use.lock", (old, old))  # both last used 40 days ago
    # one of them is opened again by a process that is still running
    holder = _prepare(script, src, 24, root, hold=60)
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert main(["cache", "clean", "--older-than", "30", "--cache", str(root)]) == 0
        out = capsys.readouterr().out
        assert "removed" in out
        left = sorted(p.name for p in root.iterdir() if p.is_dir())
        assert len(left) == 1 and "24px" in left[0]  # in use (and just used): kept
        assert main(["cache", "clean", "--all", "--cache", str(root)]) == 0
        assert "kept: in use by a running process" in capsys.readouterr().out
        assert len([p for p in root.iterdir() if p.is_dir()]) == 1
    finally:
        holder.kill()
        holder.wait()
    assert main(["cache", "clean", "--all", "--cache", str(root)]) == 0
    assert not [p for p in root.iterdir() if p.is_dir()]
    assert main(["cache", "clean", "--cache", str(root)]) == 2  # says which to remove
    assert "--older-than DAYS or --all" in capsys.readouterr().err
