"""Parameter and multiply-add counts, computed from a spec alone.

Multiply-adds count convolutions and Linear layers (the convention of the
MobileNet papers and torchvision's metadata); BN, activations, pooling and
the SE gate's elementwise product are not counted. Tests check these
numbers against the built torch model's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from mobilenetv3.spec import BlockSpec, NetSpec

__all__ = ["UnitCount", "count", "peak_activation", "spatial_after"]


@dataclass(frozen=True)
class UnitCount:
    """One row of the block table."""

    name: str  # "stem", "block 0", ..., "last_conv", "head"
    in_channels: int
    out_channels: int
    input_size: int  # spatial side of the unit's input
    params: int
    macs: int


def _conv(cin: int, cout: int, kernel: int, groups: int, out_size: int, bias: bool = False) -> tuple[int, int]:
    weights = cout * (cin // groups) * kernel * kernel
    params = weights + (cout if bias else 0)
    return params, weights * out_size * out_size


def _bn(channels: int) -> int:
    return 2 * channels  # affine weight and bias; running stats are buffers


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * ((kernel - 1) // 2) - kernel) // stride + 1


def spatial_after(size: int, stride: int, kernel: int = 3) -> int:
    """Output side of a 'same'-padded conv."""
    return _conv_out(size, kernel, stride)


def _block(block: BlockSpec, block_in: int, size: int) -> tuple[int, int, int]:
    params = macs = 0
    if block.has_expansion:
        p, m = _conv(block_in, block.expanded, 1, 1, size)
        params, macs = params + p + _bn(block.expanded), macs + m
    out_size = _conv_out(size, block.kernel, block.stride)
    p, m = _conv(block.expanded, block.expanded, block.kernel, block.expanded, out_size)
    params, macs = params + p + _bn(block.expanded), macs + m
    if block.se:
        for cin, cout in ((block.expanded, block.se_squeeze), (block.se_squeeze, block.expanded)):
            p, m = _conv(cin, cout, 1, 1, 1, bias=True)
            params, macs = params + p, macs + m
    p, m = _conv(block.expanded, block.out, 1, 1, out_size)
    return params + p + _bn(block.out), macs + m, out_size


def count(spec: NetSpec, input_size: int = 224) -> list[UnitCount]:
    """Per-unit parameters and multiply-adds at a square input of side `input_size`."""
    rows = []
    size = _conv_out(input_size, 3, 2)
    p, m = _conv(spec.in_channels, spec.stem, 3, 1, size)
    rows.append(UnitCount("stem", spec.in_channels, spec.stem, input_size, p + _bn(spec.stem), m))
    for index, (block, block_in) in enumerate(zip(spec.blocks, spec.block_inputs())):
        p, m, out_size = _block(block, block_in, size)
        rows.append(UnitCount(f"block {index}", block_in, block.out, size, p, m))
        size = out_size
    p, m = _conv(spec.last_conv_in, spec.last_conv, 1, 1, size)
    rows.append(UnitCount("last_conv", spec.last_conv_in, spec.last_conv, size, p + _bn(spec.last_conv), m))
    head_params = (spec.last_conv + 1) * spec.head_hidden + (spec.head_hidden + 1) * spec.num_classes
    head_macs = spec.last_conv * spec.head_hidden + spec.head_hidden * spec.num_classes
    rows.append(UnitCount("head", spec.last_conv, spec.num_classes, size, head_params, head_macs))
    return rows


def peak_activation(spec: NetSpec, input_size: int = 224) -> int:
    """The most elements one activation of `spec` holds, per image, at a square input of side `input_size`.

    Running the network needs a few of these at once; it is what a spec
    within every per-field bound can still make too big for memory (Large at
    width 8 and a 4096-pixel input: 8 G elements after the stem).
    """
    size = _conv_out(input_size, 3, 2)
    largest = max(spec.in_channels * input_size * input_size, spec.stem * size * size)
    for block in spec.blocks:
        out_size = _conv_out(size, block.kernel, block.stride)
        largest = max(largest, block.expanded * size * size, block.expanded * out_size * out_size,
                      block.out * out_size * out_size)
        size = out_size
    return max(largest, spec.last_conv * size * size)
