"""`netadapt config keys`: every config key with its default, values and meaning."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="list every config key with its default and meaning")
    commands = parser.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    keys = commands.add_parser(
        "keys",
        help="print the config keys as a Markdown table",
        description="Print every config key (dotted, as --set takes it) with its default, allowed values and "
        "meaning, read from netadapt/config.py.",
    )
    keys.add_argument("--update", metavar="FILE",
                      help="instead of printing, rewrite the table between the config-key markers in FILE "
                      "(the README's reference table)")
    keys.set_defaults(handler=keys_command)


def keys_command(args: argparse.Namespace) -> int:
    from netadapt.io import InputError, atomic_write_text, read_text
    from netadapt.config_keys import markdown_table, with_table
    from netadapt.errors import ConfigError

    if args.update is None:
        print(markdown_table())
        return 0
    try:
        text = read_text(args.update)
    except FileNotFoundError:
        raise ConfigError(f"--update {args.update}: no such file") from None
    except InputError as error:
        raise ConfigError(str(error)) from None
    atomic_write_text(Path(args.update), with_table(text, args.update))
    print(f"{args.update}: config-key table updated")
    return 0
