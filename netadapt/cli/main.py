"""Entry point of the `netadapt` console command.

Each command lives in its own module under `netadapt.cli` and exposes
`register(subparsers)`, which adds its parser and sets `handler` to a function
taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from netadapt.errors import NetadaptError

# One module per command; each adds its own sub-parser.
COMMAND_MODULES = ["model", "bench", "lut", "search", "family", "device", "train", "config"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netadapt",
        description="Hardware-aware NetAdapt: shrink a MobileNetV3 to a measured latency budget.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"netadapt.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except NetadaptError as error:
        # User errors: the message says what is wrong and where; no traceback.
        print(f"netadapt {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"netadapt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
