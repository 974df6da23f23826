"""Streaming (`Batches(stream=True)` on CUDA) against resident batches at 227 px, batch 256,
with the timing made hostile on purpose, so that a missing stream dependency shows as a wrong
batch instead of passing by luck:
- slow copy: every host-to-device copy starts 150 ms late on its side stream (a sleep kernel
  queued first). A batch handed out without waiting for its copy is read before it lands.
- slow consumer: 100 ms of work is queued on the training stream before each batch is asked
  for, so the host runs batches ahead of the device. A copy that does not wait for the training
  stream overwrites a buffer the allocator handed back while a queued step still reads it.
The streamed batches must equal the resident ones bit for bit. The last test removes the waits
and checks that this harness then does see wrong batches: it can fail."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from hpsearch.data_pipeline import Batches

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device: make gpu-check runs it"
    ),
]

SIZE, BATCH, BATCHES = 227, 256, 6
MEAN, STD = (0.45, 0.44, 0.41), (0.27, 0.26, 0.28)
SCENARIOS = {  # milliseconds: each copy's late start, the work queued before each batch
    "slow copy": (150, 0),
    "slow consumer": (0, 100),
}
LAYOUTS = {  # augment, channels_last
    "plain": (False, False),
    "bf16 trainer's layout, augmented": (True, True),
}


@pytest.fixture(scope="module")
def arrays(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    """Random 227 px images as trials read the cache: a read-only memory map."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("race") / "images.npy"
    np.save(path, rng.integers(0, 256, (BATCH * BATCHES, 3, SIZE, SIZE), dtype=np.uint8))
    return np.load(path, mmap_mode="r"), rng.integers(0, 10, BATCH * BATCHES)


def _batches(arrays, *, stream: bool, layout: str) -> Batches:
    augment, channels_last = LAYOUTS[layout]
    return Batches(
        *arrays, mean=MEAN, std=STD, batch_size=BATCH, device="cuda", seed=3, shuffle=True,
        augment=augment, channels_last=channels_last, resident=not stream,
        stream=True if stream else None,
    )  # fmt: skip


def _drain(batches: Batches, sleep_ms, consumer_ms: float) -> list[tuple[torch.Tensor, ...]]:
    """One epoch, with `consumer_ms` of work queued on the current stream before each batch."""
    out, it = [], iter(batches)
    while True:
        sleep_ms(consumer_ms)  # the training step before this batch, still queued
        try:
            out.append(next(it))
        except StopIteration:
            break
    torch.cuda.synchronize()
    return out


@contextlib.contextmanager
def _slow_copies(monkeypatch: pytest.MonkeyPatch, sleep_ms, ms: float):
    """Every `with torch.cuda.stream(side):` block Batches opens starts with `ms` of sleep on
    that stream: its copies land late. Yields the list of blocks entered."""
    real, entered = torch.cuda.stream, []

    @contextlib.contextmanager
    def late(stream):
        with real(stream):
            entered.append(stream)
            sleep_ms(ms)
            yield

    monkeypatch.setattr(torch.cuda, "stream", late)
    yield entered
    monkeypatch.setattr(torch.cuda, "stream", real)


def _wrong(streamed, resident) -> list[int]:
    return [
        i
        for i, ((xs, ys), (xr, yr)) in enumerate(zip(streamed, resident, strict=True))
        if not (torch.equal(xs, xr) and torch.equal(ys, yr))
    ]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_streamed_batches_equal_resident_ones_bit_for_bit(
    arrays, monkeypatch, cuda_kit, scenario, layout
) -> None:
    copy_ms, consumer_ms = SCENARIOS[scenario]
    resident = _drain(_batches(arrays, stream=False, layout=layout), cuda_kit.sleep_ms, 0)
    streamed_batches = _batches(arrays, stream=True, layout=layout)
    assert streamed_batches.placement == "stream" and streamed_batches.pin_memory
    with _slow_copies(monkeypatch, cuda_kit.sleep_ms, copy_ms) as entered:
        streamed = _drain(streamed_batches, cuda_kit.sleep_ms, consumer_ms)
    assert len(streamed) == len(resident) == BATCHES
    # Every batch's copy went through a side stream this test slowed (else it tests nothing).
    assert len(entered) >= BATCHES, f"{len(entered)} side-stream copies for {BATCHES} batches"
    assert all(s != torch.cuda.current_stream() for s in entered)
    wrong = _wrong(streamed, resident)
    assert not wrong, f"{scenario}: streamed batches {wrong} differ from the resident ones"


REMOVED = {  # scenario: the waits whose absence it must expose
    "slow copy": ("Stream.wait_event", "Event.wait"),  # hand out a batch before its copy lands
    "slow consumer": ("Stream.wait_stream",),  # copy into a buffer a queued step still reads
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_race_harness_sees_wrong_batches_without_the_waits(
    arrays, monkeypatch, cuda_kit, scenario
) -> None:
    """The test above can fail: with Batches' stream waits turned into no-ops, the same timing
    hands out batches that differ from the resident ones. If this fails, Batches orders its
    copies some other way now: point REMOVED at that, or the test above proves nothing."""
    copy_ms, consumer_ms = SCENARIOS[scenario]
    resident = _drain(_batches(arrays, stream=False, layout="plain"), cuda_kit.sleep_ms, 0)
    streamed_batches = _batches(arrays, stream=True, layout="plain")
    for name in REMOVED[scenario]:
        owner, method = name.split(".")
        monkeypatch.setattr(getattr(torch.cuda, owner), method, lambda *a, **k: None)
    with _slow_copies(monkeypatch, cuda_kit.sleep_ms, copy_ms):
        streamed = _drain(streamed_batches, cuda_kit.sleep_ms, consumer_ms)
    monkeypatch.undo()
    assert _wrong(streamed, resident), f"{scenario}: no wrong batch without {REMOVED[scenario]}"
