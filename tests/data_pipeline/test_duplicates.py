"""Near-duplicates in a decoded cache: planted copies (resized up and down, re-saved as JPEG)
of real digits and of photo-like images are found, pair for pair, and nothing else is."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFilter
from sklearn.datasets import load_digits

from hpsearch.data_pipeline import duplicates
from hpsearch.data_pipeline.decode import decode_image
from hpsearch.data_pipeline.duplicates import (
    DEFAULT_MAX_DISTANCE,
    ImageHashes,
    duplicate_groups,
    find_duplicates,
    hash_images,
    perceptual_hashes,
)

# copy kind: (scale of the written file, format)
COPIES = {"up 1.5x": (1.5, "png"), "down 0.7x": (0.7, "png"), "jpeg q75": (1.0, "jpg")}


def photo(seed: int, width: int = 96, height: int = 72) -> Image.Image:
    """Photo-like RGB: smooth colour fields, a few shapes, blur and sensor-like noise."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        box = (x0, y0, x0 + int(rng.integers(10, 40)), y0 + int(rng.integers(10, 40)))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(1.0))
    noise = rng.integers(-8, 9, (height, width, 3))
    return Image.fromarray(
        np.clip(np.asarray(img, dtype=np.int64) + noise, 0, 255).astype(np.uint8)
    )


def write_copy(img: Image.Image, kind: str, path: Path) -> Path:
    """`img` written as another file the way a duplicate arises: resized, or re-saved."""
    scale, fmt = COPIES[kind]
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    out = path.with_suffix("." + fmt)
    img.resize(size, Image.Resampling.BICUBIC).save(out, quality=75)
    return out


def plant(
    tmp_path: Path, originals: list[Image.Image], which: list[int], kinds: list[str], size: int
) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """Decode the originals and, after them, a copy of each of `which` per kind, at `size` px;
    return the images and the pairs that must be found (copies of one image pair up too)."""
    rows, families = [], {i: [i] for i in which}
    for i, img in enumerate(originals):
        img.save(tmp_path / f"{i}.png")
        rows.append(decode_image(str(tmp_path / f"{i}.png"), size))
    for kind in kinds:
        for i in which:
            # the copy is made from the image as the cache holds it (the decoded pixels)
            held = Image.fromarray(rows[i].transpose(1, 2, 0))
            path = write_copy(held, kind, tmp_path / f"{i}-copy{list(COPIES).index(kind)}")
            families[i].append(len(rows))
            rows.append(decode_image(str(path), size))
    expected = {(a, b) for f in families.values() for a in f for b in f if a < b}
    return np.stack(rows), expected


def pair_set(pairs: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(pairs["a"].tolist(), pairs["b"].tolist(), strict=True))


@pytest.fixture(scope="module")
def digits() -> list[Image.Image]:
    """The first 300 of scikit-learn's real 8x8 digit scans, as the demo writes them."""
    scans = np.clip(load_digits().images[:300] * (255.0 / 16.0), 0, 255).astype(np.uint8)
    return [Image.fromarray(scan, mode="L") for scan in scans]


@pytest.mark.parametrize(
    ("size", "kinds"),
    [(32, ["up 1.5x", "down 0.7x", "jpeg q75"]), (16, ["up 1.5x", "jpeg q75"])],
)
def test_planted_copies_of_real_digits_are_found_and_nothing_else(
    tmp_path: Path, digits: list[Image.Image], size: int, kinds: list[str]
) -> None:
    which = list(range(3, 300, 25))  # 12 digits of every class
    images, expected = plant(tmp_path, digits, which, kinds, size)
    pairs = find_duplicates(images)
    assert pair_set(pairs) == expected
    assert list(pairs.columns) == ["a", "b", "distance", "similarity"]
    assert (pairs["a"] < pairs["b"]).all()
    assert pairs["distance"].between(0, DEFAULT_MAX_DISTANCE).all()
    assert pairs["similarity"].between(0.0, 1.0).all()


def test_alike_but_distinct_digits_are_not_paired(digits: list[Image.Image], tmp_path) -> None:
    """Many different handwritten digits share most of their hash at 16 px; the thumbnail
    check must keep them apart."""
    images, _ = plant(tmp_path, digits, [], [], 16)
    hashed = hash_images(images)
    distance = np.bitwise_count(hashed.hashes[:, None] ^ hashed.hashes[None, :])
    alike = np.triu(distance <= DEFAULT_MAX_DISTANCE, 1).sum()
    assert alike > 200  # the hash alone would pair hundreds of them
    assert hashed.duplicates().empty


def test_copies_of_photo_like_images_are_found(tmp_path: Path) -> None:
    photos = [photo(seed) for seed in range(40)]
    which = [0, 7, 19, 33]
    images, expected = plant(tmp_path, photos, which, ["down 0.7x", "up 1.5x", "jpeg q75"], 64)
    assert pair_set(find_duplicates(images)) == expected


@pytest.mark.parametrize("numpy_popcount", [True, False])
def test_matching_finds_every_pair_within_max_distance(
    monkeypatch: pytest.MonkeyPatch, numpy_popcount: bool
) -> None:
    """Exact, against brute force, over many blocks (and with numpy 1.26's missing popcount)."""
    monkeypatch.setattr(duplicates, "_PAIR_BLOCK", 1000)
    if not numpy_popcount:
        monkeypatch.delattr(np, "bitwise_count", raising=False)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 20, dtype=np.int64).astype(np.uint64)
    flips = rng.integers(0, 63, (300, 6))  # 300 variants of 20 hashes, 0-6 bits flipped
    hashes = base[np.arange(300) % 20].copy()
    for k in range(6):
        flip = np.uint64(1) << flips[:, k].astype(np.uint64)
        hashes ^= np.where(rng.random(300) < 0.5, flip, np.uint64(0))
    thumb = np.ones((300, 4), dtype=np.float32)  # all alike: only the hashes decide
    hashed = ImageHashes(
        hashes=hashes, thumbs=thumb, flat=np.zeros(300, bool), energy=np.full(300, 4.0)
    )
    bits = ((hashes[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).astype(int)
    brute = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    for max_distance in (0, 4, 8):
        pairs = hashed.duplicates(max_distance=max_distance, min_similarity=0.0)
        a, b = np.nonzero(np.triu(brute <= max_distance, 1))
        assert pair_set(pairs) == set(zip(a.tolist(), b.tolist(), strict=True))
        assert (pairs["distance"].to_numpy() == brute[pairs["a"], pairs["b"]]).all()


def test_exact_copies_have_distance_zero_and_similarity_one(tmp_path: Path) -> None:
    images = np.stack([np.asarray(photo(s)).transpose(2, 0, 1)[:, :64, :64] for s in range(6)])
    images = np.concatenate([images, images[[2, 4]]])  # rows 6 and 7 copy rows 2 and 4
    pairs = find_duplicates(images)
    assert pair_set(pairs) == {(2, 6), (4, 7)}
    assert (pairs["distance"] == 0).all() and np.allclose(pairs["similarity"], 1.0)


def test_a_brightness_shift_moves_no_bit() -> None:
    """The DC term is not in the hash: the same picture lighter has the same hash."""
    img = np.asarray(photo(3)).transpose(2, 0, 1)[:, :64, :64].astype(np.int64)
    pair = np.stack([np.clip(img, 20, 200), np.clip(img, 20, 200) + 40]).astype(np.uint8)
    hashes = perceptual_hashes(pair)
    assert hashes.dtype == np.uint64 and hashes[0] == hashes[1] != 0


def test_flat_images_do_not_pair_up() -> None:
    """Blank, single-colour and near-constant images carry no hash: they would all match."""
    rng = np.random.default_rng(0)
    flat = [np.full((3, 32, 32), level, dtype=np.uint8) for level in (0, 40, 128, 128, 255)]
    flat += [np.broadcast_to(np.array([10, 200, 30], dtype=np.uint8)[:, None, None], (3, 32, 32))]
    faint = 100 + (rng.random((3, 32, 32)) < 0.1)  # noise well under one level of 255 on average
    images = np.stack([*flat, faint.astype(np.uint8)])
    hashed = hash_images(images)
    assert hashed.flat.all() and (hashed.hashes == 0).all()
    assert hashed.duplicates().empty


def test_groups_are_the_clusters_of_the_pairs(tmp_path: Path) -> None:
    pairs = pd.DataFrame({"a": [0, 1, 4], "b": [1, 2, 5]})
    assert duplicate_groups(pairs, 7).tolist() == [0, 0, 0, -1, 1, 1, -1]
    assert duplicate_groups(pairs.iloc[:0], 3).tolist() == [-1, -1, -1]
    photos = [photo(seed) for seed in range(10)]
    images, _ = plant(tmp_path, photos, [2, 5], ["up 1.5x", "jpeg q75"], 64)
    groups = duplicate_groups(find_duplicates(images), len(images))
    # image 2 and its copies (rows 10, 12), image 5 and its copies (11, 13)
    assert groups.tolist() == [-1, -1, 0, -1, -1, 1, -1, -1, -1, -1, 0, 1, 0, 1]


@pytest.mark.parametrize(
    ("images", "hint"),
    [
        (np.zeros((2, 3, 16, 16), dtype=np.float32), "astype(np.uint8)"),
        (np.zeros((2, 16, 16, 3), dtype=np.uint8), "transpose(0, 3, 1, 2)"),
        (np.zeros((2, 16, 16), dtype=np.uint8), "add the channel axis"),
        (np.zeros((2, 3, 16, 20), dtype=np.uint8), "square"),
        ([[1, 2, 3]], "np.asarray"),
    ],
)
def test_wrong_images_say_what_to_change(images, hint: str) -> None:
    with pytest.raises(ValueError, match="uint8 \\[N, 3, S, S\\]") as exc:
        find_duplicates(images)
    assert hint in str(exc.value)


def test_wrong_options_say_what_to_change() -> None:
    images = np.zeros((2, 3, 16, 16), dtype=np.uint8)
    with pytest.raises(ValueError, match="max_distance must be in 0..63"):
        find_duplicates(images, max_distance=64)
    with pytest.raises(ValueError, match="min_similarity must be in \\[0, 1\\]"):
        find_duplicates(images, min_similarity=1.5)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        hash_images(images, chunk=0)
    with pytest.raises(ValueError, match="pass n = the number of images"):
        duplicate_groups(pd.DataFrame({"a": [0], "b": [5]}), 3)
    with pytest.raises(ValueError, match="columns a and b"):
        duplicate_groups(pd.DataFrame({"i": [0]}), 3)


def test_a_memmap_is_read_in_chunks_not_copied(tmp_path: Path) -> None:
    """A cache's images.npy opened read-only: the same hashes as in memory, with a peak of
    allocations far below one float copy (or even one uint8 copy) of the array."""
    n, size = 400, 128
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (n, 3, 4, 4)).astype(np.float32)
    ramp = np.linspace(0, 3, size).astype(np.float32)
    # smooth images: bilinear-ish blow-up of a 4x4 grid per image and channel
    idx = np.minimum(ramp.astype(int), 2)
    frac = ramp - idx
    rows = coarse[:, :, idx] * (1 - frac[:, None]) + coarse[:, :, idx + 1] * frac[:, None]
    images = rows[..., idx] * (1 - frac) + rows[..., idx + 1] * frac
    array = np.lib.format.open_memmap(
        tmp_path / "images.npy", mode="w+", dtype=np.uint8, shape=(n, 3, size, size)
    )
    array[:] = images.astype(np.uint8)
    array[n - 1] = array[0]  # one exact duplicate
    array.flush()
    del array
    cached = np.load(tmp_path / "images.npy", mmap_mode="r")
    tracemalloc.start()
    try:
        hashed = hash_images(cached, chunk=8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a float buffer of `chunk` images per thread and 4 KB per image: not even a uint8 copy
    assert peak < 0.5 * cached.nbytes  # the float copy would be 4x cached.nbytes
    in_memory = hash_images(np.array(cached))
    assert np.array_equal(hashed.hashes, in_memory.hashes)
    assert (0, n - 1) in pair_set(hashed.duplicates())


def test_progress_bar_on_request(capsys: pytest.CaptureFixture) -> None:
    images = np.stack([np.asarray(photo(s)).transpose(2, 0, 1) for s in range(3)])
    hash_images(images[:, :, :64, :64], progress=True)
    assert "hashing" in capsys.readouterr().err
