"""A network's latency units and their keys.

A network is cut into units (stem, each inverted-residual block, the last
1x1 conv, pooling plus the classifier head). Each unit is exported alone and
measured on the target; its key spells out everything that changes its
latency (input HxWxC, expanded and output channels, kernel, stride, SE and
its squeeze width, activation, expansion conv, residual), as OFA and
nn-Meter key their per-block tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mobilenetv3 import NetSpec
from mobilenetv3.counts import count as count_parameters
from mobilenetv3.counts import spatial_after
from mobilenetv3.spec import BlockSpec
from mobilenetv3.units import Head, block_unit, last_conv_unit, stem_unit
from netadapt.errors import LatencyTableError
from netadapt.onnx_export import onnx_bytes

__all__ = [
    "UNIT_KINDS",
    "Unit",
    "boundary_millions",
    "network_key",
    "unit_module",
    "unit_onnx",
    "units_boundary_millions",
    "units_of",
    "weights_millions",
]

UNIT_KINDS = ("stem", "block", "last_conv", "head")


@dataclass(frozen=True)
class Unit:
    """One separately measured piece of a network; fields not used by a kind stay 0/False/""."""

    kind: str  # "stem", "block", "last_conv" or "head"
    height: int  # input spatial size
    width: int
    in_channels: int
    out: int  # output channels (head: number of classes)
    expanded: int = 0  # block: depthwise width; head: hidden Linear width
    kernel: int = 1
    stride: int = 1
    se: bool = False
    se_squeeze: int = 0
    activation: str = ""  # "relu" or "hardswish"
    has_expansion: bool = False
    residual: bool = False

    def key(self) -> str:
        """A readable key that names everything that changes this unit's latency."""
        size = f"{self.height}x{self.width}x{self.in_channels}"
        if self.kind == "block":
            act = "RE" if self.activation == "relu" else "HS"
            return (
                f"block:{size}:e{self.expanded}:o{self.out}:k{self.kernel}:s{self.stride}"
                f":se{self.se_squeeze if self.se else 0}:{act}:x{int(self.has_expansion)}:r{int(self.residual)}"
            )
        if self.kind == "head":
            return f"head:{size}:h{self.expanded}:o{self.out}"
        act = "RE" if self.activation == "relu" else "HS"
        return f"{self.kind}:{size}:o{self.out}:k{self.kernel}:s{self.stride}:{act}"

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.in_channels, self.height, self.width)


def units_of(spec: NetSpec, input_shape: tuple[int, int, int, int]) -> list[Unit]:
    """The units of `spec` at `input_shape` (N, C, H, W), in network order."""
    _, channels, height, width = input_shape
    if channels != spec.in_channels:
        raise LatencyTableError(f"input shape {tuple(input_shape)} has {channels} channels but the spec expects {spec.in_channels}")
    units = [Unit("stem", height, width, channels, spec.stem, kernel=3, stride=2, activation="hardswish")]
    height, width = spatial_after(height, 2, 3), spatial_after(width, 2, 3)
    for block_in, block in zip(spec.block_inputs(), spec.blocks):
        units.append(
            Unit(
                "block", height, width, block_in, block.out, block.expanded, block.kernel, block.stride,
                block.se, block.se_squeeze if block.se else 0, block.activation, block.has_expansion, block.residual,
            )
        )
        height, width = spatial_after(height, block.stride, block.kernel), spatial_after(width, block.stride, block.kernel)
    units.append(Unit("last_conv", height, width, spec.last_conv_in, spec.last_conv, activation="hardswish"))
    units.append(Unit("head", height, width, spec.last_conv, spec.num_classes, expanded=spec.head_hidden))
    return units


def unit_module(unit: Unit) -> nn.Module:
    """A torch module that computes `unit` exactly as the whole MobileNetV3 does."""
    if unit.kind == "stem":
        return stem_unit(unit.in_channels, unit.out)
    if unit.kind == "last_conv":
        return last_conv_unit(unit.in_channels, unit.out)
    if unit.kind == "block":
        block = BlockSpec(
            unit.kernel, unit.expanded, unit.out, unit.se, unit.se_squeeze, unit.activation, unit.stride,
            has_expansion=unit.has_expansion, residual=unit.residual,
        )
        return block_unit(unit.in_channels, block)
    if unit.kind == "head":
        return Head(unit.in_channels, unit.expanded, unit.out)
    raise ValueError(f"unknown unit kind {unit.kind!r}")  # a bug: kinds come from units_of


def unit_onnx(unit: Unit, batch: int) -> bytes:
    """The unit exported alone (BN folded), ready to measure."""
    return onnx_bytes(unit_module(unit).eval(), unit.input_shape(batch))


def network_key(spec: NetSpec, input_shape: tuple[int, int, int, int]) -> str:
    """The family a correction is fitted for: same block count and input, any channel counts.

    Channel cuts keep the block count, so they share their base network's
    key. A depth proposal removes a block: `LatencyTable.correction_for`
    then lends it the nearest deeper family's correction.
    """
    return f"{len(spec.blocks)}blocks@{'x'.join(str(d) for d in input_shape)}"


def units_boundary_millions(units: list[Unit]) -> float:
    """Elements (millions, per image) of the activations passed between `units`."""
    return sum(unit.height * unit.width * unit.in_channels for unit in units[1:]) / 1e6


def boundary_millions(spec: NetSpec, input_shape: tuple[int, int, int, int]) -> float:
    """Elements (millions, per image) of the activations passed between `spec`'s units: the correction's boundary term."""
    return units_boundary_millions(units_of(spec, input_shape))


def weights_millions(spec: NetSpec) -> float:
    """Parameters (millions) of `spec`: the correction's weights term."""
    return sum(row.params for row in count_parameters(spec)) / 1e6
