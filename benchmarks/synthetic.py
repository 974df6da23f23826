"""Learnable synthetic photos for a learning-curve table whose ranking is not saturated.

Ten classes: five shapes (disc, square, triangle, cross, ring) x two fills (solid, striped).
Everything else is nuisance, drawn at random per image: the background (a smooth colour field),
the shape's colour, position, size and rotation, the stripes' angle and period, two to four
smaller clutter shapes of any class drawn before and after it (so they may cover part of it), a
blur, and sensor-like noise. Colour carries no class information; the shape is clear at 48 px
but only just at 16 px, and the stripes of a small shape fade into a solid fill when the image
is shrunk, so the classes overlap and no configuration gets them all right.

`python -m benchmarks.synthetic FOLDER` writes 2,000 images (200 per class, 48 x 48 JPEGs) as
an image folder, `FOLDER/<shape>_<fill>/<index>.jpg`; the same seed writes the same images.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("disc", "square", "triangle", "cross", "ring")
FILLS = ("solid", "striped")
CLASSES = tuple(f"{shape}_{fill}" for shape in SHAPES for fill in FILLS)
SIZE = 48  # px written; a table records them at 16 (data.image_size)
# Channel levels: the subject is bright on a dark background (its dark stripes are dark too);
# clutter takes any colour, so a bright piece of clutter can pass for part of the subject.
DARK, BRIGHT, ANY = (0, 110), (140, 255), (0, 255)
SUBJECT, CLUTTER = (0.28, 0.45), (0.06, 0.14)  # radii as fractions of the side
TILT = math.radians(15)  # spread of a shape's rotation (upright on average)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple]:
    """The outline of a square, triangle or cross of radius `r`, rotated by `angle`."""
    if shape == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    else:  # cross: arms a third of its width
        t = 1 / 3
        pts = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t)]
        pts += [(-1, t), (-1, -t), (-t, -t)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if shape in ("disc", "ring"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if shape == "ring":
            h = r * 0.55
            draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=0)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=255)
    return mask


def _stripes(size: int, rng: np.random.Generator) -> np.ndarray:
    """A 0/1 stripe pattern of random angle and period (6-9 px at 48 px: 2-3 px at 16)."""
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(6.0, 9.0)
    yy, xx = np.mgrid[0:size, 0:size]
    phase = (xx * math.cos(angle) + yy * math.sin(angle)) / period + rng.uniform(0, 1)
    return (phase % 1.0 < 0.5).astype(np.float32)


def _colour(rng: np.random.Generator, levels: tuple[int, int]) -> np.ndarray:
    """A random colour, each channel in `levels` (a random hue at a chosen brightness)."""
    return rng.integers(levels[0], levels[1] + 1, 3).astype(np.float32)


def _paint(
    img: np.ndarray,
    label: int,
    rng: np.random.Generator,
    *,
    radius: tuple[float, float],
    levels: tuple[int, int],
) -> None:
    """Draw one shape of class `label` into `img` (float32 H x W x 3), in place: its colour's
    channels in `levels`, a striped one's other stripes dark."""
    size = img.shape[0]
    shape, fill = CLASSES[label].split("_")
    r = rng.uniform(*radius) * size
    cx, cy = rng.uniform(r * 0.6, size - r * 0.6, 2)  # may reach past the edge a little
    mask = np.asarray(_mask(shape, size, cx, cy, r, rng.normal(0, TILT)), np.float32)
    mask = mask[..., None] / 255.0
    colour = _colour(rng, levels)
    if fill == "striped":
        stripes = _stripes(size, rng)[..., None]
        paint = stripes * colour + (1 - stripes) * _colour(rng, DARK)
    else:
        paint = np.broadcast_to(colour, img.shape)
    img[:] = mask * paint + (1 - mask) * img


def photo(label: int, seed: int, size: int = SIZE) -> Image.Image:
    """One image of class `label` (an index into CLASSES); `seed` draws all of its nuisance."""
    rng = np.random.default_rng(seed)
    cells = int(rng.integers(2, 5))
    field = rng.integers(DARK[0], DARK[1] + 1, (cells, cells, 3), dtype=np.uint8)
    background = Image.fromarray(field).resize((size, size), Image.Resampling.BICUBIC)
    img = np.asarray(background, np.float32).copy()
    clutter = int(rng.integers(1, 4))
    before = int(rng.integers(0, clutter + 1))
    for _ in range(before):
        _paint(img, int(rng.integers(len(CLASSES))), rng, radius=CLUTTER, levels=ANY)
    _paint(img, label, rng, radius=SUBJECT, levels=BRIGHT)
    for _ in range(clutter - before):
        _paint(img, int(rng.integers(len(CLASSES))), rng, radius=CLUTTER, levels=ANY)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    noise = rng.normal(0, rng.uniform(4, 16), (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(out, np.float32) + noise, 0, 255).astype(np.uint8))


def write_photos(folder: str | Path, *, images: int = 2000, seed: int = 0) -> Path:
    """Write `images` photos, the classes in turn, as `folder/<class>/<index>.jpg`. Images
    already there are kept (an interrupted call resumes; the same seed draws the same ones)."""
    folder = Path(folder)
    for name in CLASSES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i in range(images):
        label = i % len(CLASSES)
        path = folder / CLASSES[label] / f"{i:05d}.jpg"
        if not path.exists():
            photo(label, seed * 1_000_003 + i).save(path, quality=92)
    return folder


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.synthetic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("folder", type=Path, help="where to write the image folder")
    p.add_argument("--images", type=int, default=2000, help="how many (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="draws every image (default 0)")
    args = p.parse_args(argv)
    print(write_photos(args.folder, images=args.images, seed=args.seed))


if __name__ == "__main__":
    main()
