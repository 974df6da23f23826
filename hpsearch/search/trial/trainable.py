"""The Ray Tune trainable: one trial = build the model, train it for some epochs on batches
sliced from the shared cache arrays, report metrics and a checkpoint after every epoch.

Every epoch reports `train_loss`, `train_accuracy`, `train_macro_precision`, `val_loss`,
`val_accuracy`, `val_macro_precision` (as torchmetrics defines them, from a confusion matrix
accumulated on the device), `seconds`, `images_per_s`, the per-step training losses
(`step_loss`) and the validation confusion matrix (`confusion`). `status` is `running`, or
`infeasible` / `diverged` / `oom` on the trial's last report (`infeasible`: the architecture
does not fit the image size, or its cost exceeds `search.budget`; no model is built). Every
report also carries the trial's facts: model shape, `precision`, `channels_last`, `device` and
`data_placement`.

Trials packed on one GPU share it: a trial keeps its images resident on the device only within
its share of the device's memory (`placement`), else streams them from the node's one host copy.
Whatever a trial held (model, optimizer, device-resident images) is released when it ends, so
the next trial on a reused actor starts on an empty device.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import time
import traceback
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
from ray import tune

from hpsearch import models
from hpsearch.models import InfeasibleArchitecture
from hpsearch.rundir import PREDICTIONS_NPZ
from hpsearch.search.experiment.budget import OverBudget
from hpsearch.search.experiment.dimensions import encode_layers
from hpsearch.search.experiment.space import model_config
from hpsearch.search.trial.checkpoints import report_with_checkpoint, restore, write_trial_file
from hpsearch.search.trial.device import (
    limit_memory,
    memory_share,
    native_bf16,
    release_device_memory,
    require_cuda,
    trials_per_device,
)
from hpsearch.search.trial.report import DIVERGED, INFEASIBLE, OOM, RUNNING, replayed, worst_value

if TYPE_CHECKING:
    from hpsearch.search.trial.inputs import TrialData, TrialSettings

# `train.data_on_device: auto` keeps a trial's images on the GPU when they take at most this
# share of the device's free memory divided among the trials packed on it; the rest of each
# trial's share is left to the model, optimizer state, activations and cuDNN's workspaces.
DEVICE_SHARE = 0.5


def placement(
    images_bytes: int,
    free_bytes: int,
    trials_per_device: int,
    setting: str | float = "auto",
    *,
    cap_bytes: float | None = None,
) -> str:
    """`device` (keep the trial's images resident on the GPU) or `stream` (copy each batch from
    the host). `setting` is `train.data_on_device`: `always`, `never`, a budget in GB (1e9
    bytes) per trial, or `auto`: a budget of DEVICE_SHARE x the trial's memory, which is
    free_bytes / trials_per_device, and at most `cap_bytes` (the trial's capped share of the
    device, `device.limit_memory`)."""
    if setting == "always":
        return "device"
    if setting == "never":
        return "stream"
    if setting == "auto":
        mine = free_bytes / max(1, int(trials_per_device))
        budget = DEVICE_SHARE * (mine if cap_bytes is None else min(mine, cap_bytes))
    elif isinstance(setting, int | float) and not isinstance(setting, bool) and setting > 0:
        budget = float(setting) * 1e9
    else:
        raise ValueError(
            f"data_on_device {setting!r}: use auto, always, never or a size in GB, e.g. 6"
        )
    return "device" if images_bytes <= budget else "stream"


def data_placement(device: str, images_bytes: int, settings: TrialSettings) -> str:
    """The trial's placement: `host` on the CPU, else `placement` with the free memory of the
    trial's GPU now (before its model is built) and the trial's share of the device as cap."""
    if not device.startswith("cuda"):
        return "host"
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    import torch

    free, total = torch.cuda.mem_get_info(device)
    return placement(
        images_bytes,
        free,
        trials_per_device(settings.gpus),
        settings.data_on_device,
        cap_bytes=total * memory_share(settings.gpus),
    )


def choose_precision(requested: str, device: str) -> str:
    """'bf16' or 'fp32'. `auto` picks bf16 autocast only where the hardware runs it natively:
    a CUDA device with bf16 units (Ampere and later; not a T4, where torch emulates it), or a
    CPU with AMX tiles. Elsewhere bf16 is emulated and slower than fp32."""
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    import torch

    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        return "bf16" if native_bf16() else "fp32"
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return "bf16" if amx is not None and amx() else "fp32"


def use_channels_last(precision: str, device: str) -> bool:
    """Channels-last memory with bf16 everywhere, and on the CPU also in fp32: there oneDNN's
    convolutions and max pooling vectorise over channels, which made small and medium AlexNet
    variants 1.2x to 1.8x faster per step (FlatAlexNet width 0.25 at 64 px: 292 -> 165 ms,
    1 thread; full AlexNet at 227 px: the same within noise). Same arithmetic either way."""
    return precision == "bf16" or not device.startswith("cuda")


def make_optimizer(config: dict[str, Any], params):
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    import torch

    name = config.get("optimizer", "sgd")
    lr = float(config.get("lr", 0.01))
    wd = float(config.get("weight_decay", 0.0) or 0.0)
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=float(config.get("momentum", 0.9)), weight_decay=wd
        )
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=lr, momentum=float(config.get("momentum", 0.0) or 0.0), weight_decay=wd
        )
    raise ValueError(f"optimizer {name!r}: allowed are sgd, adam, rmsprop")


def confusion_update(confusion, logits, target) -> None:
    """Add a batch to `confusion` ([C, C] int64 on the batch's device, rows = true class,
    columns = predicted) with one fixed-size `index_add_`: no value is read back to the host,
    unlike torchmetrics' per-step `bincount` on CUDA."""
    c = confusion.shape[0]
    pairs = target * c + logits.argmax(dim=1)
    confusion.view(-1).index_add_(0, pairs, pairs.new_ones(pairs.shape))


def confusion_metrics(confusion) -> tuple[float, float]:
    """(micro accuracy, macro precision) of an accumulated confusion matrix, as torchmetrics
    defines them (its functional metrics on the (target, prediction) pairs the matrix counts).
    Read once per epoch: one device-to-host copy of C x C counts."""
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    import torch
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_precision

    counts = confusion.detach().cpu().reshape(-1)
    c = confusion.shape[0]
    pairs = torch.repeat_interleave(torch.arange(c * c), counts)
    target, preds = pairs // c, pairs % c
    if pairs.numel() == 0:
        return 0.0, 0.0
    acc = multiclass_accuracy(preds, target, c, average="micro", validate_args=False)
    prec = multiclass_precision(preds, target, c, average="macro", validate_args=False)
    return float(acc), float(prec)


def _evaluate(model, batches, num_classes: int, autocast, *, probs: bool = False) -> dict[str, Any]:
    """Loss, accuracy, macro precision and confusion matrix of `model` on `batches`: everything
    accumulates on the device, and is read back once at the end. With `probs`, also each
    image's class probabilities (softmax), float32 [n, C] in the batches' order."""
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    confusion = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), device=device)
    n = 0
    kept = []
    model.eval()
    with torch.inference_mode():
        for x, y in batches:
            with autocast():
                logits = model(x)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            n += y.numel()
            confusion_update(confusion, logits, y)
            if probs:
                kept.append(torch.softmax(logits, dim=1))
    accuracy, macro_precision = confusion_metrics(confusion)
    out = {
        "loss": loss_sum.item() / max(n, 1),
        "accuracy": accuracy,
        "macro_precision": macro_precision,
        "confusion": confusion.cpu().tolist(),
    }
    if probs:
        out["probs"] = (
            torch.cat(kept).cpu().numpy() if kept else np.zeros((0, num_classes), np.float32)
        )
    return out


class Trainer:
    """Model, optimizer and batches of one trial, outside Ray: the trainable, the same-init
    warm-up and the k-fold re-training all run their epochs through it."""

    def __init__(
        self,
        cfg,
        config: dict[str, Any],
        data: TrialData,
        settings: TrialSettings,
        *,
        train_idx,
        val_idx,
        device: str | None = None,
    ) -> None:
        """`device`: where to train; by default CUDA when `settings.gpus > 0` (GPUUnavailable
        when CUDA cannot be used: a trial given a GPU never trains on the CPU), else the CPU."""
        # lazy: torch takes ~2.5 s to import; only building or training a model needs it
        import torch

        # lazy: torch takes ~2.5 s to import; only building or training a model needs it
        from hpsearch.data_pipeline import Batches

        torch.set_num_threads(max(1, int(settings.cpus)))
        if device is None:
            if settings.gpus > 0:
                require_cuda()
            device = "cuda" if settings.gpus > 0 else "cpu"
        self.device = device
        if self.device.startswith("cuda"):
            limit_memory(settings.gpus or 1.0, self.device)
            torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN picks its fastest kernels
        image_bytes = (len(train_idx) + len(val_idx)) * math.prod(data.images.shape[1:])
        self.data_placement = data_placement(self.device, image_bytes, settings)
        self.precision = choose_precision(settings.precision, self.device)
        fast = self.precision == "bf16"
        device_type = self.device.split(":")[0]  # not `self`: no cycle keeps a trial alive
        self._autocast = (
            (lambda: torch.autocast(device_type=device_type, dtype=torch.bfloat16))
            if fast
            else contextlib.nullcontext
        )
        self.seed = int(config.get("seed", settings.seed))  # search.space.seed, else train.seed
        self.num_classes = data.num_classes
        torch.manual_seed(self.seed)
        self.model = models.build(cfg)
        if data.init_state is not None:
            self.model.load_state_dict(data.init_state)
        self.channels_last = use_channels_last(self.precision, self.device)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model.to(device=self.device, memory_format=memory_format)
        groups = models.parameter_groups(
            self.model,
            lr=float(config.get("lr") or 0.01),
            backbone_lr_scale=float(config.get("backbone_lr_scale") or 1.0),
        )
        self.optimizer = make_optimizer(config, groups)
        # search.space.l1: the seed's L1 penalty on the weights (conv kernels, linear matrices;
        # biases and batch norm's scales are 1-d and left out), added to the training loss.
        self.l1 = float(config.get("l1") or 0.0)
        self._penalised = [p for p in self.model.parameters() if p.ndim > 1] if self.l1 else []
        batch_size = int(config.get("batch_size") or settings.batch_size)
        # Pretrained weights expect the inputs normalised as in their training (ImageNet's
        # mean/std); presets and randomly initialised backbones use the data's own.
        norm = models.input_normalization(cfg)
        mean, std = norm if norm is not None else (data.mean, data.std)
        self.normalization = (tuple(mean), tuple(std))
        common = dict(
            device=self.device,
            mean=mean,
            std=std,
            channels_last=self.channels_last,
            resident=self.data_placement == "device",
        )
        self.train_batches = Batches(
            data.images,
            data.labels,
            indices=train_idx,
            batch_size=batch_size,
            shuffle=True,
            seed=self.seed,
            augment=settings.augment,
            **common,
        )
        self.eval_train_batches = self.train_batches.with_options(
            batch_size=settings.eval_batch_size, shuffle=False, augment=False
        )
        self.val_idx, self.test_idx = np.asarray(val_idx), np.asarray(data.test_idx)
        self._eval_data = (data.images, data.labels)
        self._eval_options = dict(batch_size=settings.eval_batch_size, shuffle=False, **common)
        self.val_batches = Batches(*self._eval_data, indices=val_idx, **self._eval_options)
        self._confusion = torch.zeros(
            (self.num_classes, self.num_classes), dtype=torch.int64, device=self.device
        )

    def close(self) -> None:
        """Drop the model, optimizer, metrics and batches (with any device-resident images), so
        their memory is free even while something (a traceback) still holds the trainer."""
        for name in (
            "model",
            "optimizer",
            "train_batches",
            "eval_train_batches",
            "val_batches",
            "_eval_data",
            "_confusion",
            "_penalised",
        ):
            self.__dict__.pop(name, None)

    def weights_digest(self) -> str:
        """A fingerprint of the current weights (same digest = identical weights)."""

        h = hashlib.sha1()
        for name, tensor in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch; returns step losses, train metrics, seconds, images/s. The step losses
        are checked by the caller: a non-finite loss means the trial diverged. The steps never
        wait for the device: losses and the confusion matrix stay there until the epoch ends."""
        # lazy: torch takes ~2.5 s to import; only building or training a model needs it
        import torch

        t0 = time.perf_counter()
        torch.manual_seed(self.seed * 1000 + epoch)  # dropout masks: the same after a resume
        self.train_batches.set_epoch(epoch)
        self._confusion.zero_()
        losses, n_images = self.run_steps(self.train_batches)
        step_loss = torch.stack(losses).float().cpu().tolist()  # the epoch's one wait
        accuracy, macro_precision = confusion_metrics(self._confusion)
        seconds = time.perf_counter() - t0
        return {
            "step_loss": step_loss,
            "train_loss": sum(step_loss) / len(step_loss),
            "train_accuracy": accuracy,
            "train_macro_precision": macro_precision,
            "seconds": seconds,
            "images_per_s": n_images / seconds,
        }

    def run_steps(self, batches) -> tuple[list[Any], int]:
        """Train on every batch of `batches` (one epoch of them): the losses as device tensors
        and the number of images. Nothing in here reads a value back to the host."""
        # lazy: torch takes ~2.5 s to import; only building or training a model needs it
        import torch.nn.functional as F

        self.model.train()
        losses, n_images = [], 0
        for x, y in batches:
            with self._autocast():
                logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y)
            if self.l1:
                loss = loss + self.l1 * l1_norm(self._penalised)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
            confusion_update(self._confusion, logits.detach(), y)
            n_images += y.numel()
        return losses, n_images

    def evaluate(self, batches, *, probs: bool = False) -> dict[str, Any]:
        return _evaluate(self.model, batches, self.num_classes, self._autocast, probs=probs)

    def batches(self, indices):
        """Evaluation batches of other rows of the data (unshuffled, in `indices`' order),
        streamed rather than kept on the device: one pass reads them."""
        # lazy: torch takes ~2.5 s to import; only building or training a model needs it
        from hpsearch.data_pipeline import Batches

        return Batches(
            *self._eval_data, indices=indices, **{**self._eval_options, "resident": False}
        )


def write_predictions(trainer: Trainer, held_out_probs) -> None:
    """A k-fold trial's out-of-sample predictions, into its folder (PREDICTIONS_NPZ): the class
    probabilities of its held-out fold's images and of the test part's (`hpsearch audit` reads
    them; nothing is selected on the test part)."""
    rows, probs = [trainer.val_idx], [held_out_probs]
    if len(trainer.test_idx):
        rows.append(trainer.test_idx)
        probs.append(trainer.evaluate(trainer.batches(trainer.test_idx), probs=True)["probs"])
    buf = io.BytesIO()
    np.savez(buf, rows=np.concatenate(rows).astype(np.int64), probs=np.concatenate(probs))
    write_trial_file(PREDICTIONS_NPZ, buf.getvalue())


def l1_norm(params):
    """The sum of |w| over `params`, as one tensor (differentiable)."""
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    import torch

    return torch.stack([p.abs().sum() for p in params]).sum()


def first_non_finite(values: list[float]) -> int | None:
    return next((i for i, v in enumerate(values) if not math.isfinite(v)), None)


def train_trial(config: dict[str, Any], *, data: TrialData, settings: TrialSettings) -> None:
    """Ray Tune function trainable. `data` holds the cache arrays (shared through the object
    store), `settings` the experiment's fixed training settings. With `fold` in the config it
    trains on the other folds, validates on that one, and at the end also evaluates the
    training folds (for the k-fold train-vs-test error estimates).

    With `reuse_actors` the next trial runs in the same process: whatever this one held on the
    device is released when it returns or raises (an exception's traceback would otherwise keep
    the frames, and with them the model, optimizer and images, alive: ray-project/ray#32725)."""
    try:
        _run_trial(config, data=data, settings=settings)
    except BaseException as e:
        traceback.clear_frames(e.__traceback__)  # the locals of the frames it passed through
        raise
    finally:
        release_device_memory()


def _run_trial(config: dict[str, Any], *, data: TrialData, settings: TrialSettings) -> None:
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    import torch

    metric, mode = settings.metric, settings.mode
    try:
        cfg = model_config(
            config,
            image_size=settings.image_size,
            num_classes=data.num_classes,
            budget=settings.budget,  # counted by arithmetic: nothing is built over budget
        )
    except (InfeasibleArchitecture, OverBudget) as e:
        # Ended before any training, with the worst score: TPE learns the region's boundary.
        result = {metric: worst_value(mode), "status": INFEASIBLE, "reason": str(e), "epoch": 0}
        if isinstance(e, OverBudget):  # its cost, for trials.parquet and Optuna's attributes
            result.update(params=e.params, macs=e.macs)
        tune.report(result)
        return
    train_idx, val_idx = data.split(config.get("fold"))
    progress = {"epoch": 0, "placement": None}
    try:
        trainer = Trainer(cfg, config, data, settings, train_idx=train_idx, val_idx=val_idx)
        progress["placement"] = trainer.data_placement
        try:
            _train(trainer, cfg, config, settings, progress)
        finally:
            trainer.close()
    except torch.cuda.OutOfMemoryError as e:
        # Out of its share of the device: not a crash to retry (it would run out again), but
        # a region of the space TPE should learn to avoid, scored like an infeasible one.
        traceback.clear_frames(e.__traceback__)
        trainer = None
        release_device_memory()
        tune.report(
            {
                metric: worst_value(mode),
                "status": OOM,
                "reason": oom_reason(config, settings, progress),
                "epoch": progress["epoch"],
            }
        )


def oom_reason(config: dict[str, Any], settings: TrialSettings, progress: dict[str, Any]) -> str:
    """What an out-of-memory trial tells the user: where it ran out and what to change."""
    batch = int(config.get("batch_size") or settings.batch_size)
    where = f"in epoch {progress['epoch']}" if progress["epoch"] else "while starting"
    placed = progress["placement"]
    fixes = [
        f"a smaller train.batch_size (now {batch})",
        f"a larger resources.gpus (now {settings.gpus}: fewer trials share the device)",
    ]
    if placed == "device":
        fixes.append("train.data_on_device: never (stream the images instead of keeping them)")
    return (
        f"CUDA out of memory {where}, within the trial's {settings.gpus:g} share of the GPU "
        f"(images {placed or 'not yet placed'}); try " + ", or ".join(fixes)
    )


def _train(
    trainer: Trainer,
    cfg,
    config: dict[str, Any],
    settings: TrialSettings,
    progress: dict[str, Any],
) -> None:
    metric, mode = settings.metric, settings.mode
    params, macs = models.cost(cfg)
    convs = getattr(cfg, "convs", ())  # a backbone's layers are torchvision's own
    facts = {
        "params": params,
        "macs": macs,
        "model_channels": encode_layers([c.out_channels for c in convs]),
        "model_strides": encode_layers([c.stride for c in convs]),
        "model_kernels": encode_layers([c.kernel for c in convs]),
        "model_mlp": encode_layers(cfg.mlp),
        "model_dropout": cfg.dropout,
        "model_batchnorm": cfg.batchnorm,
        "precision": trainer.precision,
        "channels_last": trainer.channels_last,
        "device": trainer.device,
        "data_placement": trainer.data_placement,  # device, stream (GPU) or host (CPU)
        "init_digest": trainer.weights_digest(),
        # Which Ray node ran the epoch: node IPs coincide for nodes sharing a machine.
        "node_id": ray.get_runtime_context().get_node_id(),
    }
    start_epoch, reports = 0, []
    restored = restore(trainer.device)
    if restored is not None:
        trainer.model.load_state_dict(restored.state["model"])
        trainer.optimizer.load_state_dict(restored.state["optimizer"])
        start_epoch, reports = restored.state["epoch"] + 1, restored.reports
        # Again, marked: the result file may lack the epochs since Tune's last snapshot.
        for report in replayed(reports):
            tune.report(report)
        del restored  # a second copy of the weights, on the trial's device

    epochs = settings.epochs
    for epoch in range(start_epoch, epochs):
        progress["epoch"] = epoch + 1
        result: dict[str, Any] = {"epoch": epoch + 1, **facts, **trainer.train_epoch(epoch)}
        bad = first_non_finite(result["step_loss"])
        if bad is not None:
            result.update(
                {
                    metric: worst_value(mode),
                    "status": DIVERGED,
                    "step_loss": result["step_loss"][: bad + 1],
                    "reason": f"non-finite training loss at step {bad + 1} of epoch {epoch + 1}",
                }
            )
            for key in ("train_loss", "train_accuracy", "train_macro_precision"):
                result.pop(key)
            tune.report(result)
            return
        t0 = time.perf_counter()
        last_of_fold = config.get("fold") is not None and epoch + 1 == epochs
        val = trainer.evaluate(trainer.val_batches, probs=last_of_fold)
        result.update(
            {
                "status": RUNNING,
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "val_macro_precision": val["macro_precision"],
                "confusion": val["confusion"],
            }
        )
        if config.get("fold") is not None and epoch + 1 == epochs:
            train_eval = trainer.evaluate(trainer.eval_train_batches)
            result.update({f"train_eval_{k}": v for k, v in train_eval.items() if k != "confusion"})
            write_predictions(trainer, val.pop("probs"))
        result["seconds"] += time.perf_counter() - t0
        reports.append(result)
        report_with_checkpoint(result, trainer.model, trainer.optimizer, epoch, reports)
