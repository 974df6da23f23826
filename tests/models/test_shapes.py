from __future__ import annotations

import pickle

import pytest

from hpsearch.models import (
    ConvNetConfig,
    ConvSpec,
    InfeasibleArchitecture,
    check_feasible,
    count_macs,
    count_params,
    feasibility,
    feature_dim,
    feature_shapes,
    get_config,
    layer_table,
)
from hpsearch.models.shapes import out_size


@pytest.mark.parametrize(
    "size, kernel, stride, padding, expected",
    [
        (227, 11, 4, 0, 55),
        (55, 3, 2, 0, 27),
        (27, 5, 1, 2, 27),
        (13, 3, 2, 0, 6),
        (8, 3, 2, 0, 3),
        (4, 5, 1, 0, 0),
    ],
)
def test_out_size_is_the_seed_formula_with_floor(size, kernel, stride, padding, expected):
    assert out_size(size, kernel, stride, padding) == expected


def test_alexnet_layer_table_at_227():
    rows = layer_table(get_config("AlexNet", num_classes=28))
    assert [r.name for r in rows] == [
        "conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool3", "fc1", "fc2", "head",
    ]  # fmt: skip
    assert [r.out_shape[1] for r in rows if r.kind != "linear"] == [55, 27, 27, 13, 13, 13, 13, 6]
    assert rows[8].in_shape == (9216,)  # the seed's fc1 in_features
    assert rows[-1].out_shape == (28,)
    assert rows[0].params == 96 * 3 * 11 * 11 + 96
    assert rows[0].macs == 96 * 55 * 55 * 3 * 11 * 11
    assert rows[1].params == rows[1].macs == 0


def test_counts_by_hand_for_a_tiny_config():
    cfg = ConvNetConfig(
        convs=(ConvSpec(4, 3, padding=1, pool=True, pool_kernel=2, pool_stride=2),),
        mlp=(5,),
        num_classes=3,
        image_size=8,
        in_channels=1,
    )
    # conv 8x8 -> 8x8, pool 2/2 -> 4x4, flatten 64, fc 64->5, head 5->3
    assert feature_shapes(cfg) == [("conv1", (4, 8, 8)), ("pool1", (4, 4, 4))]
    assert feature_dim(cfg) == 64
    assert count_params(cfg) == (4 * 9 + 4) + (64 * 5 + 5) + (5 * 3 + 3)
    assert count_macs(cfg) == 4 * 8 * 8 * 9 + 64 * 5 + 5 * 3
    bn = cfg.replace(batchnorm=True)
    # BN drops the conv bias (4) and adds weight and bias (2 * 4); no MACs.
    assert count_params(bn) == count_params(cfg) - 4 + 8
    assert count_macs(bn) == count_macs(cfg)


def test_infeasible_conv_names_layer_and_sizes():
    cfg = ConvNetConfig(
        convs=(ConvSpec(8, 3, pool=True), ConvSpec(8, 3), ConvSpec(8, 5)), image_size=9
    )
    # conv1 9 -> 7, pool1 -> 3, conv2 -> 1, conv3 with kernel 5 on 1x1 -> nothing
    with pytest.raises(InfeasibleArchitecture) as err:
        check_feasible(cfg)
    e = err.value
    assert (e.layer, e.in_size) == ("conv3", 1)
    assert str(e).startswith(
        "conv3: the 1x1 feature map is smaller than the kernel 5 (padding 0); output would be 0x0."
    )
    assert "Use a larger image size" in str(e)
    assert isinstance(e, ValueError)
    assert feasibility(cfg) == str(e)


def test_infeasible_pool_and_first_conv_are_named():
    pool = ConvNetConfig(convs=(ConvSpec(8, 3, pool=True),), image_size=4)
    with pytest.raises(InfeasibleArchitecture, match=r"^pool1: the 2x2 feature map after conv1"):
        layer_table(pool)
    first = ConvNetConfig(convs=(ConvSpec(8, 11, stride=4),), image_size=8)
    with pytest.raises(InfeasibleArchitecture, match=r"^conv1: the 8x8 input image"):
        count_params(first)


def test_feasibility_is_none_when_it_fits():
    assert feasibility(get_config("AlexNet")) is None
    check_feasible(get_config("AlexNet"))


def test_infeasible_architecture_pickles():
    e = InfeasibleArchitecture("conv2", 3, "detail")
    back = pickle.loads(pickle.dumps(e))
    assert (back.layer, back.in_size, back.detail, str(back)) == ("conv2", 3, "detail", str(e))
