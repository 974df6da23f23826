"""`Batches`: shuffled, normalised mini-batches sliced from a decoded uint8 array.

No DataLoader and no decode in the loop (airbench's recipe). Three placements of the images:
- `device` (resident): on a GPU the selected uint8 images are copied to the device once, at
  construction, and every batch is an index_select, a cast and one fused multiply-add there;
- `stream`: each batch is gathered from the shared host array into pinned memory and copied to
  the device without blocking, on a side CUDA stream, one batch ahead (the next batch is on its
  way while the current one trains); nothing of the images stays on the device;
- `host`: on the CPU each batch is a numpy gather from the (possibly memory-mapped, possibly
  read-only) array and the same arithmetic in numpy.
The host array is only ever read.

Epoch e of seed s always visits the images in the same order, on any device: the order
and the augmentation draws come from CPU `torch.Generator`s seeded from (s, e).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from hpsearch.data_pipeline.cache import Cache

_UPLOAD_CHUNK = 512  # images per host-to-device copy when uploading a subset


def _generator(*key: int) -> torch.Generator:
    seed = int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed)


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """Zero-copy tensor of a numpy array that may be read-only (e.g. from ray.get)."""
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        # Only ever read: the tensor is uploaded or indexed, never written in place.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Reflect indices into 0..n-1 without repeating the edge (numpy's "reflect" padding)."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def crop_flip(
    images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """Random-crop-with-padding and horizontal flip in one gather.

    Image b is shifted by (dy[b], dx[b]) pixels (reflected borders, like cropping a
    reflect-padded image) and mirrored left-right where flip[b]. Works on any dtype/device.
    """
    b, c, h, w = images.shape
    dev = images.device  # (the draws are moved there already by Batches: a no-op then)
    rows = _reflect(dy.to(dev)[:, None] + torch.arange(h, device=dev), h)
    cols = dx.to(dev)[:, None] + torch.arange(w, device=dev)
    cols = _reflect(torch.where(flip.to(dev)[:, None], cols.flip(1), cols), w)
    return images[
        torch.arange(b, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


class Batches:
    """Iterate (images, labels) mini-batches of a uint8 image array, one epoch per `iter`.

    images: uint8 [N, 3, S, S] numpy array (memmap or read-only is fine) or tensor.
    labels: int [N]. mean, std: per-channel, in [0, 1] units (the cache's meta).
    indices: the rows to use (e.g. `cache.indices("train")`); default all.
    Yields float images `(x / 255 - mean) / std` of `dtype` and int64 labels on `device`.
    `augment` adds a seeded random crop with reflected padding of `crop_padding` pixels
    (default S // 16) and a horizontal flip. Each `iter()` runs the next epoch;
    `set_epoch(e)` jumps to epoch e (e.g. after resuming from a checkpoint).
    `resident` keeps the selected images as one tensor on `device` (default: on any
    non-CPU device); otherwise each batch is gathered from the host array. `stream` (default:
    when not resident on a non-CPU device) gathers the next batch and starts its copy to
    `device` before the current one is handed out, through pinned memory (`pin_memory`,
    default: on CUDA) and a side CUDA stream; on the CPU the same code runs without either
    (what the tests compare with the resident path). `placement` says which of the three
    (`device`, `stream`, `host`) this iterator uses.
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor | Sequence[int],
        *,
        mean: Sequence[float],
        std: Sequence[float],
        indices: np.ndarray | Sequence[int] | None = None,
        batch_size: int = 150,
        device: str | torch.device = "cpu",
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        augment: bool = False,
        crop_padding: int | None = None,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        resident: bool | None = None,
        stream: bool | None = None,
        pin_memory: bool | None = None,
    ) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype not in (np.uint8, torch.uint8):
            raise ValueError(
                f"images must be uint8 [N, 3, S, S], got {images.dtype} {tuple(images.shape)}"
            )
        if len(labels) != len(images):
            raise ValueError(
                f"{len(labels)} labels for {len(images)} images: pass one label per image"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size = {batch_size}: use at least 1")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean {mean} / std {std}: give 3 channel values, std > 0")
        n = len(images)
        index = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(index) and (index.min() < 0 or index.max() >= n):
            raise ValueError(f"indices must lie in 0..{n - 1}")
        if len(index) == 0:
            raise ValueError("no images selected: indices is empty")
        size = images.shape[-1]
        self.crop_padding = max(1, size // 16) if crop_padding is None else int(crop_padding)
        if augment and not 0 <= self.crop_padding < size:
            raise ValueError(f"crop_padding = {crop_padding}: use 0..{size - 1}")
        self.device = torch.device(device)
        self.resident = self.device.type != "cpu" if resident is None else bool(resident)
        on_host = not self.resident
        self.stream = on_host and self.device.type != "cpu" if stream is None else bool(stream)
        if self.resident and self.stream:
            raise ValueError("resident and stream exclude each other: pass at most one of them")
        if self.stream and isinstance(images, torch.Tensor) and images.device.type != "cpu":
            raise ValueError(f"stream gathers batches on the host: images are on {images.device}")
        cuda = self.device.type == "cuda"
        self.pin_memory = self.stream and cuda if pin_memory is None else bool(pin_memory)
        self.batch_size = batch_size
        self.shuffle, self.seed, self.drop_last, self.augment = shuffle, seed, drop_last, augment
        self.channels_last, self.dtype = channels_last, dtype
        self.epoch = 0
        self._n = len(index)
        self._index = index
        labels_np = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        labels_t = torch.from_numpy(labels_np[index].astype(np.int64))
        if self.resident:
            self._images: np.ndarray | torch.Tensor = self._upload(
                images, None if indices is None else index
            )
            self._labels = labels_t.to(self.device)
        else:
            self._images = images
            self._labels = labels_t
        std_t = torch.tensor(std, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_t)).view(1, 3, 1, 1).to(self.device)
        self._scale_np = (1.0 / (255.0 * std_t)).view(1, 3, 1, 1).numpy()
        self._shift = (
            (-torch.tensor(mean, dtype=torch.float32) / std_t).view(1, 3, 1, 1).to(self.device)
        )

    @classmethod
    def from_cache(
        cls, cache: Cache, split: str | np.ndarray | Sequence[int] = "train", **options
    ) -> Batches:
        """Batches of a `Cache`: `split` is "train" / "test" / "all" or row indices."""
        indices = cache.indices(split) if isinstance(split, str) else split
        return cls(
            cache.images, cache.labels, mean=cache.mean, std=cache.std, indices=indices, **options
        )

    def with_options(
        self,
        *,
        batch_size: int | None = None,
        shuffle: bool | None = None,
        seed: int | None = None,
        drop_last: bool | None = None,
        augment: bool | None = None,
    ) -> Batches:
        """Another iterator over the same selected images, sharing their (device) memory:
        e.g. an unshuffled evaluation pass over the training images without a second upload."""
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size = {batch_size}: use at least 1")
        other = copy.copy(self)
        changes = dict(
            batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, augment=augment
        )
        for name, value in changes.items():
            if value is not None:
                setattr(other, name, value)
        if other.augment and not 0 <= other.crop_padding < self._images.shape[-1]:
            raise ValueError(
                f"crop_padding = {other.crop_padding}: use 0..{self._images.shape[-1] - 1}"
            )
        other.epoch = 0
        return other

    def _upload(self, images: np.ndarray | torch.Tensor, index: np.ndarray | None) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            picked = images if index is None else images[torch.from_numpy(index).to(images.device)]
            return picked.to(self.device)
        if index is None and self.device.type == "cpu":
            return _as_tensor(np.ascontiguousarray(images))  # zero-copy
        out = torch.empty((self._n, *images.shape[1:]), dtype=torch.uint8, device=self.device)
        for start in range(0, self._n, _UPLOAD_CHUNK):
            stop = min(start + _UPLOAD_CHUNK, self._n)
            chunk = images[start:stop] if index is None else images[index[start:stop]]
            out[start:stop].copy_(_as_tensor(chunk))
        return out

    def __len__(self) -> int:
        """Batches per epoch."""
        return (
            self._n // self.batch_size if self.drop_last else math.ceil(self._n / self.batch_size)
        )

    @property
    def num_images(self) -> int:
        return self._n

    @property
    def placement(self) -> str:
        """Where the images live: `device` (resident), `stream` (host, copied one batch ahead)
        or `host` (gathered per batch, on the CPU)."""
        return "device" if self.resident else "stream" if self.stream else "host"

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next `iter()` runs."""
        self.epoch = int(epoch)

    def order(self, epoch: int) -> np.ndarray:
        """Row indices (into the images array) in the order epoch `epoch` visits them."""
        return self._index[self._positions(epoch).numpy()]

    def _positions(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self._n)
        return torch.randperm(self._n, generator=_generator(self.seed, epoch))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self._epoch(epoch)

    def _epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        positions = self._positions(epoch)
        if self.resident and self.device.type != "cpu":
            # The epoch's order reaches the device in one copy; each batch slices it there.
            positions = self._to_device(positions)
        chunks = [
            positions[i * self.batch_size : (i + 1) * self.batch_size] for i in range(len(self))
        ]
        draws = _generator(self.seed, epoch, 1) if self.augment else None
        taken = self._streamed(chunks) if self.stream else map(self._take, chunks)
        for images, labels in taken:
            if draws is not None:
                # Drawn in batch order whatever the placement: the same crops and flips.
                p, n = self.crop_padding, len(labels)
                dy = torch.randint(-p, p + 1, (n,), generator=draws)
                dx = torch.randint(-p, p + 1, (n,), generator=draws)
                flip = torch.rand(n, generator=draws) < 0.5
                shifts = torch.stack([dy, dx, flip.to(dy.dtype)])
                if images.device.type != "cpu":
                    shifts = self._to_device(shifts)  # one copy, not three that wait
                images = crop_flip(images, shifts[0], shifts[1], shifts[2].bool())
            yield self._normalise(images), labels

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """`t` on the device without the host waiting for it: a copy from pinned memory (on
        CUDA), queued on the current stream, which the host buffer outlives (the caching host
        allocator keeps it until the copy is done)."""
        if self.device.type == "cuda":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def _streamed(self, chunks: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `chunks` (positions), each gathered on the host and copied to the device
        while the one before is in use: batch i+1 is staged before batch i is handed out."""
        side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        ahead = self._stage(chunks[0], side) if chunks else None
        for i in range(len(chunks)):
            images, labels, done = ahead
            ahead = self._stage(chunks[i + 1], side) if i + 1 < len(chunks) else None
            if done is not None:
                torch.cuda.current_stream(self.device).wait_event(done)
            yield images, labels

    def _stage(
        self, pos: torch.Tensor, side: torch.cuda.Stream | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None]:
        """Gather one batch into (pinned) host memory and start its copy to the device."""
        rows = self._index[pos.numpy()]
        host = torch.empty(
            (len(rows), *self._images.shape[1:]), dtype=torch.uint8, pin_memory=self.pin_memory
        )
        if isinstance(self._images, torch.Tensor):
            torch.index_select(self._images, 0, torch.from_numpy(rows), out=host)
        else:
            # One copy, straight from the (read-only, memory-mapped) array into the buffer.
            np.take(self._images, rows, axis=0, out=host.numpy(), mode="clip")
        labels = self._labels[pos]
        if self.pin_memory:
            labels = labels.pin_memory()
        if side is None:
            nb = dict(non_blocking=True)  # (the CPU: no copy at all)
            return host.to(self.device, **nb), labels.to(self.device, **nb), None
        # The device buffers belong to the current stream (the one training on them); the side
        # stream first waits for the work queued there so far, which may still read memory the
        # allocator hands out again here, then copies while the next step runs. The caching host
        # allocator keeps each pinned buffer until its copy is done.
        main = torch.cuda.current_stream(self.device)
        images = torch.empty(host.shape, dtype=torch.uint8, device=self.device)
        labels_d = torch.empty(labels.shape, dtype=labels.dtype, device=self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            images.copy_(host, non_blocking=True)
            labels_d.copy_(labels, non_blocking=True)
        return images, labels_d, side.record_event()

    def _take(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.resident:
            pos_d = pos.to(self.device)  # a no-op: `_epoch` put the order on the device
            return self._images.index_select(0, pos_d), self._labels.index_select(0, pos_d)
        rows = self._index[pos.numpy()]
        if isinstance(self._images, torch.Tensor):
            images = self._images[torch.from_numpy(rows).to(self._images.device)]
        else:
            # Index the (read-only, memory-mapped) array first: the gather is a fresh, writable copy.
            images = torch.from_numpy(self._images[rows])
        return images.to(self.device), self._labels[pos].to(self.device)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        if images.device.type == "cpu":
            x = normalise_numpy(images, self._scale_np, self._shift, fmt)
        else:
            x = normalise_torch(images, self._scale, self._shift, fmt)
        return x if self.dtype == torch.float32 else x.to(self.dtype)


def normalise_torch(
    images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, fmt: torch.memory_format
) -> torch.Tensor:
    """float32 `images * scale + shift` in one cast and one fused multiply-add (any device)."""
    x = torch.empty(images.shape, dtype=torch.float32, device=images.device, memory_format=fmt)
    x.copy_(images)
    return torch.addcmul(shift, x, scale, out=x)


def normalise_numpy(
    images: torch.Tensor, scale: np.ndarray, shift: torch.Tensor, fmt: torch.memory_format
) -> torch.Tensor:
    """The same on the CPU, where numpy's uint8 -> float32 multiply is about 2.5x faster than
    torch's cast (a SIMD cast, and numpy asks for huge pages for large fresh arrays)."""
    x = torch.from_numpy(np.multiply(images.numpy(), scale, dtype=np.float32))
    return x.add_(shift).contiguous(memory_format=fmt)
