"""The reduced-scale JPEG path of the decode: which files take it, and what it reads."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from hpsearch.data_pipeline import decode
from hpsearch.data_pipeline.decode import dct_eighths, decode_image, jpeg_orientation


def _jpeg(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def _photo(width: int = 80, height: int = 60) -> Image.Image:
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return exif


def test_dct_eighths_keeps_the_shorter_side_at_least_the_size() -> None:
    assert dct_eighths(500, 375, 227) == 5  # 234 x 312 px: 1.5x less to decode and resize
    assert dct_eighths(640, 480, 227) == 4 and dct_eighths(640, 480, 64) == 2
    assert dct_eighths(375, 500, 227) == 5  # portrait: the same
    assert dct_eighths(40, 30, 28) == 8 and dct_eighths(30, 30, 30) == 8  # no reduction
    for w, h, s in [(500, 375, 227), (97, 61, 13), (1000, 750, 100)]:
        m = dct_eighths(w, h, s)
        assert min(w, h) * m >= 8 * s and (m == 1 or min(w, h) * (m - 1) < 8 * s)


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("exif_order", ["little", "big"])
def test_jpeg_orientation_reads_what_pil_reads(orientation: int, exif_order: str) -> None:
    exif = _exif(orientation)
    exif.endian = "<" if exif_order == "little" else ">"
    data = _jpeg(_photo(), exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as img:
        assert img.getexif().get(ExifTags.Base.Orientation, 1) == orientation
    assert jpeg_orientation(data) == orientation


def test_jpeg_orientation_refuses_what_pil_might_read_differently() -> None:
    plain = _jpeg(_photo())
    assert jpeg_orientation(plain) == 1
    assert jpeg_orientation(_jpeg(_photo(), exif=Image.Exif().tobytes())) == 1  # no tag
    assert jpeg_orientation(b"\x89PNG\r\n\x1a\n") is None
    assert jpeg_orientation(plain[:20]) is None  # cut inside the headers
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    assert jpeg_orientation(_jpeg(_photo(), xmp=xmp)) is None  # PIL reads the XMP tag
    junk = plain[:2] + b"\x00\x00" + plain[2:]
    assert jpeg_orientation(junk) is None


def test_exif_orientation_is_applied_on_the_reduced_path_as_on_pils(tmp_path: Path) -> None:
    # 80 x 60 at 24 px: decoded at 3/8 by the fast path; PIL's path (forced) at 1/2.
    img = _photo()
    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}.jpg"
        path.write_bytes(_jpeg(img, exif=_exif(orientation).tobytes(), quality=95))
        fast = decode_image(str(path), 24)
        slow = decode._decode_pil(str(path), 24)
        assert fast.shape == slow.shape == (3, 24, 24)
        assert np.abs(fast.astype(int) - slow.astype(int)).mean() < 3, orientation


def test_files_the_fast_path_cannot_take_go_to_pil(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: list[str] = []
    real = decode._decode_pil

    def pil(path: str, size: int) -> np.ndarray:
        used.append(Path(path).name)
        return real(path, size)

    monkeypatch.setattr(decode, "_decode_pil", pil)
    photo = _photo(160, 120)
    (tmp_path / "plain.jpg").write_bytes(_jpeg(photo))
    (tmp_path / "progressive.jpg").write_bytes(_jpeg(photo, progressive=True))
    (tmp_path / "gray.jpg").write_bytes(_jpeg(photo.convert("L")))
    (tmp_path / "cmyk.jpg").write_bytes(_jpeg(photo.convert("CMYK")))
    (tmp_path / "no_eoi.jpg").write_bytes(_jpeg(photo)[:-2])
    photo.save(tmp_path / "photo.png")
    (tmp_path / "small.jpg").write_bytes(_jpeg(_photo(40, 30)))  # 30 px: no reduction at 28
    for name in ["plain", "progressive", "gray", "cmyk", "photo", "small"]:
        ext = "png" if name == "photo" else "jpg"
        out = decode_image(str(tmp_path / f"{name}.{ext}"), 28 if name == "small" else 40)
        assert out.dtype == np.uint8 and out.shape[0] == 3
    with pytest.raises(OSError, match="truncated"):  # PIL's error, as before
        decode_image(str(tmp_path / "no_eoi.jpg"), 40)
    assert used == ["cmyk.jpg", "photo.png", "small.jpg", "no_eoi.jpg"]
    gray = decode_image(str(tmp_path / "gray.jpg"), 40)
    assert np.array_equal(gray[0], gray[1]) and np.array_equal(gray[0], gray[2])


def test_too_large_jpegs_get_pils_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(_jpeg(_photo(160, 120)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 160 * 120 // 4)  # 2x over: PIL refuses
    with pytest.raises(Image.DecompressionBombError):
        decode_image(str(path), 40)
