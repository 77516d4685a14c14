"""Where netadapt caches what it can reuse across runs: trained base networks and latency tables."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """The cache folder: `NETADAPT_CACHE` if set, else `~/.cache/netadapt`.

    Read on every call, so a test or a worker can point it elsewhere at any time.
    """
    return Path(os.environ.get("NETADAPT_CACHE", "~/.cache/netadapt")).expanduser()
