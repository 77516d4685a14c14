"""A parameterised MobileNetV3 generator: architecture as data (`NetSpec`)."""

from typing import Any

from mobilenetv3.counts import UnitCount, count
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

_NEED_TORCH = {"MobileNetV3", "build"}  # from mobilenetv3.model


def __getattr__(name: str) -> Any:
    # The model needs torch, the rest does not: it is imported on first use, so that
    # what reads specs, configs and files (netadapt.config, netadapt.errors) loads without torch.
    if name in _NEED_TORCH:
        import importlib

        value = getattr(importlib.import_module("mobilenetv3.model"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mobilenetv3' has no attribute {name!r}")
