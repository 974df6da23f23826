"""Small image folders for the data_pipeline tests: clean ones, and one with every bad kind."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth, photo-like RGB image (blurred random colours), deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height greyscale pixels but holds almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


@pytest.fixture(autouse=True)
def _cache_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a test does may write to the user's ~/.cache."""
    monkeypatch.setenv("HPSEARCH_CACHE", str(tmp_path_factory.mktemp("default-cache")))


@pytest.fixture
def make_folder() -> Callable[..., Path]:
    """make_folder(root, {"cats": 6, "dogs": 5}, size=(40, 30)) writes a clean image folder."""

    def make(
        root: Path, counts: dict[str, int], *, size: tuple[int, int] = (40, 30), seed: int = 0
    ) -> Path:
        for c, (name, n) in enumerate(sorted(counts.items())):
            (root / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = size if i % 3 else size[::-1]  # some portrait images too
                ext = "png" if i % 4 == 3 else "jpg"
                photo(w, h, seed * 10_000 + c * 100 + i).save(root / name / f"img_{i:03d}.{ext}")
        return root

    return make


# Every bad or unusual kind the scan must handle, with the reason it gets ("" = usable).
BAD_KINDS = {
    "cats/zero.jpg": "empty file (0 bytes)",
    "cats/truncated.jpg": "truncated or corrupt image data",
    "cats/text.jpg": "not an image PIL can identify",
    "cats/bomb.png": "over PIL's decompression-bomb pixel limit",
    "cats/broken_link.jpg": "broken symlink",
    "cats/.DS_Store": "hidden file",
    "cats/._img_000.jpg": "hidden file",
    "cats/notes.txt": "extension not in torchvision's IMG_EXTENSIONS",
    ".DS_Store": "hidden file",
    ".ipynb_checkpoints/": "hidden folder, not scanned",
    "readme.jpg": "not inside a class folder",
    "empty/": "empty class folder (no image files)",
    "cats/cmyk.jpg": "",
    "cats/sixteen_bit.png": "",
    "cats/gray.jpg": "",
    "cats/rgba.png": "",
    "cats/palette.png": "",
    "cats/palette_transparent.png": "",
    "cats/one_pixel.png": "",
    "cats/rotated.jpg": "",
    "cats/nested/deeper/img.jpg": "",
}


@pytest.fixture(scope="session")
def bad_kinds() -> dict[str, str]:
    return dict(BAD_KINDS)


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of good images, plus one file or folder of each kind in BAD_KINDS."""
    root = tmp_path_factory.mktemp("bad") / "photos"
    for c, name in enumerate(["cats", "dogs"]):
        (root / name).mkdir(parents=True)
        for i in range(5):
            photo(40, 30, c * 100 + i).save(root / name / f"img_{i:03d}.jpg")
    cats = root / "cats"
    (cats / "zero.jpg").write_bytes(b"")
    full = (cats / "img_000.jpg").read_bytes()
    photo(64, 64, 7).save(cats / "whole.jpg", quality=95)
    whole = (cats / "whole.jpg").read_bytes()
    (cats / "truncated.jpg").write_bytes(whole[: len(whole) * 7 // 10])
    (cats / "whole.jpg").unlink()
    (cats / "text.jpg").write_text("this is not a JPEG\n")
    png_header_only(cats / "bomb.png", 20_000, 20_000)
    os.symlink(root / "no" / "such" / "file.jpg", cats / "broken_link.jpg")
    (cats / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (cats / "._img_000.jpg").write_bytes(full[:100])
    (cats / "notes.txt").write_text("notes\n")
    (root / ".DS_Store").write_bytes(b"\x00")
    (root / ".ipynb_checkpoints").mkdir()
    photo(40, 30, 99).save(root / ".ipynb_checkpoints" / "img.jpg")
    photo(40, 30, 98).save(root / "readme.jpg")
    (root / "empty").mkdir()
    Image.new("CMYK", (24, 20), (255, 0, 0, 0)).save(cats / "cmyk.jpg", quality=95)
    Image.fromarray(np.full((20, 24), 0x8000, dtype=np.uint16)).save(cats / "sixteen_bit.png")
    Image.new("L", (24, 20), 77).save(cats / "gray.jpg", quality=95)
    Image.new("RGBA", (24, 20), (0, 0, 0, 0)).save(cats / "rgba.png")
    pal = Image.new("P", (24, 20), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.save(cats / "palette.png")
    pal.save(cats / "palette_transparent.png", transparency=1)
    Image.new("RGB", (1, 1), (10, 200, 30)).save(cats / "one_pixel.png")
    # Stored 40 wide x 20 high, left half red, right half blue; EXIF 6 shows it rotated
    # 90 degrees clockwise: 20 wide x 40 high, red on top.
    rotated = np.zeros((20, 40, 3), dtype=np.uint8)
    rotated[:, :20] = (255, 0, 0)
    rotated[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    Image.fromarray(rotated).save(cats / "rotated.jpg", quality=95, exif=exif)
    (cats / "nested" / "deeper").mkdir(parents=True)
    photo(40, 30, 55).save(cats / "nested" / "deeper" / "img.jpg")
    return root
