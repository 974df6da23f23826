"""Decode one shard of image files into a uint8 array, the way the seed's transforms saw them.

`decode_shard` is pure (paths in, array and per-file errors out), picklable and free of
torch, so a process pool or a Ray task can run it. Each image goes through the same
geometry as torchvision's `Resize(S)` + `CenterCrop(S)` on a PIL image (bilinear,
antialiased when shrinking), with two additions: EXIF orientation is applied (as
`ImageOps.exif_transpose` would) and large JPEGs are decoded at a reduced scale, which
keeps the shorter side >= S so the final resize still shrinks. Unlike the seed's
`convert("RGB")`, 16-bit images are scaled rather than clipped and transparent pixels
become white rather than whatever colour they hide.

Reduced-scale JPEG decoding: a plain JPEG (YCbCr or greyscale, markers that parse, ends
with its EOI marker) that can shrink by at least 1/8 is decoded by libjpeg-turbo
(`simplejpeg`) at the smallest scale m/8, m = 1..7, that keeps its shorter side >= S:
the inverse DCT then computes only m x m of each 8 x 8 block, and the resize, which
only computes the S x S pixels the centre crop keeps, starts from the smaller picture.
PIL's draft mode offers only 1/2, 1/4 and 1/8, which does nothing for the seed's
500 x 375 photos at 227 px (5/8 here). Every other file (PNG, CMYK or truncated JPEGs,
a JPEG that is not shrunk, anything `simplejpeg` refuses) takes the PIL path, which
raises what PIL raises, so the errors of bad files are PIL's as before.

This is also where every file's content is checked: a file that cannot be decoded
(truncated, not an image, too large, unreadable) gets an error string instead of
pixels, so nothing has to be decoded twice.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import simplejpeg
from PIL import ExifTags, Image, UnidentifiedImageError

# Bump when the decoded pixels change (geometry, colour handling): it is part of the
# cache fingerprint, so old caches are not reused by mistake. 2: JPEGs decoded at m/8.
DECODE_VERSION = 2

# Error strings are "<reason>: <detail>"; reasons contain no ": ", so callers can group
# files by reason with `split_error`.
REASON_EMPTY = "empty file (0 bytes)"
REASON_NOT_IMAGE = "not an image PIL can identify"
REASON_CORRUPT = "truncated or corrupt image data"
REASON_TOO_LARGE = "over PIL's decompression-bomb pixel limit"
REASON_PERMISSION = "permission denied"
REASON_VANISHED = "file disappeared during the scan"
REASON_UNREADABLE = "unreadable image"

# The table of ImageOps.exif_transpose; applied after the resize, on S-sized pixels.
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_HAS_ALPHA = {"RGBA", "LA", "PA", "RGBa", "La"}


def split_error(error: str) -> tuple[str, str]:
    """Split an error string of `decode_shard` into (reason, detail)."""
    reason, _, detail = error.partition(": ")
    return reason, detail


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after torchvision's `Resize(size)`: shorter side to `size`."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: 16-bit scaled (not clipped), alpha over white."""
    if img.mode.startswith("I"):
        # 16-bit greyscale: keep the high byte; Image.convert would clip at 255.
        high = np.asarray(img).astype(np.int64) >> 8
        img = Image.fromarray(np.clip(high, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _HAS_ALPHA:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _exif_orientation(tiff: bytes) -> int | None:
    """Tag 0x0112 of IFD0 of an EXIF block, None when absent; ValueError when it does not parse."""
    order = {b"II*\x00": "little", b"MM\x00*": "big"}.get(tiff[:4])
    if order is None or len(tiff) < 8:
        raise ValueError("not a TIFF header")
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        raise ValueError("IFD0 outside the block")
    for i in range(int.from_bytes(tiff[ifd : ifd + 2], order)):
        entry = tiff[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        if len(entry) < 12:
            raise ValueError("IFD0 cut short")
        if int.from_bytes(entry[0:2], order) == ExifTags.Base.Orientation:
            kind, count = int.from_bytes(entry[2:4], order), int.from_bytes(entry[4:8], order)
            if (kind, count) != (3, 1):  # one SHORT
                raise ValueError("unusual orientation entry")
            return int.from_bytes(entry[8:10], order)
    return None


def jpeg_orientation(data: bytes) -> int | None:
    """The EXIF orientation (1 when none) of a JPEG whose markers read cleanly up to the
    scan; None for anything PIL might read differently (not a JPEG, junk between markers,
    several EXIF blocks, an XMP block without EXIF orientation, multi-picture files)."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    pos, end = 2, len(data)
    orientation: int | None = None
    exif = xmp = False
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: the headers are done
            if orientation is None:
                return None if xmp else 1  # PIL would take an XMP block's orientation
            return orientation
        if marker in (0xD8, 0xD9, 0x00, 0xFF) or 0xD0 <= marker <= 0xD7:
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(segment) != length - 2:
            return None
        if marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
            if exif:
                return None  # a second EXIF block: PIL concatenates them
            exif = True
            try:
                orientation = _exif_orientation(segment[6:])
            except ValueError:
                return None
        elif marker == 0xE1 and segment.startswith(b"http://ns.adobe.com/xap/1.0/\x00"):
            xmp = True
        elif marker == 0xE2 and segment.startswith(b"MPF\x00"):
            return None  # MPO: PIL opens it with another plug-in
        pos += 2 + length
    return None


_scratch = threading.local()


def _scratch_buffer(nbytes: int) -> np.ndarray:
    """A per-thread buffer for simplejpeg's output, reused from image to image: fresh memory
    for every image cost as much kernel time (page faults) as a fifth of the decode."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.size < nbytes:
        buf = _scratch.buf = np.empty(max(nbytes, 1 << 20), dtype=np.uint8)
    return buf[:nbytes]


def dct_eighths(width: int, height: int, size: int) -> int:
    """The smallest m in 1..8 with min(width, height) * m / 8 >= size (8: no reduction)."""
    return next((m for m in range(1, 8) if min(width, height) * m >= 8 * size), 8)


def _crop_offsets(new_w: int, new_h: int, size: int) -> tuple[int, int]:
    """(left, top) of torchvision's CenterCrop of a new_w x new_h picture."""
    return int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))


def _orient_and_crop(out: Image.Image, orientation: int, size: int) -> np.ndarray:
    """Apply the EXIF orientation to a resized picture, then torchvision's CenterCrop."""
    method = _ORIENTATION.get(orientation)
    if method is not None:
        out = out.transpose(method)
    left, top = _crop_offsets(out.width, out.height, size)
    out = out.crop((left, top, left + size, top + size))
    return np.asarray(out, dtype=np.uint8)[:, :, :3].transpose(2, 0, 1)


def _decode_jpeg_scaled(data: bytes, image_size: int) -> np.ndarray | None:
    """[3, S, S] from a plain JPEG decoded at m/8 scale; None where the PIL path must do it."""
    orientation = jpeg_orientation(data)
    if orientation is None or not data.endswith(b"\xff\xd9"):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    limit = Image.MAX_IMAGE_PIXELS
    if colorspace not in ("YCbCr", "Gray") or (limit is not None and width * height > limit):
        return None  # CMYK / YCCK: PIL's conversion; too large: PIL's error
    m = dct_eighths(width, height, image_size)
    if m == 8:
        return None  # no reduction: the PIL path is as fast and equal to torchvision
    scaled_w, scaled_h = math.ceil(width * m / 8), math.ceil(height * m / 8)
    try:  # strict: a recoverable libjpeg warning (corrupt data) is an error here
        pixels = simplejpeg.decode_jpeg(
            data,
            colorspace="RGBX",
            min_width=scaled_w,
            min_height=scaled_h,
            buffer=_scratch_buffer(scaled_w * scaled_h * 4),
        )
    except ValueError:
        return None
    if pixels.shape != (scaled_h, scaled_w, 4):
        return None
    # Shares the scratch buffer: everything below makes new pixels before this returns.
    img = Image.frombuffer("RGBX", (scaled_w, scaled_h), pixels, "raw", "RGBX", 0, 1)
    # The whole original picture, in scaled pixels (the last row and column are partial).
    box_w, box_h = width * m / 8, height * m / 8
    new_w, new_h = resized_size(width, height, image_size)
    if orientation != 1:  # rare: resize all of it, then orient and crop as the PIL path
        out = img.resize((new_w, new_h), Image.Resampling.BILINEAR, box=(0, 0, box_w, box_h))
        return _orient_and_crop(out, orientation, image_size)
    # Resize only the part CenterCrop keeps: the same filter positions (up to float
    # rounding: a pixel in thousands moves by 1 level), fewer pixels computed.
    left, top = _crop_offsets(new_w, new_h, image_size)
    sx, sy = box_w / new_w, box_h / new_h
    box = (
        left * sx,
        top * sy,
        min((left + image_size) * sx, box_w),
        min((top + image_size) * sy, box_h),
    )
    out = img.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8)[:, :, :3].transpose(2, 0, 1)


def _decode_pil(path: str, image_size: int) -> np.ndarray:
    with Image.open(path) as img:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        width, height = img.size
        # JPEG only (other formats return None): decode at 1/2, 1/4 or 1/8 scale while
        # both sides stay >= image_size; `box` is the original image in reduced pixels.
        drafted = img.draft("RGB", (image_size, image_size))
        box = drafted[1] if drafted else None
        img.load()
        rgb = _to_rgb(img)
    new_w, new_h = resized_size(width, height, image_size)
    out = rgb.resize((new_w, new_h), Image.Resampling.BILINEAR, box=box)
    return _orient_and_crop(out, orientation, image_size)


def decode_image(path: str, image_size: int) -> np.ndarray:
    """Decode one file to a uint8 array [3, S, S]; raises what PIL raises."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:3] == b"\xff\xd8\xff":
        pixels = _decode_jpeg_scaled(data, image_size)
        if pixels is not None:
            return pixels
    return _decode_pil(path, image_size)


def _error(exc: BaseException) -> str:
    if isinstance(exc, PermissionError):
        reason = REASON_PERMISSION
    elif isinstance(exc, FileNotFoundError):
        reason = REASON_VANISHED
    elif isinstance(exc, Image.DecompressionBombError):
        reason = REASON_TOO_LARGE
    elif isinstance(exc, UnidentifiedImageError):
        reason = REASON_NOT_IMAGE
    elif isinstance(exc, (OSError, SyntaxError, ValueError, EOFError)):
        reason = REASON_CORRUPT
    else:
        reason = REASON_UNREADABLE
    return f"{reason}: {type(exc).__name__}: {exc}"


def decode_shard(
    paths: list[str], image_size: int, out: np.ndarray | None = None
) -> tuple[np.ndarray, list[str | None]]:
    """Decode `paths` to uint8 [n, 3, S, S]; a file that fails gets zeros and an error string.

    Errors never propagate: error[i] is None for a decoded file, else
    "<reason>: <detail>" (see `split_error`). `out`, when given, is filled and returned
    (a buffer reused from shard to shard spares the kernel fresh pages).
    """
    shape = (len(paths), 3, image_size, image_size)
    if out is None:
        images = np.zeros(shape, dtype=np.uint8)
    elif out.shape != shape or out.dtype != np.uint8:
        raise ValueError(f"out is {out.dtype}{list(out.shape)}, expected uint8{list(shape)}")
    else:
        images = out
    errors: list[str | None] = []
    for i, path in enumerate(paths):
        try:
            images[i] = decode_image(path, image_size)
        except Exception as exc:  # a bad file must never stop the build
            images[i] = 0
            errors.append(_error(exc))
        else:
            errors.append(None)
    return images, errors
