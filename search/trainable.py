"""The Ray Tune trainable: one trial = build the model, train it for some epochs on batches
sliced from the shared cache arrays, report metrics and a checkpoint after every epoch.

Every epoch reports `train_loss`, `train_accuracy`, `train_macro_precision`, `val_loss`,
`val_accuracy`, `val_macro_precision` (torchmetrics), `seconds`, `images_per_s`, the per-step
training losses (`step_loss`) and the validation confusion matrix (`confusion`). `status` is
`running`, or `infeasible` / `diverged` on the trial's last report.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from typing import Any

CHECKPOINT_FILE = "state.pt"


def choose_precision(requested: str, device: str) -> str:
    """'bf16' or 'fp32'. `auto` picks bf16 autocast only where the hardware runs it fast:
    CUDA with bf16 support, or a CPU with AMX tiles. Elsewhere bf16 is emulated and slower."""
    import torch

    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return "bf16" if amx is not None and amx() else "fp32"


def make_optimizer(config: dict[str, Any], params):
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


def worst_value(mode: str) -> float:
    # What an infeasible or diverged trial tells the sampler: the worst possible score, so TPE
    # learns to avoid that region (a failed Optuna trial would teach it nothing).
    return 0.0 if mode == "max" else float("inf")


def _evaluate(model, batches, num_classes: int, autocast) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassConfusionMatrix,
        MulticlassPrecision,
    )

    device = next(model.parameters()).device
    acc = MulticlassAccuracy(num_classes, average="micro").to(device)
    prec = MulticlassPrecision(num_classes, average="macro").to(device)
    confusion = MulticlassConfusionMatrix(num_classes).to(device)
    loss_sum = torch.zeros((), device=device)
    n = 0
    model.eval()
    with torch.inference_mode():
        for x, y in batches:
            with autocast():
                logits = model(x)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            n += y.numel()
            acc.update(logits, y)
            prec.update(logits, y)
            confusion.update(logits, y)
    return {
        "loss": loss_sum.item() / max(n, 1),
        "accuracy": acc.compute().item(),
        "macro_precision": prec.compute().item(),
        "confusion": confusion.compute().cpu().tolist(),
    }


def _report_with_checkpoint(result: dict[str, Any], model, optimizer, epoch: int) -> None:
    import torch
    from ray import tune

    # Ray copies the directory into the run's storage during report(), so it can go after.
    with tempfile.TemporaryDirectory(prefix="hpsearch-ckpt-") as tmp:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
        torch.save(state, os.path.join(tmp, CHECKPOINT_FILE))
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))


def train_trial(config: dict[str, Any], *, data: dict[str, Any], settings: dict[str, Any]) -> None:
    """Ray Tune function trainable. `data` holds the cache arrays (shared through the object
    store), `settings` the experiment's fixed training settings."""
    import contextlib

    import torch
    import torch.nn.functional as F
    from ray import tune
    from torchmetrics.classification import MulticlassAccuracy, MulticlassPrecision

    from data_pipeline import Batches
    from models import ConvNet, InfeasibleArchitecture, count_macs, count_params
    from search.space import encode_layers, model_config

    metric, mode = settings["metric"], settings["mode"]
    num_classes = len(data["classes"])
    try:
        cfg = model_config(config, image_size=settings["image_size"], num_classes=num_classes)
    except InfeasibleArchitecture as e:
        tune.report(
            {metric: worst_value(mode), "status": "infeasible", "reason": str(e), "epoch": 0}
        )
        return
    facts = {
        "params": count_params(cfg),
        "macs": count_macs(cfg),
        "model_channels": encode_layers([c.out_channels for c in cfg.convs]),
        "model_strides": encode_layers([c.stride for c in cfg.convs]),
        "model_kernels": encode_layers([c.kernel for c in cfg.convs]),
        "model_mlp": encode_layers(cfg.mlp),
        "model_dropout": cfg.dropout,
        "model_batchnorm": cfg.batchnorm,
    }

    threads = max(1, int(settings.get("cpus", 1)))
    torch.set_num_threads(threads)
    device = "cuda" if settings.get("gpus", 0) > 0 and torch.cuda.is_available() else "cpu"
    precision = choose_precision(settings["precision"], device)
    fast = precision == "bf16"
    memory_format = torch.channels_last if fast else torch.contiguous_format

    def autocast():
        if not fast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)

    seed = int(settings["seed"])
    torch.manual_seed(seed)
    model = ConvNet(cfg).to(device=device, memory_format=memory_format)
    optimizer = make_optimizer(config, model.parameters())
    start_epoch = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(
                os.path.join(d, CHECKPOINT_FILE), map_location=device, weights_only=True
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1

    batch_size = int(config.get("batch_size") or settings["batch_size"])
    common = dict(device=device, mean=data["mean"], std=data["std"], channels_last=fast)
    train_batches = Batches(
        data["images"],
        data["labels"],
        indices=data["train_idx"],
        batch_size=batch_size,
        shuffle=True,
        seed=seed,
        augment=settings.get("augment", False),
        **common,
    )
    val_batches = Batches(
        data["images"],
        data["labels"],
        indices=data["val_idx"],
        batch_size=settings["eval_batch_size"],
        shuffle=False,
        **common,
    )
    train_acc = MulticlassAccuracy(num_classes, average="micro").to(device)
    train_prec = MulticlassPrecision(num_classes, average="macro").to(device)

    for epoch in range(start_epoch, settings["epochs"]):
        t0 = time.perf_counter()
        torch.manual_seed(seed * 1000 + epoch)  # dropout masks: the same after a resume
        train_batches.set_epoch(epoch)
        train_acc.reset()
        train_prec.reset()
        model.train()
        losses = []
        n_images = 0
        for x, y in train_batches:
            with autocast():
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            train_acc.update(logits.detach().float(), y)
            train_prec.update(logits.detach().float(), y)
            n_images += y.numel()
        step_loss = torch.stack(losses).float().cpu().tolist()
        train_seconds = time.perf_counter() - t0
        result: dict[str, Any] = {
            "epoch": epoch + 1,
            "precision": precision,
            "device": device,
            **facts,
        }
        if not all(math.isfinite(v) for v in step_loss):
            first_bad = next(i for i, v in enumerate(step_loss) if not math.isfinite(v))
            result.update(
                {
                    metric: worst_value(mode),
                    "status": "diverged",
                    "step_loss": step_loss[: first_bad + 1],
                    "reason": f"non-finite training loss at step {first_bad + 1} of epoch {epoch + 1}",
                }
            )
            tune.report(result)
            return
        val = _evaluate(model, val_batches, num_classes, autocast)
        result.update(
            {
                "status": "running",
                "train_loss": sum(step_loss) / len(step_loss),
                "train_accuracy": train_acc.compute().item(),
                "train_macro_precision": train_prec.compute().item(),
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "val_macro_precision": val["macro_precision"],
                "confusion": val["confusion"],
                "step_loss": step_loss,
                "seconds": time.perf_counter() - t0,
                "images_per_s": n_images / train_seconds,
            }
        )
        _report_with_checkpoint(result, model, optimizer, epoch)
