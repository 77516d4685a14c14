"""Argument helpers shared by several commands."""

from __future__ import annotations

import argparse
import math

from typing import TYPE_CHECKING

from mobilenetv3.spec import MAX_CHANNELS
from netadapt.errors import ConfigError, quote
from netadapt.types import PRESETS

if TYPE_CHECKING:
    from mobilenetv3 import NetSpec

# The largest batch and image side of an input shape: far past what a latency
# target measures (224 and below), short of an input whose tensor alone would
# exhaust memory while exporting.
MAX_BATCH = 1024
MAX_SIDE = 4096


def parse_input_shape(text: str) -> tuple[int, int, int, int]:
    """Parse 'NxCxHxW' (e.g. 1x3x224x224) into a 4-tuple of positive ints within MAX_BATCH, MAX_CHANNELS and MAX_SIDE.

    Raises:
        ConfigError: the text is not of that form, or a size is out of range.
    """
    parts = text.lower().split("x")
    try:
        shape = tuple(int(part) for part in parts)
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise ConfigError(f"--input {quote(text)}: expected NxCxHxW with positive integers, e.g. 1x3x224x224")
    for name, size, high in zip(("batch", "channels", "height", "width"), shape,
                                (MAX_BATCH, MAX_CHANNELS, MAX_SIDE, MAX_SIDE)):
        if size > high:
            raise ConfigError(f"--input {quote(text)}: the {name} must be <= {high}, got {size}")
    return shape  # type: ignore[return-value]


def add_preset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=PRESETS, default="large", help="MobileNetV3 variant")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (default 1.0)")
    parser.add_argument("--classes", type=int, default=1000, help="number of classes (default 1000)")


def spec_from_preset_arguments(args: argparse.Namespace, in_channels: int) -> NetSpec:
    """The preset spec that --preset, --width and --classes name.

    Raises:
        ConfigError: the width is not finite and positive, or the spec it
            gives is invalid (a channel count past the spec's bounds, named).
    """
    from mobilenetv3 import preset

    if not math.isfinite(args.width) or args.width <= 0:
        raise ConfigError(f"--width must be a finite number > 0, got {args.width}")
    if args.classes < 1:
        raise ConfigError(f"--classes must be >= 1, got {args.classes}")
    try:
        return preset(args.preset, width=args.width, num_classes=args.classes, in_channels=in_channels)
    except ValueError as error:
        raise ConfigError(f"--preset {args.preset} --width {args.width:g} --classes {args.classes}: {error}") from None


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config file (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.steps=200 (repeatable)",
    )
