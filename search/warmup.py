"""Same initial weights for optimizer comparisons (the seed's protocol): train the experiment's
fixed architecture once with SGD, save the weights in the run directory, and start every trial
from them, so trials differ only by what the search varies (optimizer, lr, dropout, ...)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from search.schema import Experiment

INIT_FILE = "init_weights.pt"


def fixed_architecture(exp: Experiment) -> dict[str, Any]:
    """The trial-config keys that decide the weights' shapes, for a space that fixes them."""
    import optuna

    from search.space import DefineSpace

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    config = DefineSpace(exp.search.space)(study.ask())
    keep = ("arch", "width", "strides", "kernels", "mlp", "batchnorm", "dropout")
    return {k: v for k, v in config.items() if k in keep}


def warmup_weights(exp: Experiment, data: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The shared initial state dict: read from `run_dir/init_weights.pt` if an earlier call
    (or the interrupted run being resumed) wrote it, else trained now and written there."""
    import torch

    from search.space import model_config
    from search.trainable import Trainer, first_non_finite

    path = Path(run_dir) / INIT_FILE
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    warm = exp.train.same_init
    config = {
        **fixed_architecture(exp),
        "optimizer": "sgd",
        "lr": warm.lr,
        "momentum": warm.momentum,
    }
    cfg = model_config(config, image_size=exp.data.image_size, num_classes=len(data["classes"]))
    settings = {
        "precision": exp.train.precision,
        "seed": exp.train.seed,
        "batch_size": exp.train.batch_size,
        "eval_batch_size": exp.train.eval_batch_size,
        "cpus": os.cpu_count() or 1,
        "gpus": exp.resources.gpus,
    }
    trainer = Trainer(
        cfg, config, data, settings, train_idx=data["train_idx"], val_idx=data["val_idx"]
    )
    for epoch in range(warm.epochs):
        losses = trainer.train_epoch(epoch)["step_loss"]
        bad = first_non_finite(losses)
        if bad is not None:
            raise ValueError(
                f"train.same_init: the SGD warm-up diverged at step {bad + 1} of epoch {epoch + 1}; "
                f"lower train.same_init.lr (now {warm.lr})"
            )
    state = {k: v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return state
