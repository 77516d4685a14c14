"""netadapt's file helpers: atomic writes, and reads that refuse what a person could get wrong.

One implementation, in `mobilenetv3.fileio`: the generator saves and loads
specs with it and may not import netadapt, so netadapt reads it from there
and its own modules import it from here. See that module for the contract:
a kill leaves the old file or the new one, new files follow the umask, and
YAML aliases and duplicate keys are refused with `InputError`. `load_spec`
reads a spec file the user named, as a `ConfigError` that names the option.
"""

from __future__ import annotations

from pathlib import Path

from mobilenetv3.fileio import (
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    InputError,
    atomic_write_bytes,
    atomic_write_text,
    load_json,
    load_yaml,
    read_text,
    read_yaml,
)

from mobilenetv3.spec import NetSpec
from netadapt.errors import ConfigError

__all__ = ["MAX_YAML_DEPTH", "MAX_YAML_NODES", "InputError", "atomic_write_bytes", "atomic_write_text", "load_json",
           "load_spec", "load_yaml", "read_text", "read_yaml"]


def load_spec(path: str | Path, option: str) -> NetSpec:
    """The spec in the YAML file `path`, which the user named with `option` (e.g. "--spec", "model.spec").

    Raises:
        ConfigError: the file is missing or not a valid spec; the message names `option` and the file.
    """
    try:
        return NetSpec.load(path)
    except FileNotFoundError:
        raise ConfigError(f"{option} {path}: file not found") from None
    except ValueError as error:
        message = str(error)
        # NetSpec's own messages start with the file; name it once, after the option.
        raise ConfigError(f"{option} {message}" if message.startswith(str(path)) else f"{option} {path}: {message}") from None
