"""Decode one shard of image files into a uint8 array, the way the seed's transforms saw them.

`decode_shard` is pure (paths in, array and per-file errors out), picklable and free of
torch, so a process pool or a Ray task can run it. Each image goes through the same
geometry as torchvision's `Resize(S)` + `CenterCrop(S)` on a PIL image (bilinear,
antialiased when shrinking), with two additions: EXIF orientation is applied (as
`ImageOps.exif_transpose` would) and large JPEGs are decoded at a reduced scale (PIL's
draft mode), which keeps the shorter side >= S so the final resize still shrinks. Unlike
the seed's `convert("RGB")`, 16-bit images are scaled rather than clipped and
transparent pixels become white rather than whatever colour they hide.

This is also where every file's content is checked: a file that cannot be decoded
(truncated, not an image, too large, unreadable) gets an error string instead of
pixels, so nothing has to be decoded twice.
"""

from __future__ import annotations

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

# Bump when the decoded pixels change (geometry, colour handling): it is part of the
# cache fingerprint, so old caches are not reused by mistake.
DECODE_VERSION = 1

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
_SWAPS_AXES = {5, 6, 7, 8}
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


def decode_image(path: str, image_size: int) -> np.ndarray:
    """Decode one file to a uint8 array [3, S, S]; raises what PIL raises."""
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
    method = _ORIENTATION.get(orientation)
    if method is not None:
        out = out.transpose(method)
        if orientation in _SWAPS_AXES:
            new_w, new_h = new_h, new_w
    # torchvision's CenterCrop offsets.
    top = int(round((new_h - image_size) / 2.0))
    left = int(round((new_w - image_size) / 2.0))
    out = out.crop((left, top, left + image_size, top + image_size))
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1)


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


def decode_shard(paths: list[str], image_size: int) -> tuple[np.ndarray, list[str | None]]:
    """Decode `paths` to uint8 [n, 3, S, S]; a file that fails gets zeros and an error string.

    Errors never propagate: error[i] is None for a decoded file, else
    "<reason>: <detail>" (see `split_error`).
    """
    images = np.zeros((len(paths), 3, image_size, image_size), dtype=np.uint8)
    errors: list[str | None] = []
    for i, path in enumerate(paths):
        try:
            images[i] = decode_image(path, image_size)
        except Exception as exc:  # a bad file must never stop the build
            errors.append(_error(exc))
        else:
            errors.append(None)
    return images, errors
