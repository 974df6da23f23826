"""A trial's training steps never wait for the device: under torch's sync debug mode "error",
a few epochs' steps (resident and streamed, augmented or not) raise nothing. The epoch's end,
which reads the losses back once, is outside the check."""

from __future__ import annotations

import pytest
import torch

from hpsearch.search.experiment.space import model_config
from hpsearch.search.trial.trainable import Trainer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device: make gpu-check runs it"
    ),
]

CONFIG = {"arch": "FlatAlexNet", "width": 0.25, "mlp": "64", "optimizer": "sgd", "lr": 0.01}


def _trainer(cuda_kit, **settings) -> Trainer:
    data = cuda_kit.learnable_data()
    cfg = model_config(CONFIG, image_size=64, num_classes=data.num_classes)
    return Trainer(
        cfg, CONFIG, data, cuda_kit.gpu_settings(gpus=1.0, **settings),
        train_idx=data.train_idx, val_idx=data.val_idx,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("setting", "augment"), [("always", False), ("always", True), ("never", True)]
)
def test_training_steps_make_no_host_device_sync(cuda_kit, setting, augment) -> None:
    trainer = _trainer(cuda_kit, data_on_device=setting, augment=augment)
    assert trainer.device == "cuda" and trainer.train_batches.placement in ("device", "stream")
    trainer.train_epoch(0)  # warm-up, unchecked: cuDNN's autotuning, first-use allocations
    batches = trainer.train_batches
    for epoch in (1, 2):
        trainer.train_batches = checked = cuda_kit.SyncChecked(batches)
        result = trainer.train_epoch(epoch)  # a sync in a step raises RuntimeError here
        assert checked.steps == len(batches) > 1 and len(result["step_loss"]) == checked.steps
    assert torch.cuda.get_sync_debug_mode() == 0  # put back after each epoch
    trainer.close()


def test_the_sync_check_catches_a_sync_in_a_step(cuda_kit) -> None:
    """The test above can fail: a step that reads a value back raises."""
    trainer = _trainer(cuda_kit, data_on_device="always")
    trainer.train_epoch(0)
    trainer.train_batches = cuda_kit.SyncChecked(
        trainer.train_batches, extra=lambda x, y: y.sum().item()
    )
    before = torch.cuda.get_sync_debug_mode()
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            trainer.train_epoch(1)
    finally:  # the check's generator stays suspended while the exception holds its frame
        torch.cuda.set_sync_debug_mode(before)
    trainer.close()
