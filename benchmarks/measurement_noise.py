"""How steady is a latency figure on this machine? Median vs the quiet figure vs the fastest run.

Two measurements, with onnxruntime on this CPU (1 thread):

1. trace: one session of a network timed in back-to-back windows of
   `--window-ms` for `--trace-seconds`; prints each window's median and the
   share of windows within 10% of the fastest one. Phases where every run
   is slow show up as runs of high window medians.
2. repeats: each network measured `--repeats` times (a fresh session each),
   alternating between networks; the coefficient of variation across the
   repeats of the plain median, of the quiet figure (the lowest round
   median, `measure.statistic: quiet`) and of the fastest run
   (`measure.statistic: min`), for each `--seconds` setting.

    python benchmarks/measurement_noise.py
    python benchmarks/measurement_noise.py --input 1x3x224x224 --preset large --seconds 0.5 2
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import onnxruntime as ort

import mobilenetv3 as m
from netadapt.benchmark import Target, cpu_model, measure
from netadapt.cli.common import parse_input_shape
from netadapt.onnx_export import onnx_bytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=["large", "small"])
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--input", default="1x1x28x28")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--trace-seconds", type=float, default=20.0)
    parser.add_argument("--window-ms", type=float, default=100.0)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--seconds", type=float, nargs="+", default=[0.2, 2.0],
                        help="min_seconds settings to compare (default: 0.2, the search's, and 2)")
    parser.add_argument("--windows-per-second", type=float, default=20.0,
                        help="rounds per second of measurement for the quiet figure (default 20: 50 ms rounds)")
    args = parser.parse_args()
    shape = parse_input_shape(args.input)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.platform()}, onnxruntime {ort.__version__}, "
          f"load average {os.getloadavg()}")
    models = {
        width: onnx_bytes(m.build(m.preset(args.preset, width=width, num_classes=args.classes, in_channels=shape[1])),
                          shape)
        for width in args.widths
    }

    # 1. The trace of one session.
    target = Target(input_shape=shape)
    first = next(iter(models))
    session = ort.InferenceSession(models[first], sess_options=target.session_options(), providers=[target.provider])
    feeds = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for _ in range(20):
        session.run(None, feeds)
    windows = []
    end = time.perf_counter() + args.trace_seconds
    while time.perf_counter() < end:
        runs, window_end = [], time.perf_counter() + args.window_ms / 1e3
        while time.perf_counter() < window_end:
            start = time.perf_counter()
            session.run(None, feeds)
            runs.append((time.perf_counter() - start) * 1e3)
        windows.append(float(np.median(runs)))
    medians = np.asarray(windows)
    fast = medians <= 1.1 * medians.min()
    print(f"\n## trace: {args.preset}-{first} at {args.input}, one session, {len(medians)} windows of "
          f"{args.window_ms:g} ms")
    print("window medians (ms): " + " ".join(f"{x:.3f}" for x in medians))
    print(f"fastest {medians.min():.3f} ms, slowest {medians.max():.3f} ms, median {np.median(medians):.3f} ms; "
          f"{100 * fast.mean():.0f}% of windows within 10% of the fastest")

    # 2. Repeats: median vs quiet vs min, per measuring time.
    print(f"\n## repeats: {args.repeats} fresh sessions per network, networks alternating")
    print(f"{'network':>12} {'seconds':>8} {'rounds':>7} {'median CV':>10} {'quiet CV':>9} {'min CV':>7} "
          f"{'median ms':>18} {'quiet ms':>18} {'min ms':>18}")
    for seconds in args.seconds:
        rounds = max(1, round(seconds * args.windows_per_second))
        settings = Target.from_settings(shape, min_seconds=seconds, windows=rounds)
        results: dict[float, list] = {width: [] for width in models}
        for _ in range(args.repeats):
            for width, model in models.items():
                results[width].append(measure(model, settings))
        for width, measured in results.items():
            median = np.array([r.median_ms for r in measured])
            quiet = np.array([r.quiet_ms for r in measured])
            fastest = np.array([r.min_ms for r in measured])
            print(f"{args.preset + '-' + str(width):>12} {seconds:>8g} {rounds:>7} {100 * median.std() / median.mean():>9.1f}% "
                  f"{100 * quiet.std() / quiet.mean():>8.1f}% {100 * fastest.std() / fastest.mean():>6.1f}% "
                  f"{median.min():>8.3f}-{median.max():<8.3f} {quiet.min():>8.3f}-{quiet.max():<8.3f} "
                  f"{fastest.min():>8.3f}-{fastest.max():<8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
