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


# What the CLI parser may not load: `netadapt --help` took 2.3 s when it did.
HEAVY = {"torch", "onnx", "onnxruntime", "numpy", "pandas"}


def test_building_the_cli_parser_loads_no_heavy_library():
    loaded = _modules_after("import netadapt.cli.main as cli; cli.build_parser()")
    assert "netadapt.cli.lut" in loaded  # every command's parser was built
    assert not HEAVY & {name.split(".")[0] for name in loaded}


def test_every_command_help_loads_no_heavy_library():
    # `--help` exits inside parse_args, before any handler: what one command's help costs.
    from netadapt.cli.main import COMMAND_MODULES

    for command in COMMAND_MODULES:
        loaded = _modules_after(
            "import contextlib, io\nimport netadapt.cli.main as cli\n"
            f"with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            f"    cli.main([{command!r}, '--help'])")
        assert not HEAVY & {name.split(".")[0] for name in loaded}, command


def test_the_device_client_imports_neither_the_server_nor_its_worker():
    loaded = _modules_after("import netadapt.device.client")
    assert "netadapt.device.protocol" in loaded
    assert not {"netadapt.device.server", "netadapt.device.worker", "netadapt.device.limits"} & loaded


def test_the_device_server_and_its_measuring_child_start_without_torch():
    # The server runs on the device (a phone, a board): it measures ONNX bytes and never needs torch,
    # whose import took most of its start-up and a few hundred MB in the server and in its child.
    loaded = _modules_after("import netadapt.cli.device, netadapt.device.server, netadapt.device.worker")
    assert "onnxruntime" in loaded
    assert "torch" not in {name.split(".")[0] for name in loaded}
