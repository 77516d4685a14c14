"""Remote overhead: one measurement through `netadapt device serve` vs. the same one in-process.

Measures the same ONNX model with `LocalMeasurer` and with `RemoteMeasurer`
pointed at a device server started on loopback in a subprocess, alternating
the two so drift on a shared machine hits both alike. For each it reports the
wall time of one `measure()` call (what a lookup-table build or a search
step pays) and the per-inference median latency the call returns (which
should agree: the device runs the same benchmarker).

The remote overhead is HTTP, the upload, ONNX validation and the answer;
over loopback it is the floor of what a real network adds.

    python benchmarks/remote_overhead.py [--preset small] [--input 1x3x224x224] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time

import onnxruntime as ort

from mobilenetv3 import build, preset
from netadapt.benchmark import LocalMeasurer, Measurement, Target, cpu_model
from netadapt.cli.common import parse_input_shape
from netadapt.onnx_export import onnx_bytes
from netadapt.device.client import RemoteMeasurer


def _start_server(token: str) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, NETADAPT_DEVICE_TOKEN=token)  # the token never appears in argv
    process = subprocess.Popen(
        [sys.executable, "-m", "netadapt.cli.main", "device", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    line = process.stdout.readline()
    if "listening on http://" not in line:
        process.kill()
        raise SystemExit(f"device server did not start: {line!r}")
    return process, int(line.split()[2].rsplit(":", 1)[1])


def _timed(measurer: LocalMeasurer | RemoteMeasurer, model: bytes) -> tuple[float, Measurement]:
    start = time.perf_counter()
    result = measurer.measure(model)
    return (time.perf_counter() - start) * 1e3, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["large", "small"], default="small")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--input", default="1x3x224x224", metavar="NxCxHxW")
    parser.add_argument("--repeats", type=int, default=7, help="measure() calls per mode")
    parser.add_argument("--min-runs", type=int, default=30)
    parser.add_argument("--min-seconds", type=float, default=0.5)
    args = parser.parse_args()

    shape = parse_input_shape(args.input)
    spec = preset(args.preset, width=args.width, in_channels=shape[1])
    model = onnx_bytes(build(spec), shape)
    target = Target.from_settings(shape, min_runs=args.min_runs, min_seconds=args.min_seconds)

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.platform()}, "
          f"Python {platform.python_version()}, onnxruntime {ort.__version__}; "
          "load average %.2f %.2f %.2f at start" % os.getloadavg())
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"model: {spec.name} at {args.input}, {len(model) / 2**20:.2f} MiB ONNX; target: {target.session.threads} thread(s), "
          f"warm-up {target.measuring.warmup_runs}, >= {target.measuring.min_runs} runs and >= {target.measuring.min_seconds} s per call; "
          f"{args.repeats} calls per mode, alternating; device server on loopback in a subprocess")

    token = secrets.token_urlsafe(24)
    process, port = _start_server(token)
    try:
        local = LocalMeasurer(target)
        remote = RemoteMeasurer(f"127.0.0.1:{port}", target, token=token)
        remote.fingerprint()  # the one-off health check is not part of a measurement
        walls: dict[str, list[float]] = {"local": [], "remote": []}
        medians: dict[str, list[float]] = {"local": [], "remote": []}
        runs: dict[str, list[int]] = {"local": [], "remote": []}
        server_ms: list[float] = []
        validate_ms: list[float] = []
        for _ in range(args.repeats):
            for name, measurer in (("local", local), ("remote", remote)):
                wall, result = _timed(measurer, model)
                walls[name].append(wall)
                medians[name].append(result.median_ms)
                runs[name].append(result.runs)
                if name == "remote":
                    timing = remote.last_server_timing
                    server_ms.append((timing["end_s"] - timing["start_s"] - timing["validate_s"]) * 1e3)
                    validate_ms.append(timing["validate_s"] * 1e3)
    finally:
        process.terminate()
        process.wait(timeout=30)

    print(f"load average {'%.2f %.2f %.2f' % os.getloadavg()} at end (other work on the machine inflates every figure)")
    print()
    print(f"{'mode':<8} {'wall/call ms (median)':>22} {'min':>9} {'max':>9} {'latency ms (median)':>20} {'runs/call':>10}")
    for name in ("local", "remote"):
        print(f"{name:<8} {statistics.median(walls[name]):>22.1f} {min(walls[name]):>9.1f} {max(walls[name]):>9.1f} "
              f"{statistics.median(medians[name]):>20.3f} {statistics.median(runs[name]):>10.0f}")
    local_wall, remote_wall = statistics.median(walls["local"]), statistics.median(walls["remote"])
    on_device = statistics.median(server_ms)
    print()
    print(f"remote overhead per measurement: {remote_wall - local_wall:+.1f} ms "
          f"({remote_wall / local_wall:.3f}x the local call)")
    validation = statistics.median(validate_ms)
    print(f"  of the remote call: {on_device:.1f} ms measuring on the device (session + timed runs), "
          f"{validation:.1f} ms ONNX validation there, {remote_wall - on_device - validation:.1f} ms HTTP, upload and queueing")
    latency_ratio = statistics.median(medians["remote"]) / statistics.median(medians["local"])
    print(f"per-inference latency, remote / local: {latency_ratio:.3f}")


if __name__ == "__main__":
    main()
