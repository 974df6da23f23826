"""`Batches`: normalisation, epochs, shuffling, read-only input, augmentation, options."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from hpsearch.data_pipeline import Batches, crop_flip
from hpsearch.data_pipeline.batches import normalise_numpy, normalise_torch

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture
def arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (23, 3, 8, 8), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(23)  # each image identifiable by its first pixel
    return images, np.arange(23, dtype=np.int64) % 4


def _batches(arrays, **kwargs) -> Batches:
    images, labels = arrays
    return Batches(images, labels, mean=MEAN, std=STD, **kwargs)


def _epoch(batches: Batches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batches, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_batches_are_normalised_images_and_labels(arrays) -> None:
    images, labels = arrays
    x, y = _epoch(_batches(arrays, batch_size=5, shuffle=False))
    expected = (
        torch.from_numpy(images).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)
    ) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(y, torch.from_numpy(labels))


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_gpu_and_cpu_normalisation_agree(arrays, fmt) -> None:
    images = torch.from_numpy(arrays[0])
    scale = 1 / (255 * torch.tensor(STD).view(1, 3, 1, 1))
    shift = -torch.tensor(MEAN).view(1, 3, 1, 1) / torch.tensor(STD).view(1, 3, 1, 1)
    on_device = normalise_torch(images, scale, shift, fmt)  # what a CUDA batch runs
    on_host = normalise_numpy(images, scale.numpy(), shift, fmt)
    torch.testing.assert_close(on_device, on_host, rtol=0, atol=1e-6)
    assert on_device.is_contiguous(memory_format=fmt) and on_host.is_contiguous(memory_format=fmt)


def test_len_and_drop_last(arrays) -> None:
    b = _batches(arrays, batch_size=5)
    assert len(b) == 5 and [len(y) for _, y in b] == [5, 5, 5, 5, 3]
    d = _batches(arrays, batch_size=5, drop_last=True)
    assert len(d) == 4 and [len(y) for _, y in d] == [5, 5, 5, 5]


def test_each_epoch_has_its_own_fixed_order(arrays) -> None:
    a, b = _batches(arrays, batch_size=4, seed=7), _batches(arrays, batch_size=4, seed=7)
    a0, a1 = _epoch(a)[1], _epoch(a)[1]
    b0, b1 = _epoch(b)[1], _epoch(b)[1]
    assert torch.equal(a0, b0) and torch.equal(a1, b1)
    o0, o1 = a.order(0), a.order(1)
    assert sorted(o0) == list(range(23)) and not np.array_equal(o0, o1)
    assert not np.array_equal(o0, _batches(arrays, seed=8).order(0))
    resumed = _batches(arrays, batch_size=4, seed=7)
    resumed.set_epoch(1)
    x, _ = _epoch(resumed)
    first_pixels = np.round((x[:, 0, 0, 0].numpy() * STD[0] + MEAN[0]) * 255).astype(int)
    assert np.array_equal(first_pixels, o1)  # images come in the order the epoch says


def test_read_only_input_is_neither_copied_nor_warned_about(arrays) -> None:
    images, labels = arrays
    images.flags.writeable = False
    labels.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        host = Batches(images, labels, mean=MEAN, std=STD, batch_size=4)
        resident = Batches(images, labels, mean=MEAN, std=STD, batch_size=4, resident=True)
        xh, yh = _epoch(host)
        xr, yr = _epoch(resident)
    assert host._images is images  # batches are gathered from the caller's array
    assert np.shares_memory(resident._images.numpy(), images)  # zero-copy tensor view
    assert torch.equal(xh, xr) and torch.equal(yh, yr)


def test_indices_select_a_subset(arrays) -> None:
    subset = np.array([3, 5, 7, 11, 13])
    b = _batches(arrays, indices=subset, batch_size=2)
    assert b.num_images == 5 and len(b) == 3 and sorted(b.order(0)) == list(subset)
    x, y = _epoch(_batches(arrays, indices=subset, batch_size=2, shuffle=False))
    first_pixels = np.round((x[:, 0, 0, 0].numpy() * STD[0] + MEAN[0]) * 255).astype(int)
    assert np.array_equal(first_pixels, subset) and np.array_equal(y.numpy(), subset % 4)
    for resident in (False, True):
        xr, yr = _epoch(
            _batches(arrays, indices=subset, batch_size=2, shuffle=False, resident=resident)
        )
        assert torch.equal(xr, x) and torch.equal(yr, y)


def test_with_options_shares_the_images(arrays) -> None:
    train = _batches(
        arrays, indices=np.arange(20), batch_size=4, seed=2, augment=True, resident=True
    )
    evaluation = train.with_options(batch_size=7, shuffle=False, augment=False)
    assert evaluation._images is train._images and evaluation._labels is train._labels
    assert len(evaluation) == 3 and len(train) == 5 and train.shuffle and train.augment
    x, y = _epoch(evaluation)
    ref_x, ref_y = _epoch(_batches(arrays, indices=np.arange(20), batch_size=7, shuffle=False))
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y)


def test_augment_keeps_shapes_and_labels_and_is_seeded(arrays) -> None:
    plain = _epoch(_batches(arrays, batch_size=6, seed=1))
    aug = _epoch(_batches(arrays, batch_size=6, seed=1, augment=True, crop_padding=2))
    again = _epoch(_batches(arrays, batch_size=6, seed=1, augment=True, crop_padding=2))
    assert aug[0].shape == plain[0].shape and torch.equal(aug[1], plain[1])
    assert torch.equal(aug[0], again[0]) and not torch.equal(aug[0], plain[0])


def test_crop_flip_matches_reflect_padding_by_hand() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (4, 3, 6, 7), dtype=np.uint8)
    dy, dx = np.array([-2, 0, 1, 2]), np.array([1, -2, 0, 2])
    flip = np.array([False, True, True, False])
    out = crop_flip(
        torch.from_numpy(x), torch.from_numpy(dy), torch.from_numpy(dx), torch.from_numpy(flip)
    ).numpy()
    p = 2
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), mode="reflect")
    for b in range(4):
        crop = padded[b, :, p + dy[b] : p + dy[b] + 6, p + dx[b] : p + dx[b] + 7]
        assert np.array_equal(out[b], crop[:, :, ::-1] if flip[b] else crop), b


def test_channels_last_and_dtype(arrays) -> None:
    x, _ = next(iter(_batches(arrays, batch_size=4, channels_last=True, dtype=torch.bfloat16)))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    ref, _ = next(iter(_batches(arrays, batch_size=4)))
    torch.testing.assert_close(x.float(), ref, atol=0.05, rtol=0.01)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(batch_size=0), "batch_size"),
        (dict(indices=[0, 99]), "indices must lie"),
        (dict(indices=[]), "no images selected"),
        (dict(augment=True, crop_padding=8), "crop_padding"),
    ],
)
def test_bad_options_are_rejected(arrays, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        _batches(arrays, **kwargs)


def test_bad_arrays_are_rejected(arrays) -> None:
    images, labels = arrays
    with pytest.raises(ValueError, match="uint8"):
        Batches(images.astype(np.float32), labels, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="one label per image"):
        Batches(images, labels[:-1], mean=MEAN, std=STD)


def _read_only_memmap(tmp_path, images: np.ndarray) -> np.ndarray:
    """The images as the trials get them: a read-only memory map of a cache file."""
    path = tmp_path / "images.u8"
    images.tofile(path)
    return np.memmap(path, dtype=np.uint8, mode="r", shape=images.shape)


@pytest.mark.parametrize(
    "options",
    [
        dict(batch_size=5, shuffle=False),
        dict(batch_size=4, seed=3, augment=True, crop_padding=2),
        dict(batch_size=6, seed=5, drop_last=True, indices=np.arange(2, 21)),
        dict(batch_size=23, seed=1, augment=True),  # one batch: nothing to prefetch
    ],
)
def test_streaming_yields_the_resident_batches(tmp_path, arrays, options) -> None:
    """Resident on the device, streamed through (pinned) host buffers one batch ahead, or
    gathered per batch: the same batches in the same order with the same values, epoch by
    epoch (shuffle, augmentation, set_epoch). Here on the CPU, pinning off: the logic of the
    GPU's streaming path without the device."""
    images = _read_only_memmap(tmp_path, arrays[0])
    labels = arrays[1]
    make = dict(mean=MEAN, std=STD, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "not writable" warning
        resident = Batches(images, labels, resident=True, **make)
        streamed = Batches(images, labels, stream=True, pin_memory=False, **make)
        host = Batches(images, labels, **make)
        assert (resident.placement, streamed.placement, host.placement) == (
            "device",
            "stream",
            "host",
        )
        for epoch in (0, 1, 4):
            for b in (resident, streamed, host):
                b.set_epoch(epoch)
            batches = [list(b) for b in (resident, streamed, host)]
            assert len(batches[0]) == len(resident) > 0
            for (xr, yr), (xs, ys), (xh, yh) in zip(*batches, strict=True):
                assert torch.equal(xr, xs) and torch.equal(yr, ys)
                assert torch.equal(xh, xs) and torch.equal(yh, ys)
    assert np.array_equal(images, arrays[0])  # the shared host copy is only read


def test_streaming_options_and_errors(arrays) -> None:
    streamed = _batches(arrays, stream=True, pin_memory=False, batch_size=4, seed=2)
    evaluation = streamed.with_options(batch_size=7, shuffle=False)
    assert evaluation.placement == "stream" and evaluation._images is streamed._images
    assert streamed._images is arrays[0]  # the caller's host array, no copy of it
    x, _ = _epoch(evaluation)
    assert torch.equal(x, _epoch(_batches(arrays, batch_size=7, shuffle=False))[0])
    assert not _batches(arrays).stream  # on the CPU the default stays the per-batch gather
    with pytest.raises(ValueError, match="exclude each other"):
        _batches(arrays, resident=True, stream=True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_streaming_on_cuda_matches_resident(tmp_path, arrays) -> None:
    """On a GPU: pinned buffers, a side stream, the copy of the next batch in flight."""
    images = _read_only_memmap(tmp_path, arrays[0])
    make = dict(mean=MEAN, std=STD, batch_size=4, seed=3, augment=True, device="cuda")
    resident = Batches(images, arrays[1], **make)
    streamed = Batches(images, arrays[1], resident=False, **make)
    assert resident.placement == "device" and streamed.placement == "stream"
    assert streamed.pin_memory
    for (xr, yr), (xs, ys) in zip(resident, streamed, strict=True):
        assert xs.device.type == "cuda" and torch.equal(xr, xs) and torch.equal(yr, ys)
