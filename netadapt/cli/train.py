"""`netadapt train`: train a base network and write its checkpoint."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from netadapt.cli.common import add_config_arguments
from netadapt.config import load_config

__all__ = ["register", "train_command"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a base network on the configured data and write a checkpoint",
        description=(
            "Train the base MobileNetV3 (model.*) on the configured data (data.*, default: the embedded "
            "Fashion-MNIST subset) for train.steps steps; write base.pt, spec.yaml, config.yaml and metrics.json."
        ),
    )
    add_config_arguments(parser)
    parser.add_argument("--out", metavar="DIR", help="run directory (default: runs/train-<timestamp>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=train_command)


def train_command(args: argparse.Namespace) -> int:
    from netadapt.train import train_base  # torch: only when the command runs

    config = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / f"train-{datetime.now():%Y%m%d-%H%M%S}"
    result = train_base(config, out, progress=not args.no_progress)
    print(f"wrote {result.out_dir / 'base.pt'} (+ spec.yaml, config.yaml, metrics.json)")
    return 0
