"""One exception type per kind of user error.

Each message names the file, key or block at fault and says what to do, and
quotes a value only through `quote` (a short prefix: values from files can
be of any size). The CLI prints these without a traceback; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

from mobilenetv3.messages import quote

__all__ = [
    "ConfigError",
    "DataError",
    "DeviceError",
    "LatencyTableError",
    "NetadaptError",
    "RunDirError",
    "SearchError",
    "quote",
]


class NetadaptError(Exception):
    """Base class of every error caused by user input rather than a bug."""


class ConfigError(NetadaptError, ValueError):
    """A config file, `--set` override or command-line value is invalid."""


class DataError(NetadaptError):
    """A dataset file or folder is missing, corrupt or inconsistent."""


class LatencyTableError(NetadaptError):
    """A latency lookup table is corrupt or belongs to another target."""


class DeviceError(NetadaptError):
    """A remote target device could not be reached or refused a request."""


class RunDirError(NetadaptError):
    """A run directory is missing, incomplete or inconsistent."""


class SearchError(NetadaptError):
    """The search cannot start or continue with the given settings."""
