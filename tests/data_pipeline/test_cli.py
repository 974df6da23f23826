"""`hpsearch prepare` on top of `prepare` and `format_summary`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hpsearch.search.cli import main


@pytest.fixture
def src(tmp_path: Path, make_folder) -> Path:
    root = make_folder(tmp_path / "photos", {"People": 6, "Celebrities": 4, "Food": 6})
    (root / "Food" / "broken.jpg").write_text("not an image")
    return root


def _prepare(src: Path, cache: Path, *args: str) -> int:
    return main(
        ["prepare", str(src), "--image-size", "16", "--cache", str(cache), "--workers", "1", *args]
    )


def test_prepare_prints_the_summary(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert (
        _prepare(
            src,
            tmp_path / "cache",
            "--test-fraction",
            "0.25",
            "--folds",
            "3",
            "--merge",
            "People=Celebrities",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "16 usable of 17 files" in out and "2 classes" in out and "3 stratified folds" in out
    assert "Celebrities -> People" in out and re.search(r"People\s+10\n", out)
    assert "not an image PIL can identify  (e.g. Food/broken.jpg)" in out
    assert str(tmp_path / "cache") in out and "built: decoded 17 images" in out

    assert (
        _prepare(
            src,
            tmp_path / "cache",
            "--test-fraction",
            "0.25",
            "--folds",
            "3",
            "--merge",
            "People=Celebrities",
        )
        == 0
    )
    assert "reused: nothing decoded" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--merge", "People=Celebs"],
            "'Celebs'] that do not exist; the classes found are: Celebrities, Food, People",
        ),
        (["--test-fraction", "1.5"], "between 0 and 1"),
        (["--folds", "1"], "K >= 2"),
        (["--folds", "5"], "into 5 folds: 'Celebrities' (4)"),
    ],
)
def test_bad_input_exits_2_saying_what_to_change(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args, message
) -> None:
    assert _prepare(src, tmp_path / "cache", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("hpsearch prepare: error:") and message in err
    assert not (tmp_path / "cache").exists()  # rejected before anything was decoded


def test_missing_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _prepare(tmp_path / "nope", tmp_path / "cache") == 2
    assert "does not exist" in capsys.readouterr().err


def test_prepare_does_not_import_torch(src: Path, tmp_path: Path) -> None:
    """Decoding needs PIL, simplejpeg and numpy; torch (data_pipeline.batches) took seconds of
    every `hpsearch prepare`. (The split imports scikit-learn: the library that owns it.)"""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from hpsearch.search.cli import main\n"
        f"code = main(['prepare', {str(src)!r}, '--image-size', '16', '--cache', "
        f"{str(tmp_path / 'cache')!r}, '--workers', '2', '--test-fraction', '0.25', '--val-fraction', '0.25'])\n"
        "heavy = ('torch', 'torchvision')\n"
        "print(code, sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stdout + out.stderr
    assert "decoding" in out.stderr  # the progress bar is still shown


def test_prepared_cache_reuses_its_split_without_scikit_learn(src: Path, tmp_path: Path) -> None:
    """Every `hpsearch run` re-prepares its cache: with the same files and split options the
    stored split is taken as it is (the same rows as splitting again), not recomputed."""
    import subprocess
    import sys

    from hpsearch.data_pipeline import prepare

    cache_root = tmp_path / "cache"
    first, _ = prepare(
        src, image_size=16, cache_root=cache_root, test_fraction=0.25, val_fraction=0.25, folds=3
    )
    code = (
        "import sys\n"
        "from hpsearch.data_pipeline import prepare\n"
        f"c, s = prepare({str(src)!r}, image_size=16, cache_root={str(cache_root)!r}, "
        "test_fraction=0.25, val_fraction=0.25, folds=3, progress=False)\n"
        "print(s.split_written, 'sklearn' in sys.modules, ''.join(c.split.astype(str).tolist()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    written, sklearn, split = out.stdout.split()
    assert (written, sklearn) == ("False", "False"), out.stderr
    assert split == "".join(first.split.astype(str).tolist())
    # Another option is a new split (and with it scikit-learn), the stored one is not kept.
    again, summary = prepare(
        src, image_size=16, cache_root=cache_root, test_fraction=0.35, val_fraction=0.25
    )
    assert summary.split_written and (again.split == "test").sum() > (first.split == "test").sum()


def test_a_merged_class_name_must_be_a_folder_name(src: Path, tmp_path: Path, capsys) -> None:
    """A merged class becomes a folder of materialize_split's layout: no paths."""
    assert _prepare(src, tmp_path / "cache", "--merge", "../evil=Celebrities") == 2
    assert "merged class name '../evil'" in capsys.readouterr().err


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, resource.RLIM_INFINITY))
from hpsearch.search.cli import main
sys.exit(main(["prepare", sys.argv[1], "--image-size", "64", "--cache", sys.argv[2],
               "--workers", "1", "--test-fraction", "0.25", "--val-fraction", "0.25"]))
"""


def test_a_cache_that_does_not_fit_stops_naming_the_path_and_size(src: Path, tmp_path: Path):
    """A write error while building (here the file size limit, as a full disk would) exits 2
    with the path and the size needed, and leaves no cache a later run would take as built."""
    import subprocess
    import sys

    script = tmp_path / "full.py"
    script.write_text(FULL_DISK)
    cache = tmp_path / "cache"
    out = subprocess.run(
        [sys.executable, str(script), str(src), str(cache)], capture_output=True, text=True
    )
    assert out.returncode == 2, out.stderr
    assert "writing the cache" in out.stderr and "needs about" in out.stderr, out.stderr
    assert str(cache) in out.stderr and "--cache DIR" in out.stderr
    assert not list(cache.rglob("meta.json")) and not list(cache.rglob("decoded.parquet"))


def test_a_build_that_cannot_fit_is_refused_before_decoding(
    src: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from collections import namedtuple

    from hpsearch.data_pipeline import cache as cache_mod

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 1000))
    assert (
        _prepare(src, tmp_path / "cache", "--test-fraction", "0.25", "--val-fraction", "0.25") == 2
    )
    err = capsys.readouterr().err
    assert "needs about" in err and "only 0.0 MB are free" in err and "--cache DIR" in err
