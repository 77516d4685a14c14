"""netadapt: shrink a MobileNetV3 to a latency budget measured with onnxruntime on the target (NetAdapt).

The main entry points, importable from here:

- `load_config`: a validated `Config` from YAML plus ``key=value`` overrides;
- `run_search`: run (or resume) a search into a run directory;
- `export_family`: a finished run's Pareto family, as files and a DataFrame;
- `LatencyTable`, `Target`, `LocalMeasurer`: the latency lookup table and what it measures on.

Each is imported on first use, so ``import netadapt`` does not load torch or
onnxruntime.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

__all__ = ["LatencyTable", "LocalMeasurer", "Target", "__version__", "export_family", "load_config", "run_search"]

try:
    __version__ = metadata.version("netadapt")  # pyproject.toml owns the version
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_ENTRY_POINTS = {
    "LatencyTable": "netadapt.latency",
    "LocalMeasurer": "netadapt.benchmark",
    "Target": "netadapt.benchmark",
    "export_family": "netadapt.family",
    "load_config": "netadapt.config",
    "run_search": "netadapt.search",
}


def __getattr__(name: str) -> Any:
    module = _ENTRY_POINTS.get(name)
    if module is None:
        raise AttributeError(f"module 'netadapt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
