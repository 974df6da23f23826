"""Scanning and validating every kind of bad or unusual file, through `prepare`."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpsearch.data_pipeline import DatasetError, format_summary, load_cache, prepare, scan

SIZE = 16
# The module, not the function `data_pipeline.scan` that shadows it as a package attribute.
scan_mod = importlib.import_module("hpsearch.data_pipeline.scan")


@pytest.fixture(scope="module")
def prepared(bad_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    cache, summary = prepare(
        bad_folder,
        image_size=SIZE,
        cache_root=tmp_path_factory.mktemp("cache"),
        workers=1,
        progress=False,
    )
    manifest = pd.read_parquet(cache.path / "manifest.parquet").set_index("path")
    return cache, summary, manifest


def _image(prepared, path: str) -> np.ndarray:
    cache, _, manifest = prepared
    return (
        np.asarray(cache.images[manifest.loc[path, "row"]]).transpose(1, 2, 0).astype(int)
    )  # H, W, C


def test_every_bad_kind_gets_its_reason(prepared, bad_kinds: dict[str, str]) -> None:
    _, _, manifest = prepared
    for path, reason in bad_kinds.items():
        assert path in manifest.index, path
        row = manifest.loc[path]
        assert row["reason"] == reason, path
        assert row["status"] == ("skipped" if reason else "ok"), path
        assert (row["row"] >= 0) == (reason == ""), path
        assert (row["label"] >= 0) == (reason == ""), path


def test_good_images_are_all_usable_and_only_they(prepared, bad_kinds: dict[str, str]) -> None:
    cache, summary, manifest = prepared
    usable = set(manifest.index[manifest["status"] == "ok"])
    good = {f"{c}/img_{i:03d}.jpg" for c in ("cats", "dogs") for i in range(5)}
    assert usable == good | {p for p, r in bad_kinds.items() if not r}
    assert len(cache) == len(usable) == sum(summary.per_class.values())
    assert summary.classes == ["cats", "dogs"]  # no class from .ipynb_checkpoints or empty/


def test_summary_counts_skipped_files_by_reason(prepared, bad_kinds: dict[str, str]) -> None:
    _, summary, _ = prepared
    expected = pd.Series([r for r in bad_kinds.values() if r]).value_counts().to_dict()
    assert summary.skipped == expected
    text = format_summary(summary)
    for reason in expected:
        assert reason in text
    assert "cats/truncated.jpg" in text


def test_meta_lists_skipped_files(prepared) -> None:
    cache, summary, _ = prepared
    skipped = {s["path"]: s["reason"] for s in cache.meta["skipped"]}
    assert skipped["cats/truncated.jpg"] == "truncated or corrupt image data"
    assert len(skipped) == sum(summary.skipped.values()) == cache.meta["counts"]["skipped"]


def test_unusual_modes_are_converted_to_rgb(prepared) -> None:
    assert np.allclose(_image(prepared, "cats/cmyk.jpg"), (0, 255, 255), atol=3)
    # 16-bit: 0x8000 is half scale, not clipped to white.
    assert np.allclose(_image(prepared, "cats/sixteen_bit.png"), 128, atol=1)
    assert np.allclose(_image(prepared, "cats/gray.jpg"), 77, atol=2)
    assert np.array_equal(
        _image(prepared, "cats/rgba.png"), np.full((SIZE, SIZE, 3), 255)
    )  # alpha over white
    assert np.array_equal(
        _image(prepared, "cats/palette.png"), np.broadcast_to((10, 200, 30), (SIZE, SIZE, 3))
    )
    assert np.array_equal(
        _image(prepared, "cats/palette_transparent.png"), np.full((SIZE, SIZE, 3), 255)
    )
    assert np.array_equal(
        _image(prepared, "cats/one_pixel.png"), np.broadcast_to((10, 200, 30), (SIZE, SIZE, 3))
    )


def test_exif_orientation_is_applied(prepared) -> None:
    img = _image(prepared, "cats/rotated.jpg")
    red, blue = np.array([255, 0, 0]), np.array([0, 0, 255])
    # Shown 20 x 40 with red on top; the centre crop holds red rows over blue rows.
    assert np.abs(img[1] - red).max() < 40 and np.abs(img[-2] - blue).max() < 40
    assert np.abs(img[1:-1, 0] - img[1:-1, -1]).max() < 40  # left and right columns alike


def test_permission_denied_is_skipped(
    tmp_path: Path, make_folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_folder(tmp_path / "src", {"a": 4, "b": 4})

    def locked_open(fp, *args, **kwargs):
        if str(fp).endswith("a/img_001.jpg"):
            raise PermissionError(13, "Permission denied", str(fp))
        return open(fp, *args, **kwargs)

    # The decode reads each file with open() (root could read a chmod 000 file).
    monkeypatch.setattr(
        importlib.import_module("hpsearch.data_pipeline.decode"), "open", locked_open, raising=False
    )
    cache, summary = prepare(
        root,
        image_size=SIZE,
        cache_root=tmp_path / "c",
        workers=1,
        test_fraction=0.25,
        val_fraction=0.25,
        progress=False,
    )
    assert summary.skipped == {"permission denied": 1}
    assert len(cache) == 7


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads chmod 000 files")
def test_chmod_000_is_skipped(tmp_path: Path, make_folder) -> None:
    root = make_folder(tmp_path / "src", {"a": 4, "b": 4})
    (root / "a" / "img_001.jpg").chmod(0)
    _, summary = prepare(
        root,
        image_size=SIZE,
        cache_root=tmp_path / "c",
        workers=1,
        test_fraction=0.25,
        val_fraction=0.25,
        progress=False,
    )
    assert summary.skipped == {"permission denied": 1}


def test_empty_root_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "src" / "cats").mkdir(parents=True)
    (tmp_path / "src" / "cats" / "notes.txt").write_text("x")
    with pytest.raises(
        DatasetError, match=r"no image files.*1 class folder.*cats.*extension not in"
    ):
        scan(tmp_path / "src")
    with pytest.raises(DatasetError, match="does not exist"):
        scan(tmp_path / "missing")


def test_one_class_is_an_error_naming_what_was_found(tmp_path: Path, make_folder) -> None:
    root = make_folder(tmp_path / "src", {"only": 3})
    with pytest.raises(DatasetError, match=r"at least two classes.*found 1.*'only': 3"):
        prepare(root, image_size=SIZE, cache_root=tmp_path / "c", progress=False)


def test_class_whose_images_all_fail_to_decode_is_dropped(tmp_path: Path, make_folder) -> None:
    root = make_folder(tmp_path / "src", {"a": 4})
    (root / "b").mkdir()
    for name in ("fake1.jpg", "fake2.jpg", "fake3.jpg"):
        (root / "b" / name).write_text("not a jpeg")
    with pytest.raises(DatasetError, match=r"found 1 .*3 not an image PIL can identify"):
        prepare(
            root,
            image_size=SIZE,
            cache_root=tmp_path / "c",
            workers=1,
            test_fraction=0.25,
            val_fraction=0.25,
            progress=False,
        )


def test_listing_order_does_not_change_the_manifest(
    tmp_path: Path, make_folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_folder(tmp_path / "src", {"a": 6, "b": 6})
    first = scan(root)
    real = scan_mod._list_dir
    rng = np.random.default_rng(1)
    monkeypatch.setattr(
        scan_mod,
        "_list_dir",
        lambda path: list(rng.permutation(np.array(real(path), dtype=object))),
    )
    pd.testing.assert_frame_equal(scan(root), first)


def test_symlink_loop_is_cut(tmp_path: Path, make_folder) -> None:
    root = make_folder(tmp_path / "src", {"a": 2, "b": 2})
    os.symlink(root / "a", root / "a" / "loop")
    manifest = scan(root).set_index("path")
    assert manifest.loc["a/loop/", "reason"] == "symlink loop, folder already scanned"
    assert (manifest["status"] == "ok").sum() == 4


def test_load_cache_of_incomplete_folder_says_to_prepare(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="hpsearch prepare"):
        load_cache(tmp_path)


def test_image_extensions_are_image_folders() -> None:
    """The copied list must stay torchvision's, or hpsearch and ImageFolder would disagree
    on which files are images."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    assert scan_mod.IMG_EXTENSIONS == IMG_EXTENSIONS


def test_extension_check_ignores_case(tmp_path: Path) -> None:
    for name in ("0/a.JPG", "0/b.Png", "1/c.jpeg", "1/d.TIFF", "1/e.txt"):
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x")
    manifest = scan(tmp_path).set_index("path")
    assert manifest.loc["1/e.txt", "reason"] == scan_mod.REASON_EXTENSION
    assert (manifest.drop(index="1/e.txt")["reason"] == "").all()


def test_scan_does_not_import_torchvision() -> None:
    """`hpsearch run` with a built cache scans the folder; torchvision's import takes seconds."""
    import subprocess
    import sys

    code = (
        "import sys, tempfile, pathlib\n"
        "from hpsearch.data_pipeline import scan\n"
        "d = pathlib.Path(tempfile.mkdtemp())\n"
        "for c in 'ab': (d / c).mkdir(); (d / c / 'x.png').write_bytes(b'x')\n"
        "scan(d)\n"
        "print('torchvision' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
