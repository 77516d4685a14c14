"""What the device server and its client agree on: paths, the token, the settings' encoding, refusals.

Plain HTTP with JSON answers:

- ``GET /`` (`HEALTH_PATH`) is a health check. Without a token it answers
  ``{"status": "ok"}`` only; with a valid ``Authorization: Bearer TOKEN`` it
  adds the device's fingerprint for the settings given as query parameters,
  the number of measurements done and the upload limit.
- ``POST /measure`` (`MEASURE_PATH`) takes the serialised ONNX model as the
  body and the settings as query parameters (`SETTINGS`); it answers
  `Measurement.to_dict()` plus the server's timing of the measurement.

The client (`netadapt.device.client`) encodes a `Target` with
`target_settings`; the server (`netadapt.device.server`) decodes it with
`parse_settings`. Both read the token with `load_token`.
"""

from __future__ import annotations

import os
import stat
import sys
import typing
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable, Literal
from urllib.parse import parse_qs

from netadapt.benchmark import MEASURING_SETTINGS, SESSION_SETTINGS, Target
from netadapt.config import MeasureConfig, TargetConfig
from netadapt.errors import ConfigError, quote

__all__ = [
    "HEALTH_PATH",
    "MEASURE_PATH",
    "SETTINGS",
    "TOKEN_ENV",
    "BadRequest",
    "load_token",
    "parse_settings",
    "target_settings",
]

HEALTH_PATH = "/"
MEASURE_PATH = "/measure"
TOKEN_ENV = "NETADAPT_DEVICE_TOKEN"  # where the token comes from when no token file is named


class BadRequest(Exception):
    """A request the server refuses; carries the HTTP status and the reason sent back."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason



def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


_PARSERS: dict[str, Callable[[str], Any]] = {"str": str, "int": int, "float": float, "bool": _parse_bool}


def _settings_from_target() -> dict[str, Callable[[str], Any]]:
    # Derived from the config sections that own `Target`'s settings, so a
    # setting added there (e.g. a scheduling priority) travels to the device
    # without a second list to keep in step.
    hints = {**typing.get_type_hints(TargetConfig), **typing.get_type_hints(MeasureConfig)}
    settings = {}
    for name in (*SESSION_SETTINGS, *MEASURING_SETTINGS):
        hint = hints[name]
        if typing.get_origin(hint) is Literal:
            hint = type(typing.get_args(hint)[0])
        type_name = getattr(hint, "__name__", str(hint))
        if type_name not in _PARSERS:
            raise TypeError(f"setting {name}: type {type_name} has no query-parameter parser")  # a bug
        settings[name] = _PARSERS[type_name]
    return settings


# Query parameter -> parser: every setting of `Target.settings()`,
# plus `batch`, which fills a dynamic batch dimension and sets the batch of
# the health check's fingerprint.
SETTINGS: dict[str, Callable[[str], Any]] = {**_settings_from_target(), "batch": int}
_KINDS = {int: "an integer", float: "a number", str: "a string", _parse_bool: "true or false"}


def target_settings(target: Target) -> dict[str, str]:
    """The query parameters that reproduce `target` on the device (the client's half of `parse_settings`)."""
    query = {}
    for name in SETTINGS:
        value = target.input_shape[0] if name == "batch" else target.settings()[name]
        if isinstance(value, bool):
            query[name] = "true" if value else "false"
        elif isinstance(value, float):
            query[name] = repr(value)  # round-trips exactly
        else:
            query[name] = str(value)
    return query


def parse_settings(query: str) -> dict[str, Any]:
    """Parse and type-check measurement settings from a URL query string.

    Raises:
        BadRequest: 400 naming the unknown, repeated or malformed parameter.
    """
    try:
        raw = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    except ValueError as error:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"malformed query string: {error}") from None
    settings: dict[str, Any] = {}
    for name, values in raw.items():
        if name not in SETTINGS:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"unknown parameter {quote(name)}; valid parameters are {sorted(SETTINGS)}")
        if len(values) != 1:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"parameter {quote(name)} given {len(values)} times")
        try:
            settings[name] = SETTINGS[name](values[0])
        except ValueError:
            kind = _KINDS.get(SETTINGS[name], "value")
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"parameter {name!r}: {quote(values[0])} is not {kind}") from None
    return settings


def load_token(token_file: str | Path | None, option: str = "--token-file") -> str | None:
    """The device token: from `token_file` if given, else from `NETADAPT_DEVICE_TOKEN`.

    Tokens are never taken from a command-line argument, which any user can
    read in the process list.

    Args:
        token_file: a file holding the token (surrounding whitespace is ignored).
        option: how the file was named (e.g. "target.token_file"), for messages.

    Returns:
        The token, or None if neither source has one.

    Raises:
        ConfigError: the file is missing, unreadable or empty.
    """
    if token_file is not None:
        path = Path(token_file).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigError(f"{option} {path}: cannot read the token file: {error.strerror}") from None
        if not token:
            raise ConfigError(f"{option} {path}: the token file is empty")
        try:
            if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                print(f"warning: {path} is readable by other users; chmod 600 it", file=sys.stderr)
        except OSError:
            pass
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None
