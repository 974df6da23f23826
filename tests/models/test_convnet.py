from __future__ import annotations

import pytest
import torch
from torch import nn

from hpsearch.models import (
    ConvNet,
    ConvNetConfig,
    ConvSpec,
    InfeasibleArchitecture,
    build,
    count_macs,
    count_params,
    create_model,
    feature_shapes,
    get_config,
    list_models,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_small(name, feature_shapes_of):
    cfg = get_config(name, image_size=32, num_classes=5)
    model = ConvNet(cfg)
    assert n_params(model) == count_params(cfg)
    assert count_macs(cfg) > 0
    assert feature_shapes_of(model, 32) == feature_shapes(cfg)
    out = model.train()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5)
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", list_models())
def test_feature_shapes_match_a_real_forward_at_227(name, feature_shapes_of):
    cfg = get_config(name)
    model = ConvNet(cfg)
    assert n_params(model) == count_params(cfg)
    assert feature_shapes_of(model, 227) == feature_shapes(cfg)


@pytest.mark.parametrize("name", ["AlexNet", "FlatAlexNetOpt"])
def test_batchnorm_dropout_variants(name, feature_shapes_of):
    cfg = get_config(name, image_size=32, batchnorm=True, dropout=0.3, mlp=(64, 32), num_classes=7)
    model = ConvNet(cfg)
    assert n_params(model) == count_params(cfg)
    assert feature_shapes_of(model, 32) == feature_shapes(cfg)
    kinds = [type(m) for m in model.modules()]
    assert kinds.count(nn.BatchNorm2d) == len(cfg.convs)
    assert kinds.count(nn.Dropout) == 2
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    model.train()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_module_names_follow_the_layer_table():
    model = create_model("AlexNet", image_size=32, mlp=(16,), dropout=0.1)
    assert list(dict(model.features.named_children())) == [
        "conv1", "relu1", "pool1", "conv2", "relu2", "pool2",
        "conv3", "relu3", "conv4", "relu4", "conv5", "relu5", "pool3",
    ]  # fmt: skip
    assert list(dict(model.classifier.named_children())) == [
        "flatten", "drop1", "fc1", "relu1", "head",
    ]  # fmt: skip
    assert model.cfg == get_config("AlexNet", image_size=32, mlp=(16,), dropout=0.1)


def test_forward_is_features_then_head():
    model = create_model("FlatAlexNet", image_size=32, num_classes=3, mlp=(8,)).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape[1:] == feature_shapes(model.cfg)[-1][1]
    torch.testing.assert_close(model.forward_head(feats), model(x))


def test_grayscale_input_and_no_mlp():
    cfg = get_config("NarrowAlexNet", image_size=32, in_channels=1, mlp=())
    model = ConvNet(cfg)
    assert [m for m in model.classifier if isinstance(m, nn.Linear)] == [model.classifier.head]
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert n_params(model) == count_params(cfg)


def test_infeasible_config_fails_before_allocating(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a layer was allocated before the shape check")

    monkeypatch.setattr(nn, "Conv2d", boom)
    monkeypatch.setattr(nn, "Linear", boom)
    cfg = ConvNetConfig(convs=(ConvSpec(8, 11, stride=4),), image_size=8)
    with pytest.raises(InfeasibleArchitecture, match="^conv1"):
        ConvNet(cfg)
    with pytest.raises(InfeasibleArchitecture, match="^conv3"):
        create_model("AlexNet", image_size=32, kernels=(11, 11, 11, 11, 11))


def test_build_accepts_a_dict():
    cfg = get_config("FlatAlexNet", image_size=32, mlp=(8,))
    model = build(cfg.to_dict())
    assert model.cfg == cfg
    assert build(cfg).cfg == cfg
