from __future__ import annotations

import json

import pytest

from hpsearch.models import ConvNetConfig, ConvSpec


def tiny(**kw) -> ConvNetConfig:
    base = dict(
        convs=(ConvSpec(8, 3, padding=1, pool=True), ConvSpec(16, 3, stride=2)),
        mlp=(32,),
        num_classes=4,
        image_size=16,
    )
    return ConvNetConfig(**{**base, **kw})


def test_lists_and_dicts_are_normalised():
    cfg = ConvNetConfig(
        convs=[{"out_channels": 8, "kernel": 3, "pool": True}, {"out_channels": 4, "kernel": 1}],
        mlp=[16, 8],
    )
    assert isinstance(cfg.convs, tuple) and all(isinstance(c, ConvSpec) for c in cfg.convs)
    assert cfg.convs[0] == ConvSpec(8, 3, pool=True)
    assert cfg.mlp == (16, 8)
    hash(cfg)  # frozen and made of tuples: usable as a dict key


def test_json_round_trip():
    cfg = tiny(dropout=0.25, batchnorm=True, in_channels=1)
    text = json.dumps(cfg.to_dict())
    assert ConvNetConfig.from_dict(json.loads(text)) == cfg
    assert ConvNetConfig(**json.loads(text)) == cfg
    assert json.loads(text)["convs"][0] == {
        "out_channels": 8,
        "kernel": 3,
        "stride": 1,
        "padding": 1,
        "pool": True,
        "pool_kernel": 3,
        "pool_stride": 2,
    }


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(dropout=-0.1), "dropout must be in [0, 1), got -0.1"),
        (dict(dropout=1.5), "dropout must be in [0, 1), got 1.5"),
        (dict(dropout=1.0), "dropout must be in [0, 1), got 1.0"),
        (dict(num_classes=1), "num_classes must be >= 2, got 1"),
        (dict(mlp=(32, 0)), "mlp[1] must be >= 1, got 0"),
        (dict(convs=()), "convs must not be empty"),
        (dict(image_size=0), "image_size must be >= 1, got 0"),
        (dict(in_channels=0), "in_channels must be >= 1, got 0"),
        (dict(batchnorm="yes"), "batchnorm must be true or false"),
        (
            dict(convs=[{"out_channels": 0, "kernel": 3}]),
            "convs[0].out_channels must be >= 1, got 0",
        ),
        (dict(convs=[{"out_channels": 8, "kernel": 0}]), "convs[0].kernel must be >= 1, got 0"),
        (
            dict(
                convs=[{"out_channels": 8, "kernel": 3}] * 2
                + [{"out_channels": 8, "kernel": 3, "stride": 0}]
            ),
            "convs[2].stride must be >= 1, got 0",
        ),
        (
            dict(convs=[{"out_channels": 8, "kernel": 3, "padding": -1}]),
            "convs[0].padding must be >= 0, got -1",
        ),
        (
            dict(convs=[{"out_channels": 8, "kernel": 3, "pool_kernel": 0}]),
            "convs[0].pool_kernel must be >= 1, got 0",
        ),
        (
            dict(convs=[{"out_channels": 8, "kernel": 3, "pool_stride": 0}]),
            "convs[0].pool_stride must be >= 1, got 0",
        ),
        (
            dict(convs=[{"out_channels": 8, "kernel": 2.5}]),
            "convs[0].kernel must be an integer, got 2.5",
        ),
        (
            dict(convs=[{"out_channels": 8, "kernal": 3}]),
            "convs[0] has unknown key 'kernal'; allowed: out_channels, kernel",
        ),
    ],
)
def test_invalid_values_name_the_field(changes, message):
    with pytest.raises(ValueError) as err:
        tiny(**changes)
    assert message in str(err.value)


def test_conv_spec_validates_on_its_own():
    with pytest.raises(ValueError, match="stride must be >= 1, got 0"):
        ConvSpec(8, 3, stride=0)


def test_numpy_like_integers_are_accepted():
    np = pytest.importorskip("numpy")
    cfg = tiny(num_classes=np.int64(5), batchnorm=np.bool_(True))
    assert cfg.num_classes == 5 and type(cfg.num_classes) is int
    assert cfg.batchnorm is True
    json.dumps(cfg.to_dict())


def test_from_dict_rejects_unknown_keys():
    d = tiny().to_dict() | {"dropuot": 0.1}
    with pytest.raises(
        ValueError, match="unknown config key 'dropuot'; allowed: convs, mlp, dropout"
    ):
        ConvNetConfig.from_dict(d)


def test_replace_revalidates_and_rejects_unknown_fields():
    cfg = tiny()
    assert cfg.replace(dropout=0.5).dropout == 0.5
    with pytest.raises(ValueError, match="dropout must be in"):
        cfg.replace(dropout=2)
    with pytest.raises(ValueError, match="unknown config field 'classes'"):
        cfg.replace(classes=3)


def test_with_layers_overrides_each_conv():
    cfg = tiny().with_layers(strides=(2, 1), kernels=[5, 1], paddings=(2, 0), channels=(4, 6))
    assert [(c.stride, c.kernel, c.padding, c.out_channels) for c in cfg.convs] == [
        (2, 5, 2, 4),
        (1, 1, 0, 6),
    ]
    assert cfg.convs[0].pool is True  # untouched fields stay
    assert tiny().with_layers() == tiny()


def test_with_layers_wrong_length_names_the_field():
    with pytest.raises(ValueError, match="strides has 3 values but the config has 2 conv layers"):
        tiny().with_layers(strides=(1, 1, 1))
    with pytest.raises(ValueError, match="kernels has 1 values"):
        tiny().with_layers(kernels=(3,))


def test_with_layers_validates_values():
    with pytest.raises(ValueError, match=r"convs\[1\]\.stride must be >= 1, got 0"):
        tiny().with_layers(strides=(1, 0))


def test_missing_conv_fields_are_named():
    with pytest.raises(ValueError, match=r"convs\[0\]\.kernel is required"):
        tiny(convs=[{"out_channels": 8}])
    with pytest.raises(ValueError, match=r"convs\[1\] must be a mapping"):
        tiny(convs=[{"out_channels": 8, "kernel": 3}, 5])
    with pytest.raises(ValueError, match=r"ConvSpec has unknown key 'size'"):
        ConvSpec.from_dict({"out_channels": 8, "kernel": 3, "size": 1})
