"""The GPU path, checked on the CPU: a trial given a GPU never trains on the CPU; the training
step never waits for the device; an out-of-memory trial ends as `oom` with the worst score and
its memory handed back; bf16 only where native; the memory cap sizes `auto` placement."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hpsearch.search.experiment.space import model_config
from hpsearch.search.trial import device as device_mod
from hpsearch.search.trial import trainable
from hpsearch.search.trial.device import GPUUnavailable, cuda_problem, memory_share
from hpsearch.search.trial.report import END_STATUSES, OOM, worst_value

CONFIG = {"arch": "FlatAlexNet", "width": 0.125, "mlp": "16", "optimizer": "sgd", "lr": 0.05}


def _fake_tune(monkeypatch):
    import ray
    from ray import tune

    reports: list[dict] = []
    monkeypatch.setattr(tune, "report", lambda result, checkpoint=None: reports.append(result))
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    node = types.SimpleNamespace(get_node_id=lambda: "node")
    monkeypatch.setattr(ray, "get_runtime_context", lambda: node)
    return reports


# --- no silent CPU fallback ------------------------------------------------------------------


def test_a_trial_given_a_gpu_without_cuda_fails_with_the_reason(
    monkeypatch, tiny_data, tiny_settings
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(device_mod, "driver_version", lambda: "535.183.01")
    reports = _fake_tune(monkeypatch)
    built = []
    monkeypatch.setattr(trainable.models, "build", lambda cfg: built.append(cfg))
    with pytest.raises(GPUUnavailable) as failed:
        trainable.train_trial(CONFIG, data=tiny_data(), settings=tiny_settings(gpus=0.5))
    message = str(failed.value)
    assert "CUDA 13.0" in message and "535.183.01" in message  # torch's CUDA, the driver found
    assert ">= 580" in message and "older than the 580" in message  # what to install
    assert "resources.gpus: 0" in message
    assert not built and not reports  # nothing built, nothing trained on the CPU


@pytest.mark.parametrize(
    ("cuda", "driver", "expected"),
    [
        (None, None, "CPU-only build"),
        ("13.0", None, "no NVIDIA driver is loaded"),
        ("12.8", "550.54.15", "the NVIDIA driver here is 550.54.15, new enough, yet"),
    ],
)
def test_cuda_problem_names_the_build_and_the_driver(monkeypatch, cuda, driver, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(device_mod, "driver_version", lambda: driver)
    problem = cuda_problem()
    assert expected in problem
    if cuda == "12.8":
        assert "older" not in problem and "CUDA_VISIBLE_DEVICES" in problem  # another cause


def test_a_cpu_trial_never_asks_for_cuda(monkeypatch, make_trainer):
    def boom():
        raise AssertionError("a CPU trial asked for CUDA")

    monkeypatch.setattr(trainable, "require_cuda", boom)
    assert make_trainer().device == "cpu"


def test_a_gpu_trial_caps_its_memory_and_turns_on_cudnn_benchmark(
    monkeypatch, tiny_data, tiny_settings
):
    """With CUDA usable, a trial's Trainer picks CUDA, limits its allocator to its share and
    turns on cuDNN's autotuner before it places anything (stopped there: no GPU here)."""

    class Placed(Exception):
        pass

    def placement(dev, images_bytes, settings):
        raise Placed(dev)

    limited = []
    monkeypatch.setattr(trainable, "require_cuda", lambda: None)
    monkeypatch.setattr(trainable, "limit_memory", lambda gpus, dev: limited.append((gpus, dev)))
    monkeypatch.setattr(trainable, "data_placement", placement)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    cfg = model_config(CONFIG, image_size=16, num_classes=3)
    with pytest.raises(Placed, match="cuda"):
        trainable.Trainer(
            cfg,
            CONFIG,
            tiny_data(),
            tiny_settings(gpus=0.25),
            train_idx=np.arange(32),
            val_idx=np.arange(32, 48),
        )
    assert limited == [(0.25, "cuda")]
    assert torch.backends.cudnn.benchmark is True


def test_memory_share_is_the_trials_gpus():
    assert memory_share(0.25) == 0.25 and memory_share(1) == 1.0
    with pytest.raises(ValueError, match="gpus > 0"):
        memory_share(0)


# --- no host-device synchronisation in the training step -------------------------------------

# ATen ops that make the host wait for a CUDA device: they read a value or a data-dependent
# size back (`.item()`, `.tolist()`, `bool(t)`, `nonzero`, boolean masks, `unique`, `bincount`
# without a fixed size, `repeat_interleave` without `output_size`), or compare on the host.
SYNCING = {
    "aten::_local_scalar_dense",
    "aten::item",
    "aten::is_nonzero",
    "aten::equal",
    "aten::allclose",
    "aten::nonzero",
    "aten::masked_select",
    "aten::unique",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::bincount",
    "aten::histc",
    "aten::repeat_interleave",
}


def _devices(args) -> set[str]:
    flat = torch.utils._pytree.tree_leaves(args)
    return {t.device.type for t in flat if isinstance(t, torch.Tensor)}


class SyncRecorder(TorchDispatchMode):
    """Every ATen op run under it; `syncs` lists those that would make the host wait for a
    device: the ops of SYNCING on a device tensor, a copy from a device to the host, and a
    host-to-device copy that is not `non_blocking`."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        self.ops.append(name)
        on = _devices((args, kwargs)) - {"cpu"}
        if name in SYNCING and on:
            self.syncs.append(name)
        if name == "aten::index" and any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
            for i in (args[1] if len(args) > 1 else [])
            if i is not None
        ):
            self.syncs.append("aten::index (boolean mask)")
        if name in ("aten::_to_copy", "aten::copy_"):
            src = args[1] if name == "aten::copy_" else args[0]
            dst = args[0].device if name == "aten::copy_" else kwargs.get("device")
            src_dev = src.device.type if isinstance(src, torch.Tensor) else "cpu"
            dst_dev = torch.device(dst).type if dst is not None else src_dev
            blocking = not (
                kwargs.get("non_blocking") or (name == "aten::copy_" and len(args) > 2 and args[2])
            )
            if src_dev != "cpu" and dst_dev == "cpu":
                self.syncs.append(f"{name} device->host")
            elif src_dev == "cpu" and dst_dev != "cpu" and blocking:
                self.syncs.append(f"{name} host->device, blocking")
        out = func(*args, **kwargs)
        return out


def _meta_trainer(monkeypatch, tiny_data, tiny_settings, *, placement, config):
    """A trial's Trainer on the meta device: every op runs as on a GPU (shapes, dtypes, which
    ops), but nothing computes and no value can be read back. Meta stands in for CUDA."""
    monkeypatch.setattr(trainable, "data_placement", lambda *a: placement)
    settings = tiny_settings(augment=True, precision="fp32", batch_size=8)
    cfg = model_config(config, image_size=16, num_classes=3)
    trainer = trainable.Trainer(
        cfg,
        config,
        tiny_data(),
        settings,
        train_idx=np.arange(48),
        val_idx=np.arange(40, 48),
        device="meta",
    )
    assert trainer.train_batches.placement == ("device" if placement == "device" else "stream")
    return trainer


@pytest.mark.parametrize("placement", ["device", "stream"])
@pytest.mark.parametrize(
    "config",
    [
        CONFIG,
        {**CONFIG, "batchnorm": True, "dropout": 0.3, "l1": 1e-4},
        {**CONFIG, "optimizer": "rmsprop", "momentum": 0.5, "weight_decay": 1e-4},
        {**CONFIG, "optimizer": "adam", "lr": 1e-3},
    ],
    ids=["sgd", "bn-dropout-l1", "rmsprop", "adam"],
)
def test_the_training_steps_never_wait_for_the_device(
    monkeypatch, tiny_data, tiny_settings, placement, config
):
    """Six training steps (augmented batches gathered, cropped, flipped, normalised; forward,
    loss, backward, optimizer step, metrics) run no op that synchronises with a GPU."""
    trainer = _meta_trainer(
        monkeypatch, tiny_data, tiny_settings, placement=placement, config=config
    )
    trainer.train_batches.set_epoch(0)
    with SyncRecorder() as rec:
        losses, n = trainer.run_steps(trainer.train_batches)
    assert len(losses) == 6 and n == 48
    assert {"aten::index_add_", "aten::convolution_backward"} <= set(rec.ops)  # it did record
    assert rec.syncs == []


def test_the_recorder_catches_what_a_step_must_not_do(monkeypatch, tiny_data, tiny_settings):
    """The recorder is not blind: torchmetrics' update (bincount), `.item()` of the loss and a
    blocking upload are each caught."""
    from torchmetrics.classification import MulticlassPrecision

    logits = torch.zeros((4, 3), device="meta")
    target = torch.zeros(4, dtype=torch.int64, device="meta")
    with SyncRecorder() as rec:
        try:
            MulticlassPrecision(3, average="macro", validate_args=False).to("meta").update(
                logits, target
            )
        except (NotImplementedError, RuntimeError):
            pass  # meta cannot size a bincount: the op was still recorded
        try:
            logits.sum().item()
        except (NotImplementedError, RuntimeError):
            pass
        torch.zeros(3).to("meta")
    assert any(s in rec.syncs for s in ("aten::bincount", "aten::_unique2", "aten::nonzero"))
    assert "aten::_local_scalar_dense" in rec.syncs or "aten::item" in rec.syncs
    assert "aten::_to_copy host->device, blocking" in rec.syncs


def test_the_evaluation_loop_never_waits_for_the_device(monkeypatch, tiny_data, tiny_settings):
    trainer = _meta_trainer(
        monkeypatch, tiny_data, tiny_settings, placement="device", config=CONFIG
    )
    rec = SyncRecorder()

    def stop_at_the_end(confusion):  # the one read-back, after the loop
        rec.__exit__(None, None, None)
        raise StopIteration

    monkeypatch.setattr(trainable, "confusion_metrics", stop_at_the_end)
    rec.__enter__()
    with pytest.raises(StopIteration):
        trainer.evaluate(trainer.val_batches)
    assert "aten::index_add_" in rec.ops and rec.syncs == []


def test_metrics_from_the_confusion_matrix_match_torchmetrics():
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassConfusionMatrix,
        MulticlassPrecision,
    )

    gen = torch.Generator().manual_seed(0)
    c = 5
    confusion = torch.zeros((c, c), dtype=torch.int64)
    acc, prec = MulticlassAccuracy(c, average="micro"), MulticlassPrecision(c, average="macro")
    cm = MulticlassConfusionMatrix(c)
    for _ in range(4):
        logits = torch.randn(33, c, generator=gen)
        target = torch.randint(0, c - 1, (33,), generator=gen)  # one class never occurs
        trainable.confusion_update(confusion, logits, target)
        for m in (acc, prec, cm):
            m.update(logits, target)
    got_acc, got_prec = trainable.confusion_metrics(confusion)
    assert torch.equal(confusion, cm.compute())
    assert got_acc == pytest.approx(acc.compute().item(), abs=1e-7)
    assert got_prec == pytest.approx(prec.compute().item(), abs=1e-7)


# --- out of memory ---------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["first-epoch", "second-epoch"])
def test_out_of_memory_ends_the_trial_as_oom_with_the_worst_score(
    monkeypatch, tiny_data, tiny_settings, when
):
    reports = _fake_tune(monkeypatch)
    monkeypatch.setattr(trainable, "report_with_checkpoint", lambda r, *a: reports.append(r))
    released = []
    monkeypatch.setattr(trainable, "release_device_memory", lambda: released.append(len(reports)))
    build = trainable.models.build
    calls = {"n": 0}

    def build_that_runs_out(cfg):
        model = build(cfg)
        forward = model.forward
        limit = 2 if when == "first-epoch" else 4 + 1 + 2  # an epoch: 4 steps, 1 validation

        def patched(x):
            calls["n"] += 1
            if calls["n"] > limit:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
            return forward(x)

        model.forward = patched
        return model

    monkeypatch.setattr(trainable.models, "build", build_that_runs_out)
    settings = tiny_settings(epochs=3, batch_size=8, gpus=0)
    trainable.train_trial(CONFIG, data=tiny_data(), settings=settings)  # no exception: no retry
    last = reports[-1]
    assert last["status"] == OOM and OOM in END_STATUSES
    assert last[settings.metric] == worst_value(settings.mode)
    assert last["epoch"] == (1 if when == "first-epoch" else 2)
    assert "out of memory" in last["reason"] and "train.batch_size" in last["reason"]
    assert len(released) >= 2  # after the error, and when the trial ends
    assert released[0] == len(reports) - 1  # before the oom report: the memory is free first


def test_an_oom_trial_is_recorded_as_oom_in_the_tables(tmp_path):
    """trials.parquet says `oom` with the reason, like an infeasible trial, not `error`."""
    import json

    from hpsearch.rundir import PARAMS_FILE, RESULT_FILE, TRIAL_PREFIX
    from hpsearch.search.driver.export import collect

    trial = tmp_path / f"{TRIAL_PREFIX}abc"
    trial.mkdir()
    (trial / PARAMS_FILE).write_text(json.dumps(CONFIG))
    report = {"val_accuracy": 0.0, "status": "oom", "reason": "CUDA out of memory", "epoch": 0}
    (trial / RESULT_FILE).write_text(json.dumps(report) + "\n")
    trials = collect(tmp_path, epochs=2, classes=["a", "b"])["trials"]
    assert trials.loc[0, "status"] == "oom" and "out of memory" in trials.loc[0, "error"]


# --- precision and placement -----------------------------------------------------------------


def test_auto_precision_counts_only_native_bf16(monkeypatch):
    asked = []

    def supported(including_emulation=True):
        asked.append(including_emulation)
        return including_emulation  # a T4: bf16 only through emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert trainable.choose_precision("auto", "cuda") == "fp32"
    assert asked == [False]


def test_auto_placement_budget_is_capped_by_the_trials_share():
    gb = 1e9
    # 80 GB free on a device of 80 GB, one trial packed, but capped at a quarter (20 GB):
    # the budget is half of 20 GB, not half of 80 GB.
    assert trainable.placement(int(9 * gb), int(80 * gb), 1, "auto", cap_bytes=20 * gb) == "device"
    assert trainable.placement(int(11 * gb), int(80 * gb), 1, "auto", cap_bytes=20 * gb) == "stream"
    assert trainable.placement(int(11 * gb), int(80 * gb), 1, "auto") == "device"  # (uncapped)


def test_data_placement_reads_the_cap_from_the_trials_gpus(monkeypatch, tiny_settings):
    gb = 1e9
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (int(80 * gb), int(80 * gb)))
    # gpus 0.5 with 80 GB free: 2 trials per device, 40 GB each, capped at 40 GB: budget 20 GB
    settings = tiny_settings(gpus=0.5)
    assert trainable.data_placement("cuda", int(19 * gb), settings) == "device"
    assert trainable.data_placement("cuda", int(21 * gb), settings) == "stream"
