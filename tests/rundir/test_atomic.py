"""The atomic writer: a failed write leaves the old file (or none) and no temporary file;
the file and its folder are synced."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpsearch.rundir import (
    atomic_path,
    atomic_write,
    write_json,
    write_npy,
    write_parquet,
    write_text,
)


def _half_then(exc: BaseException):
    def write(f) -> None:
        f.write(b"new " * 512)
        f.flush()
        raise exc

    return write


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file(tmp_path: Path, exc: BaseException):
    target = tmp_path / "table.parquet"
    target.write_bytes(b"old contents")
    with pytest.raises(type(exc)):
        atomic_write(target, _half_then(exc))
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


@pytest.mark.parametrize("exc", [ValueError("bad row"), KeyboardInterrupt()])
def test_a_failed_write_of_a_new_file_leaves_nothing(tmp_path: Path, exc: BaseException):
    with pytest.raises(type(exc)):
        atomic_write(tmp_path / "new.json", _half_then(exc))
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_cleans_up_on_interrupt(tmp_path: Path):
    target = tmp_path / "images.npy"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".images.npy.tmp-")
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == [target.name]


def _record_fsync(monkeypatch: pytest.MonkeyPatch) -> list[os.stat_result]:
    synced: list[os.stat_result] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@pytest.mark.parametrize("how", ["bytes", "callable", "path"])
def test_the_file_and_its_folder_are_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
):
    synced = _record_fsync(monkeypatch)
    target = tmp_path / "versions.json"
    if how == "bytes":
        atomic_write(target, "{}")
    elif how == "callable":
        atomic_write(target, lambda f: f.write(b"{}"))
    else:
        with atomic_path(target) as tmp:
            tmp.write_text("{}")
    assert target.read_text() == "{}"
    files = [s for s in synced if stat.S_ISREG(s.st_mode)]
    folders = [s for s in synced if stat.S_ISDIR(s.st_mode)]
    assert any(_same(s, target.stat()) for s in files)  # the rename keeps the inode
    assert any(_same(s, tmp_path.stat()) for s in folders)
    # the file before the rename, the folder after it
    assert synced.index(files[0]) < synced.index(folders[0])


def test_writers_round_trip(tmp_path: Path):
    df = pd.DataFrame({"trial_id": ["a", "b"], "epoch": [1, 2], "loss": [0.5, None]})
    write_parquet(df, tmp_path / "steps.parquet")
    back = pd.read_parquet(tmp_path / "steps.parquet")
    pd.testing.assert_frame_equal(back, df)
    assert back.index.equals(pd.RangeIndex(2))  # written without the index

    write_text(tmp_path / "a.txt", "é")
    assert (tmp_path / "a.txt").read_bytes() == "é".encode()
    write_json(tmp_path / "a.json", {"k": [1]}, indent=1)
    assert (tmp_path / "a.json").read_text() == '{\n "k": [\n  1\n ]\n}'
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    write_npy(tmp_path / "a.npy", array)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), array)
    with pytest.raises(ValueError):
        write_npy(tmp_path / "b.npy", np.array([{}], dtype=object))  # no pickles
    assert not list(tmp_path.glob(".*"))


def test_importing_rundir_touches_no_disk_and_no_heavy_modules(tmp_path: Path):
    import subprocess
    import sys

    code = (
        "import json, sys, hpsearch.rundir\n"
        "names = {m.split('.')[0] for m in sys.modules} | {'.'.join(m.split('.')[:2]) for m in sys.modules}\n"
        "print(json.dumps(sorted(names & {'torch', 'ray', 'pydantic', 'hpsearch.search',"
        " 'hpsearch.analysis', 'hpsearch.data_pipeline', 'hpsearch.models'})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
    assert list(tmp_path.iterdir()) == []


KILLED_WRITER = """
import sys, time
import pandas as pd
from hpsearch.rundir import write_parquet

real = pd.DataFrame.to_parquet

def slow(self, f, **kw):  # half a table, then the process is killed mid-write
    f.write(b"PAR1" + b"x" * 4096)
    f.flush()
    print("writing", flush=True)
    time.sleep(60)

pd.DataFrame.to_parquet = slow
write_parquet(pd.DataFrame({"trial_id": ["new"], "v": [2.0]}), sys.argv[1])
"""


def test_a_process_killed_while_writing_a_table_leaves_the_old_one(tmp_path: Path):
    """SIGKILL in the middle of writing trials.parquet (no Python cleanup can run): the table
    before it is still there, whole and readable."""
    import signal
    import subprocess
    import sys

    import pandas as pd

    path = tmp_path / "trials.parquet"
    old = pd.DataFrame({"trial_id": ["old"], "v": [1.0]})
    write_parquet(old, path)
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    pd.testing.assert_frame_equal(pd.read_parquet(path), old)
    # what the killed writer left is a hidden temporary file beside it, never the table
    leftovers = [
        p.name for p in tmp_path.iterdir() if p.name not in ("trials.parquet", "writer.py")
    ]
    assert all(name.startswith(".") for name in leftovers), leftovers
