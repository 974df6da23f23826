from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hpsearch.models import (
    ConvNet,
    ConvSpec,
    InfeasibleArchitecture,
    adapt_to_image_size,
    count_params,
    create_model,
    get_config,
    list_models,
    model_cfgs,
)


class SeedAlexNet(nn.Module):
    """SEED.md's AlexNet, transcribed verbatim (bar formatting)."""

    def __init__(self, n_classes):
        super(SeedAlexNet, self).__init__()  # noqa: UP008
        self.conv1 = nn.Conv2d(in_channels=3, out_channels=96, kernel_size=11, stride=4, padding=0)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2)
        self.conv2 = nn.Conv2d(in_channels=96, out_channels=256, kernel_size=5, stride=1, padding=2)
        self.conv3 = nn.Conv2d(
            in_channels=256, out_channels=384, kernel_size=3, stride=1, padding=1
        )
        self.conv4 = nn.Conv2d(
            in_channels=384, out_channels=384, kernel_size=3, stride=1, padding=1
        )
        self.conv5 = nn.Conv2d(
            in_channels=384, out_channels=256, kernel_size=3, stride=1, padding=1
        )
        self.fc1 = nn.Linear(in_features=9216, out_features=4096)
        self.fc2 = nn.Linear(in_features=4096, out_features=4096)
        self.fc3 = nn.Linear(in_features=4096, out_features=n_classes)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = self.maxpool(x)
        x = F.relu(self.conv2(x))
        x = self.maxpool(x)
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = F.relu(self.conv5(x))
        x = self.maxpool(x)
        x = x.reshape(x.shape[0], -1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x


def test_alexnet_is_the_seeds_alexnet():
    seed = SeedAlexNet(n_classes=28).eval()
    ours = create_model("AlexNet", num_classes=28).eval()
    n_seed = sum(p.numel() for p in seed.parameters())
    assert n_seed == count_params(get_config("AlexNet", num_classes=28)) == 58_396_060
    assert sum(p.numel() for p in ours.parameters()) == n_seed
    # Same weights in the same order give the same function.
    ours.load_state_dict(dict(zip(ours.state_dict(), seed.state_dict().values(), strict=True)))
    x = torch.randn(1, 3, 227, 227)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), seed(x))


def test_presets_are_the_seeds_names():
    assert list_models() == [
        "AlexNet",
        "FlatAlexNet",
        "NarrowAlexNet",
        "FlatAlexNetHS",
        "FlatAlexNetLS",
        "FlatAlexNetLowKernel",
        "FlatAlexNetHighKernel",
        "FlatAlexNetOpt",
    ]
    assert all(
        cfg.image_size == 227 and cfg.dropout == 0 and not cfg.batchnorm
        for cfg in model_cfgs.values()
    )


def _col(name: str, field: str) -> list[int]:
    return [getattr(c, field) for c in model_cfgs[name].convs]


def _below(a: list[int], b: list[int]) -> bool:
    """a <= b layer by layer, and smaller somewhere."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


def test_variants_differ_from_their_parent_as_the_seed_says():
    alex, flat = model_cfgs["AlexNet"], model_cfgs["FlatAlexNet"]
    # FlatAlexNet drops conv3 and conv4; conv5 now reads conv2's 256 maps.
    conv5 = ConvSpec(256, 3, stride=1, padding=1, pool=True)
    assert flat.convs == (alex.convs[0], alex.convs[1], conv5) and flat.mlp == alex.mlp

    narrow = model_cfgs["NarrowAlexNet"]
    assert [2 * c for c in _col("NarrowAlexNet", "out_channels")] == _col("AlexNet", "out_channels")
    assert _col("NarrowAlexNet", "kernel") == _col("AlexNet", "kernel") and narrow.mlp == alex.mlp

    assert _below(_col("FlatAlexNet", "stride"), _col("FlatAlexNetHS", "stride"))
    assert _below(_col("FlatAlexNetLS", "stride"), _col("FlatAlexNet", "stride"))
    for name in ("FlatAlexNetHS", "FlatAlexNetLS"):
        assert _col(name, "kernel") == _col("FlatAlexNet", "kernel")

    assert _below(_col("FlatAlexNetLowKernel", "kernel"), _col("FlatAlexNetHS", "kernel"))
    assert _below(_col("FlatAlexNetHS", "kernel"), _col("FlatAlexNetHighKernel", "kernel"))
    for name in ("FlatAlexNetLowKernel", "FlatAlexNetHighKernel"):
        assert _col(name, "stride") == _col("FlatAlexNetHS", "stride")
        assert model_cfgs[name].mlp == flat.mlp

    opt = model_cfgs["FlatAlexNetOpt"]
    assert opt.convs == model_cfgs["FlatAlexNetLowKernel"].convs
    assert opt.mlp == (2379, 5592, 7864)


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("name", list_models())
def test_every_preset_adapts_to_small_images(name, size):
    cfg = get_config(name, image_size=size)  # raises if infeasible
    native = model_cfgs[name]
    assert cfg.image_size == size
    assert [c.out_channels for c in cfg.convs] == [c.out_channels for c in native.convs]
    assert cfg.mlp == native.mlp
    assert all(
        c.kernel % 2 == 1 and c.kernel >= 3 and c.padding == c.kernel // 2 for c in cfg.convs
    )


def test_every_preset_is_feasible_at_every_size_up_to_600():
    for name in list_models():
        for size in range(1, 601):
            get_config(name, image_size=size)


def test_adaptation_rule_at_32_px():
    cfg = get_config("AlexNet", image_size=32)
    # r = 32/227: kernels 11, 5 -> 3; stride 4 -> 1; padding k // 2; all pools fit.
    assert [(c.kernel, c.stride, c.padding, c.pool) for c in cfg.convs] == [
        (3, 1, 1, True), (3, 1, 1, True), (3, 1, 1, False), (3, 1, 1, False), (3, 1, 1, True),
    ]  # fmt: skip
    hk = get_config("FlatAlexNetHighKernel", image_size=64)  # 15 * 64/227 = 4.2 -> 5
    assert hk.convs[0].kernel == 5


def test_a_pool_whose_input_is_too_small_is_dropped():
    cfg = get_config("AlexNet", image_size=8)
    # 8 -> conv 8 -> pool 3 -> conv 3 -> pool 1 -> convs 1: the last pool cannot run.
    assert [c.pool for c in cfg.convs] == [True, True, False, False, False]
    assert create_model("AlexNet", image_size=8, mlp=(4,))(torch.randn(1, 3, 8, 8)).shape == (1, 10)


def test_larger_images_rescale_only_the_first_conv():
    native = model_cfgs["AlexNet"]
    big = adapt_to_image_size(native, 454)  # r = 2
    assert (big.convs[0].kernel, big.convs[0].stride, big.convs[0].padding) == (23, 8, 0)
    assert big.convs[1:] == native.convs[1:]
    assert adapt_to_image_size(native, 227) is native


def test_adapt_rejects_bad_sizes():
    with pytest.raises(ValueError, match="image_size must be >= 1, got 0"):
        get_config("AlexNet", image_size=0)
    with pytest.raises(ValueError, match="image_size must be an integer"):
        get_config("AlexNet", image_size=32.0)


def test_overrides_apply_after_adaptation():
    cfg = get_config(
        "FlatAlexNet", image_size=64, strides=(2, 1, 1), kernels=(5, 3, 3), num_classes=28,
        dropout=0.3, mlp=(512,), batchnorm=True, in_channels=1,
    )  # fmt: skip
    assert [(c.kernel, c.stride, c.padding) for c in cfg.convs] == [(5, 2, 1), (3, 1, 1), (3, 1, 1)]
    assert (cfg.num_classes, cfg.dropout, cfg.mlp, cfg.batchnorm, cfg.in_channels) == (
        28,
        0.3,
        (512,),
        True,
        1,
    )


def test_explicit_convs_are_not_adapted():
    convs = ({"out_channels": 4, "kernel": 3},)
    cfg = get_config("AlexNet", image_size=16, convs=convs)
    assert (cfg.convs[0].kernel, cfg.image_size) == (3, 16)


def test_too_big_kernel_override_names_the_layer():
    with pytest.raises(InfeasibleArchitecture) as err:
        get_config("AlexNet", image_size=32, kernels=(11, 11, 11, 11, 11))
    # 32 -> conv1 24 -> pool 11 -> conv2 3 -> pool 1 -> conv3 with kernel 11 fails
    assert err.value.layer == "conv3"
    assert str(err.value).startswith("conv3: the 1x1 feature map is smaller than the kernel 11")


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ValueError) as err:
        get_config("ResNet50")
    assert "unknown model 'ResNet50'" in str(err.value)
    assert all(name in str(err.value) for name in list_models())


def test_unknown_override_is_named_with_the_allowed_ones():
    with pytest.raises(ValueError) as err:
        create_model("AlexNet", n_classes=28)
    msg = str(err.value)
    assert "unknown override 'n_classes'" in msg
    for allowed in (
        "num_classes",
        "dropout",
        "mlp",
        "batchnorm",
        "image_size",
        "strides",
        "kernels",
    ):
        assert allowed in msg


def test_overrides_are_validated():
    with pytest.raises(ValueError, match="dropout must be in"):
        get_config("AlexNet", dropout=1.5)
    with pytest.raises(ValueError, match="strides has 3 values but the config has 5"):
        get_config("AlexNet", strides=(1, 1, 1))


def test_importing_models_touches_no_gpu_and_no_ray():
    code = (
        "import sys, torch, hpsearch.models\n"
        "assert not torch.cuda.is_initialized()\n"
        "assert 'ray' not in sys.modules and 'hpsearch.search' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_presets_build_real_modules():
    model = create_model("FlatAlexNetOpt", image_size=32, num_classes=28)
    assert isinstance(model, ConvNet)
    assert [m.out_features for m in model.classifier if isinstance(m, nn.Linear)] == [
        2379,
        5592,
        7864,
        28,
    ]
