"""Shape arithmetic for a ConvNetConfig, without allocating a tensor.

Every conv and max-pool maps a W x W feature map to

    out = floor((W - F + 2P) / S) + 1

(cs231n's formula, the seed's; PyTorch's floor semantics, ``ceil_mode=False``).
If any layer's output would be smaller than 1 x 1 the architecture is
infeasible, and ``InfeasibleArchitecture`` names the layer and the sizes, so a
search can discard the sample before it costs a trial any time.

Counts: a conv costs Cout*Hout*Wout*Cin*k*k multiply-accumulates and a linear
layer in*out; BatchNorm contributes 2*C parameters (weight and bias, counted
in its conv's row) and no MACs, pooling neither. The conv bias is left out
when BatchNorm follows (see ``models.convnet``).
"""

from __future__ import annotations

from dataclasses import dataclass

from hpsearch.models.config import ConvNetConfig

__all__ = [
    "InfeasibleArchitecture",
    "LayerInfo",
    "check_feasible",
    "count_macs",
    "count_params",
    "feasibility",
    "feature_dim",
    "feature_shapes",
    "layer_table",
    "out_size",
]


class InfeasibleArchitecture(ValueError):
    """A layer's output would be smaller than 1 x 1."""

    def __init__(self, layer: str, in_size: int, detail: str) -> None:
        self.layer = layer
        self.in_size = in_size
        self.detail = detail
        super().__init__(
            f"{layer}: {detail}. Use a larger image size, smaller kernels/strides, or fewer pools."
        )

    def __reduce__(self):  # keep it picklable (Ray ships exceptions between processes)
        return (type(self), (self.layer, self.in_size, self.detail))


@dataclass(frozen=True)
class LayerInfo:
    name: str  # "conv1", "pool1", ..., "fc1", ..., "head"
    kind: str  # "conv" | "pool" | "linear"
    in_shape: tuple[int, ...]  # (C, H, W) or (F,)
    out_shape: tuple[int, ...]
    params: int  # a conv row includes its BatchNorm
    macs: int


def out_size(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    """floor((W - F + 2P) / S) + 1; may be <= 0 for an infeasible layer."""
    return (size - kernel + 2 * padding) // stride + 1


def layer_table(cfg: ConvNetConfig) -> list[LayerInfo]:
    """One row per conv, pool and linear layer, in forward order.

    Raises InfeasibleArchitecture at the first layer whose output would vanish.
    """
    rows: list[LayerInfo] = []
    channels, size = cfg.in_channels, cfg.image_size
    n_pool = 0
    for i, spec in enumerate(cfg.convs, start=1):
        name = f"conv{i}"
        out = out_size(size, spec.kernel, spec.stride, spec.padding)
        if out < 1:
            what = "input image" if i == 1 else "feature map"
            raise InfeasibleArchitecture(
                name,
                size,
                f"the {size}x{size} {what} is smaller than the kernel {spec.kernel} "
                f"(padding {spec.padding}); output would be 0x0",
            )
        weights = spec.out_channels * channels * spec.kernel * spec.kernel
        # Conv bias without BN; BN's weight and bias with it.
        params = weights + (2 * spec.out_channels if cfg.batchnorm else spec.out_channels)
        rows.append(
            LayerInfo(
                name,
                "conv",
                (channels, size, size),
                (spec.out_channels, out, out),
                params,
                weights * out * out,
            )
        )
        channels, size = spec.out_channels, out
        if spec.pool:
            n_pool += 1
            name = f"pool{n_pool}"
            out = out_size(size, spec.pool_kernel, spec.pool_stride)
            if out < 1:
                raise InfeasibleArchitecture(
                    name,
                    size,
                    f"the {size}x{size} feature map after conv{i} is smaller than the "
                    f"pool kernel {spec.pool_kernel}; output would be 0x0",
                )
            rows.append(LayerInfo(name, "pool", (channels, size, size), (channels, out, out), 0, 0))
            size = out

    width = channels * size * size
    widths = [*cfg.mlp, cfg.num_classes]
    for j, out_width in enumerate(widths, start=1):
        name = "head" if j == len(widths) else f"fc{j}"
        rows.append(
            LayerInfo(
                name,
                "linear",
                (width,),
                (out_width,),
                width * out_width + out_width,
                width * out_width,
            )
        )
        width = out_width
    return rows


def feature_shapes(cfg: ConvNetConfig) -> list[tuple[str, tuple[int, int, int]]]:
    """(layer name, (C, H, W)) after every conv and pool layer."""
    return [(r.name, r.out_shape) for r in layer_table(cfg) if r.kind != "linear"]


def feature_dim(cfg: ConvNetConfig) -> int:
    """Width of the flattened feature map fed to the classifier."""
    c, h, w = feature_shapes(cfg)[-1][1]
    return c * h * w


def count_params(cfg: ConvNetConfig) -> int:
    """Trainable parameters, equal to ``sum(p.numel() for p in ConvNet(cfg).parameters())``."""
    return sum(r.params for r in layer_table(cfg))


def count_macs(cfg: ConvNetConfig) -> int:
    """Multiply-accumulates of one forward pass of one image."""
    return sum(r.macs for r in layer_table(cfg))


def check_feasible(cfg: ConvNetConfig) -> None:
    """Raise InfeasibleArchitecture if some layer's output would vanish."""
    layer_table(cfg)


def feasibility(cfg: ConvNetConfig) -> str | None:
    """None when the architecture fits its image size, else the reason."""
    try:
        layer_table(cfg)
    except InfeasibleArchitecture as err:
        return str(err)
    return None
