"""Interleaved measuring on more than one thread: do the idle sessions' spinning threads slow the timed one?

`measure_many` keeps up to `MAX_INTERLEAVED` sessions open and times them in
turn. With `target.threads` > 1 each session owns an intra-op pool, and with
`allow_spinning` (onnxruntime's default) a pool's workers keep spinning after
its Run returns. While one session is timed, the others' workers then compete
with it for the cores. This script measures the units of one network and the
network itself four ways, side by side in one run:

- alone:                 one session at a time (nothing else open), workers spinning between
                         runs (`target.spin_between_runs: true`, onnxruntime's default);
- interleaved:           all of them in one `measure_many` batch, as `lut build` measures, spinning;
- alone, spin stop:      one at a time, `spin_between_runs: false` (netadapt's default: the pool
                         stops spinning when a run returns and wakes on the next);
- interleaved, spin stop: one batch, `spin_between_runs: false`.

It prints, per mode, the sum of the unit figures, the whole network's figure
and their ratio, and each unit's figure against the same unit measured alone.

    python benchmarks/interleaved_spinning.py [--preset small] [--input 1x3x224x224] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys

import onnxruntime as ort

from mobilenetv3 import build, preset
from netadapt.benchmark import Target, cpu_model, measure_many
from netadapt.cli.common import parse_input_shape
from netadapt.latency import unit_onnx, units_of
from netadapt.onnx_export import onnx_bytes


MODES = [  # (name, interleaved?, target.spin_between_runs)
    ("alone", False, True),
    ("interleaved", True, True),
    ("alone, spin stop", False, False),
    ("interleaved, spin stop", True, False),
]


def _measure(models: list[bytes], target: Target, interleaved: bool) -> list[float]:
    if interleaved:
        return [m.latency_ms for m in measure_many(models, target)]
    return [measure_many([model], target)[0].latency_ms for model in models]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["large", "small"], default="small")
    parser.add_argument("--input", default="1x3x224x224", metavar="NxCxHxW")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=3, help="passes over the four modes; each figure keeps its best pass")
    args = parser.parse_args()

    shape = parse_input_shape(args.input)
    spec = preset(args.preset, in_channels=shape[1], num_classes=1000)
    target = Target.from_settings(shape, threads=args.threads)
    units = units_of(spec, shape)
    models = [unit_onnx(unit, shape[0]) for unit in units] + [onnx_bytes(build(spec), shape)]
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.platform()}, onnxruntime {ort.__version__}; "
          "load average %.2f %.2f %.2f at start" % os.getloadavg())
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"{spec.name} at {args.input}, {args.threads} intra-op threads, statistic {target.statistic}: "
          f"{len(units)} units and the whole network, {args.passes} passes over the modes in turn")

    best: dict[str, list[float]] = {}
    for _ in range(args.passes):
        for name, interleaved, spin in MODES:
            figures = _measure(models, target.with_settings(spin_between_runs=spin), interleaved)
            best[name] = figures if name not in best else [min(a, b) for a, b in zip(best[name], figures)]
    print("load average %.2f %.2f %.2f at end" % os.getloadavg())
    print()
    alone = best["alone"]
    print(f"{'mode':<24} {'sum of units ms':>16} {'whole ms':>9} {'whole / sum':>12} {'units vs alone (median)':>24}")
    for name, _, _ in MODES:
        figures = best[name]
        unit_sum, whole = sum(figures[:-1]), figures[-1]
        against = statistics.median(f / a for f, a in zip(figures[:-1], alone[:-1]))
        print(f"{name:<24} {unit_sum:>16.3f} {whole:>9.3f} {whole / unit_sum:>12.3f} {against:>24.3f}")
    print()
    print(f"{'unit':<28} " + " ".join(f"{name:>22}" for name, _, _ in MODES))
    for index, unit in enumerate(units):
        print(f"{unit.key()[:28]:<28} " + " ".join(f"{best[name][index]:>22.4f}" for name, _, _ in MODES))


if __name__ == "__main__":
    main()
