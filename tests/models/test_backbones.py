"""torchvision backbones with hpsearch's head: names, weights (offline), freezing, cost."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn

from hpsearch.models import (
    BackboneConfig,
    InfeasibleArchitecture,
    build_backbone,
    check_backbone_name,
    format_backbones_table,
    format_models_table,
    input_normalization,
    is_backbone,
    list_backbones,
    list_models,
    missing_weights,
    param_groups,
    size_warning,
    trained_size,
    weights_file,
)
from hpsearch.models import backbones as backbones_module
from hpsearch.models.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SUGGESTED,
    check_feasible,
    count_macs,
    count_params,
    feature_shape,
    fetch_weights,
    num_stages,
)

REPO = Path(__file__).resolve().parents[2]
KNOWN = 0.125  # a value random init never gives a whole tensor


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch.hub cache: the weights API looks here, and nothing is downloaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # torch.hub.set_dir would win over the env

    def no_network(url, *args, **kwargs):
        raise URLError(f"offline test: would download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch"


def _resnet18_state_with_known_conv1() -> dict[str, torch.Tensor]:
    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"].fill_(KNOWN)
    return state


# -- names -----------------------------------------------------------------------------------


def test_names_parse_and_the_suggested_ones_are_torchvision_models():
    assert is_backbone("tv/resnet18") and not is_backbone("AlexNet") and not is_backbone(None)
    assert list_backbones() == [f"tv/{n}" for n in SUGGESTED]
    assert [check_backbone_name(n) for n in list_backbones()] == list(SUGGESTED)
    assert check_backbone_name("resnet18") == "resnet18"
    assert BackboneConfig("tv/resnet18", 10, 32).name == "resnet18"
    assert not set(list_backbones()) & set(list_models())  # tv/alexnet is not the preset AlexNet


@pytest.mark.parametrize("name", ["tv/resnet19", "tv/ResNet18", "resnt18"])
def test_an_unknown_name_suggests_close_matches(name):
    with pytest.raises(ValueError, match=r"unknown backbone .*did you mean tv/resnet18"):
        check_backbone_name(name)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="freeze must be"):
        BackboneConfig("resnet18", 10, 32, freeze="stages")
    with pytest.raises(ValueError, match="dropout must be in"):
        BackboneConfig("resnet18", 10, 32, dropout=1.0)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        BackboneConfig("resnet18", 1, 32)
    with pytest.raises(ValueError, match="unknown config field 'lr'"):
        BackboneConfig("resnet18", 10, 32).replace(lr=0.1)
    cfg = BackboneConfig("resnet18", 10, 32, mlp=[64], pretrained="none", freeze="stages:2")
    assert cfg.mlp == (64,) and cfg.pretrained is None
    assert BackboneConfig.from_dict(cfg.to_dict()) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg


# -- the net ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mlp, batchnorm, dropout", [((), False, 0.0), ((), False, 0.3), ((32, 16), True, 0.2)]
)
def test_the_head_has_the_data_classes(mlp, batchnorm, dropout):
    cfg = BackboneConfig("mobilenet_v3_small", 7, 32, mlp=mlp, batchnorm=batchnorm, dropout=dropout)
    net = build_backbone(cfg)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    linears = [m for m in net.head if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [*mlp, 7]
    assert linears[0].in_features == feature_shape(cfg)[0] == 576
    assert any(isinstance(m, nn.BatchNorm1d) for m in net.head) == batchnorm
    assert any(isinstance(m, nn.Dropout) for m in net.head) == (dropout > 0)
    assert count_params(cfg) == sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", SUGGESTED)
def test_every_suggested_backbone_feeds_the_head_on_the_meta_device(name):
    cfg = BackboneConfig(name, 5, 64, mlp=(8,))
    with torch.device("meta"):
        net = backbones_module.BackboneNet(cfg, load_weights=False)
    out = net.eval()(torch.empty(1, 3, 64, 64, device="meta"))
    assert out.shape == (1, 5)
    assert net.head.fc1.in_features == feature_shape(cfg)[0]
    assert count_params(cfg) == sum(p.numel() for p in net.parameters())
    assert num_stages(name) >= 4


# -- weights, offline ------------------------------------------------------------------------


def test_imagenet_weights_load_from_the_cache_file_torchvision_expects(torch_home):
    path = weights_file("resnet18")
    url_name = Path(torchvision.models.ResNet18_Weights.DEFAULT.url).name
    assert path == torch_home / "hub" / "checkpoints" / url_name
    cfg = BackboneConfig("tv/resnet18", 3, 32, pretrained="imagenet")
    problem = missing_weights(cfg)
    assert str(path) in problem and "hpsearch weights fetch tv/resnet18" in problem
    with pytest.raises(FileNotFoundError, match="hpsearch weights fetch tv/resnet18"):
        build_backbone(cfg)

    path.parent.mkdir(parents=True)
    torch.save(_resnet18_state_with_known_conv1(), path)
    assert missing_weights(cfg) is None
    net = build_backbone(cfg)
    assert torch.equal(net.backbone.conv1.weight, torch.full_like(net.backbone.conv1.weight, KNOWN))
    assert isinstance(net.backbone.fc, nn.Identity)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert fetch_weights(["tv/resnet18"]) == [path]  # already cached: no download


def test_fetch_without_network_says_what_to_do(torch_home):
    with pytest.raises(
        RuntimeError, match=r"could not download .*resnet18.*download\.pytorch\.org"
    ):
        fetch_weights(["tv/resnet18"])


def test_pretrained_path_loads_a_state_dict_with_or_without_the_classifier(tmp_path):
    state = _resnet18_state_with_known_conv1()
    full, headless = tmp_path / "full.pt", tmp_path / "headless.pt"
    torch.save(state, full)
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, headless)
    for path in (full, headless):
        net = build_backbone(BackboneConfig("resnet18", 4, 32, pretrained=str(path)))
        assert torch.all(net.backbone.conv1.weight == KNOWN)

    # A BackboneNet's own state dict (another study's fine-tuned net) loads too.
    own = tmp_path / "own.pt"
    torch.save(net.state_dict(), own)
    again = build_backbone(BackboneConfig("resnet18", 9, 32, pretrained=str(own)))
    assert torch.all(again.backbone.conv1.weight == KNOWN)


def test_a_state_dict_missing_backbone_keys_is_an_error(tmp_path):
    state = {
        k: v for k, v in _resnet18_state_with_known_conv1().items() if k != "layer1.0.conv1.weight"
    }
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(
        ValueError, match=r"does not fit tv/resnet18: missing \['layer1.0.conv1.weight'\]"
    ):
        build_backbone(BackboneConfig("resnet18", 4, 32, pretrained=str(path)))


def test_a_missing_path_is_named(tmp_path):
    cfg = BackboneConfig("resnet18", 4, 32, pretrained=str(tmp_path / "nope.pt"))
    assert "nope.pt does not exist" in missing_weights(cfg)
    assert missing_weights(cfg.replace(pretrained=None)) is None


def test_normalisation_follows_pretrained_and_the_trained_size(tmp_path):
    cfg = BackboneConfig("resnet18", 4, 32)
    assert input_normalization(cfg) is None
    assert input_normalization(cfg.replace(pretrained="imagenet")) == (IMAGENET_MEAN, IMAGENET_STD)
    path = cfg.replace(pretrained=str(tmp_path / "w.pt"))
    assert input_normalization(path) == (IMAGENET_MEAN, IMAGENET_STD)
    assert trained_size("tv/resnet18") == 224
    assert size_warning(cfg) is None  # random init: no size to be near
    assert "trained on 224x224" in size_warning(cfg.replace(pretrained="imagenet"))
    assert size_warning(cfg.replace(pretrained="imagenet", image_size=160)) is None


# -- freezing --------------------------------------------------------------------------------


def _sgd_steps(net: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    net.train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    for _ in range(steps):  # from the second step on, momentum buffers act
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize(
    "freeze, frozen_prefixes",
    [
        ("backbone", ("backbone.",)),
        ("stages:1", ("backbone.conv1.", "backbone.bn1.")),
    ],
)
def test_frozen_parameters_and_buffers_do_not_move(freeze, frozen_prefixes):
    net = build_backbone(BackboneConfig("resnet18", 3, 32, mlp=(16,), freeze=freeze))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    frozen = {n for n, _ in net.named_parameters() if n.startswith(frozen_prefixes)}
    assert frozen and all(not p.requires_grad for n, p in net.named_parameters() if n in frozen)
    assert all(p.requires_grad for n, p in net.named_parameters() if n not in frozen)

    backbone, head = param_groups(net)
    trainable = {id(p) for p in backbone + head}
    assert {n for n, p in net.named_parameters() if id(p) not in trainable} == frozen
    assert {id(p) for p in head} == {id(p) for p in net.head.parameters()}
    groups = [{"params": head, "lr": 0.1}]
    if backbone:
        groups.append({"params": backbone, "lr": 0.01})
    # Every parameter handed over: requires_grad=False alone must keep them still.
    _sgd_steps(net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1), 1)
    _sgd_steps(net, torch.optim.SGD(groups, momentum=0.9, weight_decay=0.1), 2)

    after = net.state_dict()
    for key, before in state.items():
        if key.startswith(frozen_prefixes):
            assert torch.equal(after[key], before), key  # weights and BN running statistics
    assert not torch.equal(after["head.head.weight"], state["head.head.weight"])
    if freeze != "backbone":
        assert not torch.equal(
            after["backbone.layer4.1.bn2.running_mean"], state["backbone.layer4.1.bn2.running_mean"]
        )
    assert net.training and not net.backbone.bn1.training


def test_stages_of_features_models_and_too_many_stages():
    net = build_backbone(BackboneConfig("mobilenet_v3_small", 3, 32, freeze="stages:3"))
    frozen = {n.split(".")[2] for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {"0", "1", "2"}  # features[0..2]
    n = num_stages("resnet18")
    assert n == 5
    with pytest.raises(ValueError, match="has 5 stages"):
        build_backbone(BackboneConfig("resnet18", 3, 32, freeze="stages:6"))


# -- cost and feasibility --------------------------------------------------------------------


def test_resnet18_macs_match_torchvision_published_figure():
    cfg = BackboneConfig("resnet18", 1000, 224)  # the same classifier as torchvision's
    published = torchvision.models.ResNet18_Weights.DEFAULT.meta["_ops"]  # GFLOPS = G mult-adds
    assert count_macs(cfg) == pytest.approx(published * 1e9, rel=0.02)
    assert count_params(cfg) == torchvision.models.ResNet18_Weights.DEFAULT.meta["num_params"]


@pytest.mark.parametrize("name, size", [("alexnet", 8), ("convnext_tiny", 16), ("vit_b_16", 256)])
def test_an_unsuitable_image_size_is_infeasible_with_a_reason(name, size):
    cfg = BackboneConfig(name, 3, size)
    with pytest.raises(InfeasibleArchitecture, match=f"tv/{name}: .*{size}x{size}"):
        check_feasible(cfg)
    with pytest.raises(InfeasibleArchitecture):
        build_backbone(cfg)
    assert backbones_module.feasibility(cfg).startswith(f"tv/{name}: ")
    err = pytest.raises(InfeasibleArchitecture, check_feasible, cfg).value
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_a_meta_forward_failure_names_the_layer(monkeypatch):
    # Without torchvision's min_size, the meta-device forward finds the layer.
    def no_weights(name: str):
        raise ValueError(f"torchvision has no pretrained weights for tv/{name}")

    monkeypatch.setattr(backbones_module, "_default_weights", no_weights)
    backbones_module._probe.cache_clear()
    try:
        reason = backbones_module.feasibility(BackboneConfig("alexnet", 3, 8))
    finally:
        backbones_module._probe.cache_clear()
    assert "fails in features.2 (MaxPool2d) on a 64x1x1 map" in reason


def test_the_backbone_table_shows_cost_weights_and_infeasibility(torch_home):
    lines = format_backbones_table(image_size=32, num_classes=10).splitlines()
    assert lines[0].split() == [
        "backbone",
        "input",
        "params",
        "MACs",
        "features",
        "weights",
        "status",
    ]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert list(rows) == list_backbones()
    assert rows["tv/resnet18"].split() == [
        "tv/resnet18",
        "32x32",
        "11.2M",
        "37.0M",
        "512",
        "not",
        "cached",
        "ok",
    ]
    assert "infeasible: tv/alexnet: the 32x32 input is under 63x63" in rows["tv/alexnet"]
    both = format_models_table(image_size=32, num_classes=10, backbones=True)
    assert both.startswith(format_models_table(image_size=32, num_classes=10) + "\n\n")


def test_importing_models_and_backbones_needs_no_torch():
    code = textwrap.dedent(
        """
        import sys
        import hpsearch.models, hpsearch.models.backbones
        from hpsearch.models import BackboneConfig, is_backbone, list_backbones
        cfg = BackboneConfig("tv/resnet18", 10, 32, pretrained="imagenet", freeze="stages:2")
        assert is_backbone(list_backbones()[0]) and cfg.name == "resnet18"
        assert "torch" not in sys.modules and "torchvision" not in sys.modules, "torch imported"
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
