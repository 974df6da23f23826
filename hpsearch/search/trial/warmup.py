"""Same initial weights for optimizer comparisons (the seed's protocol): train the experiment's
fixed architecture once with SGD, save the weights in the run directory, and start every trial
from them, so trials differ only by what the search varies (optimizer, lr, dropout, ...).

The warm-up trains in the driver, outside Ray, alone on this machine: on every core, and with
`resources.gpus > 0` on the whole GPU. A local run has checked that CUDA works here before it
gets this far (`driver.gpus`); a driver joined to a cluster may sit on a head without a GPU,
and then says that its warm-up trains on the CPU (the trials still train on the cluster's
GPUs). The model and the device memory it held are released when it ends, errors included."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpsearch.rundir import INIT_FILE, atomic_write
from hpsearch.search.errors import ExperimentError
from hpsearch.search.experiment.space import fixed_architecture, model_config
from hpsearch.search.trial import device
from hpsearch.search.trial.trainable import Trainer, first_non_finite

if TYPE_CHECKING:
    from hpsearch.search.experiment.schema import Experiment
    from hpsearch.search.trial.inputs import TrialData, TrialSettings


def warmup_weights(
    exp: Experiment,
    data: TrialData,
    settings: TrialSettings,
    run_dir: Path,
    *,
    fold: int | None = None,
    path: Path | None = None,
) -> dict[str, Any]:
    """The shared initial state dict: read from `path` (default `run_dir/init_weights.pt`) if
    an earlier call (or the interrupted run being resumed) wrote it, else trained now and
    written there. It trains on `data.split(fold)`'s training rows only: the search's train
    part, or for a k-fold fold the other folds, so no image a fold is evaluated on has shaped
    the weights that fold starts from."""
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    import torch

    path = Path(path) if path is not None else Path(run_dir) / INIT_FILE
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    warm = exp.train.same_init
    config = {
        **fixed_architecture(exp.search.space),
        "optimizer": "sgd",
        "lr": warm.lr,
        "momentum": warm.momentum,
    }
    cfg = model_config(config, image_size=exp.data.image_size, num_classes=data.num_classes)
    settings = dataclasses.replace(settings, cpus=os.cpu_count() or 1, gpus=warmup_gpus(settings))
    train_idx, val_idx = data.split(fold)
    trainer = None
    try:
        trainer = Trainer(cfg, config, data, settings, train_idx=train_idx, val_idx=val_idx)
        for epoch in range(warm.epochs):
            losses = trainer.train_epoch(epoch)["step_loss"]
            bad = first_non_finite(losses)
            if bad is not None:
                raise ExperimentError(
                    f"train.same_init: the SGD warm-up{'' if fold is None else f' of fold {fold}'} "
                    f"diverged at step {bad + 1} of epoch {epoch + 1}; "
                    f"lower train.same_init.lr (now {warm.lr})"
                )
        state = {k: v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()}
    finally:
        if trainer is not None:
            trainer.close()
        trainer = None
        device.release_device_memory()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(state, f))
    return state


def warmup_gpus(settings: TrialSettings) -> float:
    """The warm-up's `gpus`: the whole device when the trials have GPUs and CUDA works here; 0
    (the CPU, said on the console) when CUDA does not: a driver joined to a cluster from a
    head without a GPU (a local run was refused before it got here)."""
    if settings.gpus <= 0:
        return 0.0
    problem = device.cuda_problem()
    if problem is None:
        return 1.0
    print(
        "train.same_init: the SGD warm-up trains in this driver process, on its CPU, since this "
        f"machine has no GPU CUDA can use ({problem.split(';')[0]}); the trials train on GPUs"
    )
    return 0.0
