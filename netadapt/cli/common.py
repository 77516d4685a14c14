"""Argument helpers shared by several commands."""

from __future__ import annotations

import argparse

from mobilenetv3 import NetSpec, preset
from netadapt.errors import ConfigError


def parse_input_shape(text: str) -> tuple[int, int, int, int]:
    """Parse 'NxCxHxW' (e.g. 1x3x224x224) into a 4-tuple of positive ints."""
    parts = text.lower().split("x")
    try:
        shape = tuple(int(part) for part in parts)
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise ConfigError(f"--input {text!r}: expected NxCxHxW with positive integers, e.g. 1x3x224x224")
    return shape  # type: ignore[return-value]


def add_preset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=["large", "small"], default="large", help="MobileNetV3 variant")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (default 1.0)")
    parser.add_argument("--classes", type=int, default=1000, help="number of classes (default 1000)")


def spec_from_preset_arguments(args: argparse.Namespace, in_channels: int) -> NetSpec:
    if args.width <= 0:
        raise ConfigError(f"--width must be > 0, got {args.width}")
    if args.classes < 1:
        raise ConfigError(f"--classes must be >= 1, got {args.classes}")
    return preset(args.preset, width=args.width, num_classes=args.classes, in_channels=in_channels)


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
