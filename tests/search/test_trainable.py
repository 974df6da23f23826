from __future__ import annotations

import pytest
import torch

from hpsearch.search.experiment.dimensions import OPTIMIZER_DEFAULTS
from hpsearch.search.trial.report import worst_value
from hpsearch.search.trial.trainable import choose_precision, make_optimizer


def params():
    return [torch.nn.Parameter(torch.zeros(3))]


def test_explicit_precision_is_kept():
    assert choose_precision("fp32", "cpu") == "fp32"
    assert choose_precision("bf16", "cpu") == "bf16"


def test_auto_precision_follows_the_cpu_capability(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert choose_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert choose_precision("auto", "cpu") == "fp32"


def test_auto_precision_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert choose_precision("auto", "cuda") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert choose_precision("auto", "cuda:0") == "bf16"


@pytest.mark.parametrize(
    ("config", "cls", "expected"),
    [
        (
            {"optimizer": "sgd", "lr": 0.05, "momentum": 0.8, "weight_decay": 1e-4},
            torch.optim.SGD,
            {"lr": 0.05, "momentum": 0.8, "weight_decay": 1e-4},
        ),
        ({"optimizer": "adam", "lr": 3e-4}, torch.optim.Adam, {"lr": 3e-4, "weight_decay": 0.0}),
        (
            {"optimizer": "rmsprop", "lr": 1e-3, "momentum": 0.5},
            torch.optim.RMSprop,
            {"lr": 1e-3, "momentum": 0.5},
        ),
    ],
)
def test_make_optimizer(config, cls, expected):
    opt = make_optimizer(config, params())
    assert isinstance(opt, cls)
    for key, value in expected.items():
        assert opt.param_groups[0][key] == pytest.approx(value)


def test_make_optimizer_rejects_unknown_names():
    with pytest.raises(ValueError, match="allowed are sgd, adam, rmsprop"):
        make_optimizer({"optimizer": "lion"}, params())


def test_defaults_cover_every_optimizer():
    assert set(OPTIMIZER_DEFAULTS) == {"sgd", "adam", "rmsprop"}


def test_worst_value_is_the_worst_for_the_mode():
    assert worst_value("max") == 0.0
    assert worst_value("min") == float("inf")


def test_fp32_on_the_cpu_trains_channels_last(make_trainer):
    from hpsearch.search.trial.trainable import use_channels_last

    assert use_channels_last("fp32", "cpu") and use_channels_last("bf16", "cuda")
    assert not use_channels_last("fp32", "cuda:0")
    trainer = make_trainer()
    assert trainer.channels_last
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x, _ = next(iter(trainer.train_batches))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_changes_speed_not_results(monkeypatch, make_trainer):
    """The same arithmetic in another memory layout: the same losses and weights to rounding."""
    fast = make_trainer(monkeypatch, channels_last=True)
    plain = make_trainer(monkeypatch, channels_last=False)
    assert not plain.channels_last
    a, b = fast.train_epoch(0), plain.train_epoch(0)
    assert a["step_loss"] == pytest.approx(b["step_loss"], rel=1e-4)
    for p, q in zip(fast.model.parameters(), plain.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("first_raises", [False, True], ids=["returns", "raises"])
def test_a_trial_releases_its_memory_before_the_next_one_on_the_actor(
    monkeypatch, tiny_data, tiny_settings, first_raises
):
    """Two trials in one process, as Tune runs them on a reused actor: when the second one
    starts, nothing of the first is left (model, optimizer, device-resident images), even while
    the first one's exception, traceback and frames are still held (Tune keeps a trial's error;
    ray-project/ray#32725), and the allocator's cached CUDA blocks are handed back after each."""
    import types
    import weakref

    import ray
    from ray import tune

    from hpsearch.search.trial import trainable

    # Resident images, on the CPU: what a GPU trial within its memory budget holds.
    monkeypatch.setattr(trainable, "data_placement", lambda *a: "device")
    held: list[list[weakref.ref]] = []
    alive_when_starting: list[int] = []

    class Watched(trainable.Trainer):
        def __init__(self, *args, **kwargs):
            alive_when_starting.append(sum(r() is not None for refs in held for r in refs))
            super().__init__(*args, **kwargs)
            assert self.train_batches.placement == "device"
            objects = (self.model, self.optimizer, self.train_batches._images)
            held.append([weakref.ref(o) for o in (*objects, self.val_batches._images)])

    monkeypatch.setattr(trainable, "Trainer", Watched)
    reports = []

    def report(result, checkpoint=None):
        reports.append(result)
        if first_raises and len(reports) == 1:
            raise RuntimeError("the trial failed")

    node = types.SimpleNamespace(get_node_id=lambda: "node")
    monkeypatch.setattr(tune, "report", report)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: node)
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(len(reports)))

    config = {"arch": "FlatAlexNet", "width": 0.125, "mlp": "16", "optimizer": "sgd", "lr": 0.05}
    data, settings = tiny_data(), tiny_settings(epochs=2)
    kept = None
    if first_raises:
        with pytest.raises(RuntimeError, match="the trial failed") as kept:
            trainable.train_trial(config, data=data, settings=settings)
        assert kept.value.__traceback__ is not None  # still held, with its frames
    else:
        trainable.train_trial(config, data=data, settings=settings)
    trainable.train_trial(config, data=data, settings=settings)
    assert len(held) == 2
    assert alive_when_starting == [0, 0]  # nothing of trial 1 when trial 2 started
    assert all(r() is None for refs in held for r in refs)  # nor of trial 2 after it
    assert emptied == ([1, 3] if first_raises else [2, 4])  # after each trial
    assert reports[-1]["data_placement"] == "device" and reports[-1]["device"] == "cpu"
    del kept


def test_l1_adds_lambda_times_the_weights_abs_sum_to_the_step_loss(tiny_data, tiny_settings):
    """search.space.l1: a step's loss is cross-entropy + l1 x sum |w| over the conv and linear
    weights; biases and batch norm's parameters are not penalised."""
    import copy

    import numpy as np
    import torch.nn.functional as F

    from hpsearch.search.experiment.space import model_config
    from hpsearch.search.trial.trainable import Trainer

    lam = 1e-3
    config = {
        "arch": "FlatAlexNet", "width": 0.125, "mlp": "16", "batchnorm": True,
        "optimizer": "sgd", "lr": 0.05, "l1": lam,
    }  # fmt: skip
    cfg = model_config(config, image_size=16, num_classes=3)
    data, settings = tiny_data(), tiny_settings()
    trainer = Trainer(
        cfg, config, data, settings, train_idx=np.arange(32), val_idx=np.arange(32, 48)
    )
    # by hand, before the first step: the same start weights and the same first batch
    model = copy.deepcopy(trainer.model).train()
    trainer.train_batches.set_epoch(0)
    x, y = next(iter(trainer.train_batches))
    names = dict(model.named_parameters())
    weights = [p for n, p in names.items() if n.endswith("weight") and p.ndim > 1]
    assert any(n.endswith("bias") for n in names)
    assert any(p.ndim == 1 and n.endswith("weight") for n, p in names.items())  # batch norm
    expected = F.cross_entropy(model(x).float(), y).item() + lam * sum(
        p.detach().abs().sum().item() for p in weights
    )
    penalised = {id(p) for p in trainer._penalised}
    kept_out = [
        n for n, p in trainer.model.named_parameters() if p.ndim == 1 and id(p) in penalised
    ]
    assert not kept_out and len(penalised) == len(weights)
    step_loss = trainer.train_epoch(0)["step_loss"][0]
    assert step_loss == pytest.approx(expected, rel=1e-5)
    without = Trainer(
        cfg,
        {**config, "l1": 0.0},
        data,
        settings,
        train_idx=np.arange(32),
        val_idx=np.arange(32, 48),
    )
    assert without.train_epoch(0)["step_loss"][0] == pytest.approx(
        expected - lam * sum(p.detach().abs().sum().item() for p in weights), rel=1e-5
    )


def test_pretrained_backbones_take_imagenet_normalisation_and_their_weights(
    tiny_data, tiny_settings, tmp_path, monkeypatch
):
    """`pretrained: imagenet` reads torchvision's cache file (written here: no download) and
    normalises the inputs as the weights were trained; random init keeps the data's own."""
    import numpy as np
    import torchvision

    from hpsearch.models import weights_file
    from hpsearch.models.backbones import IMAGENET_MEAN, IMAGENET_STD
    from hpsearch.search.experiment.space import model_config
    from hpsearch.search.trial.trainable import Trainer

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    state = torchvision.models.mobilenet_v3_small().state_dict()
    first = next(k for k, v in state.items() if v.ndim == 4)
    state[first] = torch.full_like(state[first], 0.125)
    path = weights_file("mobilenet_v3_small")
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    data, settings = tiny_data(size=32), tiny_settings(image_size=32)
    made = {}
    for pretrained in ("imagenet", "none"):
        config = {"arch": "tv/mobilenet_v3_small", "pretrained": pretrained, "mlp": "16",
                  "optimizer": "sgd", "lr": 0.01}  # fmt: skip
        cfg = model_config(config, image_size=32, num_classes=3)
        made[pretrained] = Trainer(
            cfg, config, data, settings, train_idx=np.arange(32), val_idx=np.arange(32, 48)
        )
    assert made["imagenet"].normalization == (IMAGENET_MEAN, IMAGENET_STD)
    assert made["none"].normalization == (tuple(data.mean), tuple(data.std))
    loaded = dict(made["imagenet"].model.backbone.state_dict())
    assert torch.all(loaded[first] == 0.125)  # the cache file's weights, before any step
    assert not torch.all(dict(made["none"].model.backbone.state_dict())[first] == 0.125)
    assert made["imagenet"].model(next(iter(made["imagenet"].train_batches))[0]).shape[1] == 3
