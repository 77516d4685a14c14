"""A parameterised MobileNetV3 generator: architecture as data (`NetSpec`)."""

from mobilenetv3.counts import UnitCount, count
from mobilenetv3.model import MobileNetV3, build
from mobilenetv3.presets import PRESETS, large, preset, small
from mobilenetv3.spec import ACTIVATIONS, BlockSpec, NetSpec, make_divisible

__all__ = [
    "ACTIVATIONS",
    "BlockSpec",
    "MobileNetV3",
    "NetSpec",
    "PRESETS",
    "UnitCount",
    "build",
    "count",
    "large",
    "make_divisible",
    "preset",
    "small",
]
