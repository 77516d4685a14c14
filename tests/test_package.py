"""The package's public surface: its version and its entry points, loaded only when used."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import netadapt


def test_version_comes_from_the_installed_metadata():
    assert netadapt.__version__ == metadata.version("netadapt")


def test_entry_points_are_the_library_objects():
    from netadapt.benchmark import LocalMeasurer, Target
    from netadapt.config import load_config
    from netadapt.family import export_family
    from netadapt.latency import LatencyTable
    from netadapt.search import run_search

    assert netadapt.run_search is run_search and netadapt.export_family is export_family
    assert netadapt.LatencyTable is LatencyTable and netadapt.Target is Target
    assert netadapt.LocalMeasurer is LocalMeasurer and netadapt.load_config is load_config
    assert set(netadapt.__all__) == {"__version__", *netadapt._ENTRY_POINTS}


def _modules_after(code: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_importing_netadapt_loads_neither_torch_nor_onnxruntime():
    loaded = _modules_after("import netadapt; netadapt.__version__")
    assert "torch" not in loaded and "onnxruntime" not in loaded
