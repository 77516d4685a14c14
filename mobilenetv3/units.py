"""Public builders for the separately measurable parts of a MobileNetV3.

A latency table measures a network piece by piece (stem, each block, the last
conv, pooling plus the head). Each builder returns exactly the module the
whole `MobileNetV3` uses for that part, so an isolated unit computes what the
network computes, and the table never reaches into the model's private names.
"""

from __future__ import annotations

import torch
from torch import nn

from mobilenetv3.model import ConvNormActivation, InvertedResidual, activation
from mobilenetv3.spec import BlockSpec

__all__ = ["Head", "block_unit", "last_conv_unit", "stem_unit"]


def stem_unit(in_channels: int, out_channels: int) -> nn.Module:
    """The stem: 3x3 conv, stride 2, BN and hardswish (MobileNetV3 Table 1, first row)."""
    return ConvNormActivation(in_channels, out_channels, 3, stride=2, activation_layer=activation("hardswish"))


def block_unit(block_in: int, block: BlockSpec) -> nn.Module:
    """One inverted-residual block with `block_in` input channels."""
    return InvertedResidual(block_in, block)


def last_conv_unit(in_channels: int, out_channels: int) -> nn.Module:
    """The 1x1 conv after the last block, with BN and hardswish."""
    return ConvNormActivation(in_channels, out_channels, 1, activation_layer=activation("hardswish"))


class Head(nn.Module):
    """Global pooling plus the classifier as `MobileNetV3.forward_head` runs it at inference
    (dropout is the identity there, so it is left out)."""

    def __init__(self, channels: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(channels, hidden), nn.Hardswish(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(x), 1))
