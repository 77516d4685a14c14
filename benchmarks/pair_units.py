"""Would a table of adjacent unit pairs predict whole networks where single units do not?

At 96 px and above the table's single-unit sum, corrected by any global form
tried, misses whole networks by a median 3-5% (benchmarks/results/lut_targets/).
One explanation is the boundary between units: a unit measured alone converts
its input and output to and from onnxruntime's blocked layout, reads them from
memory rather than cache, and pays one session's overhead, all of which the
whole network pays once or not at all. A pair of adjacent units, measured as one
model, contains its inner boundary as the network has it. Inclusion-exclusion

    pairs(net) = sum over adjacent pairs (u_i, u_i+1) - sum over inner units u_1 .. u_n-2

then counts every inner boundary once as the network runs it, and the session
overhead, the network's input and its output exactly once, with no fitted term.

This script samples networks as `lut validate` does (the base, random cuts and
trajectory networks, seeded), measures every distinct single unit, every
distinct adjacent pair and every whole network in the same interleaved passes
(shuffled, fastest pass kept, as the table measures), and compares:

- singles: the raw sum of single units, and that sum corrected by
  `fit_correction_terms` (the table's own fit: it picks its form) on --fit
  networks drawn at random, scored on the others, over --draws draws;
- pairs: the inclusion-exclusion sum raw, and with an affine fit the same way.

Nothing here changes the table; it answers whether pair entries are worth
building. Prints one table and writes a CSV of every network with --out.

    python benchmarks/pair_units.py --input 1x3x160x160
    python benchmarks/pair_units.py --input 1x3x224x224 --networks 30 --out runs/pairs-224
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

import mobilenetv3 as m
from netadapt.benchmark import LocalMeasurer, Target, best_of, measure_onnx_passes
from netadapt.io import atomic_write_text
from netadapt.latency import fit_correction_terms
from netadapt.latency.units import Unit, boundary_millions, unit_module, units_of, weights_millions
from netadapt.latency.validate import random_subnetwork, trajectory_specs
from netadapt.onnx_export import onnx_bytes


def parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 4:
        raise SystemExit(f"--input: expected NxCxHxW, got {text!r}")
    return parts  # type: ignore[return-value]


def pair_onnx(first: Unit, second: Unit, batch: int) -> bytes:
    """Two adjacent units as one model, as the network chains them."""
    return onnx_bytes(nn.Sequential(unit_module(first), unit_module(second)).eval(), first.input_shape(batch))


def pair_prediction(units: list[Unit], single_ms: dict[str, float], pair_ms: dict[tuple[str, str], float]) -> float:
    """Inclusion-exclusion over a network's units: every adjacent pair, less every inner unit (counted twice)."""
    pairs = sum(pair_ms[(first.key(), second.key())] for first, second in zip(units, units[1:]))
    return pairs - sum(single_ms[unit.key()] for unit in units[1:-1])


def relative_fit_errors(measured: np.ndarray, fit: int, draws: int, seed: int, fitter) -> np.ndarray:
    """Median |error| (%) on the networks left out, one per draw of `fit` networks to fit on."""
    rng = np.random.default_rng(seed)
    medians = []
    for _ in range(draws):
        chosen = rng.choice(len(measured), size=fit, replace=False)
        rest = np.setdiff1d(np.arange(len(measured)), chosen)
        predict = fitter(chosen)
        errors = np.abs(np.array([predict(index) for index in rest]) / measured[rest] - 1) * 100
        medians.append(np.median(errors))
    return np.array(medians)


def table_mode(args: argparse.Namespace, shape: tuple[int, int, int, int], specs: list, networks: list) -> int:
    """Singles and whole networks measured as the table measures them; the same fits scored."""
    import tempfile

    from netadapt.latency import LatencyTable
    from netadapt.latency.table import REFERENCE_UNITS

    measurer = LocalMeasurer(Target.from_settings(shape, threads=args.threads))
    references = REFERENCE_UNITS if args.references is None else args.references
    with tempfile.TemporaryDirectory() as folder:
        table = LatencyTable.open(Path(folder) / "lut.csv", measurer, shape, reference_units=references)
        start = time.perf_counter()
        table.fill(specs, progress=False, passes=args.passes)
        fill_s = time.perf_counter() - start
        whole_ms = np.array([one.latency_ms for one in best_of(table.measure_networks(specs, args.passes))])
        single_sum = np.array([table.raw_sum_ms(spec) for spec in specs])
    print(f"through a LatencyTable with {references} reference unit(s): {len(table)} entries in {fill_s:.0f} s "
          f"({args.passes} passes), then the whole networks in {args.passes} passes")
    report(args, specs, shape, whole_ms, single_sum, None)
    return 0


def report(args: argparse.Namespace, specs: list, shape: tuple[int, int, int, int], whole_ms: np.ndarray,
           single_sum: np.ndarray, pair_sum: np.ndarray | None) -> None:
    """Print the raw and the fitted predictors' errors; write networks.csv with --out."""
    boundaries = np.array([boundary_millions(spec, shape) for spec in specs])
    weights = np.array([weights_millions(spec) for spec in specs])

    def table_fit(chosen: np.ndarray):
        correction = fit_correction_terms(list(single_sum[chosen]), list(whole_ms[chosen]), list(boundaries[chosen]),
                                          list(weights[chosen]))
        return lambda i: correction.apply(single_sum[i], boundaries[i], weights[i])

    def affine_fit(sums: np.ndarray):
        def fitter(chosen: np.ndarray):
            # Least squares on relative error, as the table fits: rows divided by the measured figure.
            rows = np.stack([sums[chosen], np.ones(len(chosen))], axis=1) / whole_ms[chosen, None]
            scale, offset = np.linalg.lstsq(rows, np.ones(len(chosen)), rcond=None)[0]
            return lambda i: scale * sums[i] + offset
        return fitter

    def raw(sums: np.ndarray) -> np.ndarray:
        return np.abs(sums / whole_ms - 1) * 100

    print()
    print("predictor                              median |error|  within 5%   max")
    predictors = [("singles, raw sum", single_sum)] + ([("pairs, raw inclusion-exclusion", pair_sum)] if pair_sum is not None else [])
    for name, sums in predictors:
        errors = raw(sums)
        print(f"{name:<38} {np.median(errors):>13.2f}% {np.mean(errors <= 5) * 100:>9.0f}% {np.max(errors):>6.2f}%")
    print()
    print(f"fitted on {args.fit} networks, scored on the other {len(specs) - args.fit}, {args.draws} draws: "
          "mean (and 90th percentile) of the draws' median |error|")
    fitters = [("singles, the table's fit", table_fit), ("singles, affine", affine_fit(single_sum))]
    if pair_sum is not None:
        fitters.append(("pairs, affine", affine_fit(pair_sum)))
    for name, fitter in fitters:
        medians = relative_fit_errors(whole_ms, args.fit, args.draws, args.seed, fitter)
        print(f"{name:<38} {medians.mean():>13.2f}% (p90 {np.percentile(medians, 90):.2f}%)")

    half = args.networks // 2
    frame = pd.DataFrame({
        "kind": ["base"] + ["random"] * half + ["trajectory"] * (len(specs) - 1 - half),
        "measured_ms": whole_ms, "single_sum_ms": single_sum,
        "pair_sum_ms": pair_sum if pair_sum is not None else np.nan,
        "boundary_millions": boundaries, "weights_millions": weights,
    })
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "networks.csv", frame.to_csv(index=False))
        print(f"\nwrote {args.out / 'networks.csv'}")
    print(f"load average at the end {os.getloadavg()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("small", "large"), default="small")
    parser.add_argument("--input", default="1x3x160x160", help="N x C x H x W (default 1x3x160x160)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--networks", type=int, default=30, help="random cuts and trajectory networks, half each, plus the base")
    parser.add_argument("--passes", type=int, default=3, help="interleaved passes over every model; the fastest is kept")
    parser.add_argument("--fit", type=int, default=12, help="networks each correction is fitted on")
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--separate", action="store_true",
                        help="measure the units first and the whole networks after them, in passes of their own, "
                             "as a latency table does (default: all in the same shuffled passes)")
    parser.add_argument("--table", action="store_true",
                        help="measure the single units and the whole networks through a new LatencyTable, as "
                             "`lut build` and `lut validate` do (gauged, unit batches then network passes); no pairs")
    parser.add_argument("--references", type=int, default=None,
                        help="with --table: reference units of its gauge (default the table's; 0: no gauge)")
    parser.add_argument("--out", type=Path, default=None, help="write networks.csv and summary.txt here")
    args = parser.parse_args(argv)
    if args.table and args.separate:
        parser.error("--table measures the units and the whole networks apart already, as a table does; drop --separate")

    shape = parse_shape(args.input)
    torch.set_num_threads(1)  # exports only; keep torch's pool from competing with the measurements
    base = (m.large if args.preset == "large" else m.small)(width=1.0, num_classes=1000, in_channels=shape[1])
    rng = random.Random(args.seed)
    specs = [base] + [random_subnetwork(base, rng) for _ in range(args.networks // 2)]
    specs += trajectory_specs(base, args.networks - args.networks // 2, rng)
    networks = [units_of(spec, shape) for spec in specs]

    singles = {unit.key(): unit for units in networks for unit in units}
    pairs = {(a.key(), b.key()): (a, b) for units in networks for a, b in zip(units, units[1:])}
    print(f"# pair units: {args.preset} at {'x'.join(map(str, shape))}, {args.threads} thread(s)")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()}")
    print(f"{len(specs)} networks, {len(singles)} distinct single units, {len(pairs)} distinct adjacent pairs")

    if args.table:
        return table_mode(args, shape, specs, networks)
    start = time.perf_counter()
    batch = shape[0]
    models = [onnx_bytes(unit_module(unit).eval(), unit.input_shape(batch)) for unit in singles.values()]
    models += [pair_onnx(a, b, batch) for a, b in pairs.values()]
    models += [onnx_bytes(m.build(spec).eval(), shape) for spec in specs]
    export_s = time.perf_counter() - start

    measurer = LocalMeasurer(Target.from_settings(shape, threads=args.threads))
    start = time.perf_counter()
    if args.separate:
        parts = len(singles) + len(pairs)
        figures = [one.latency_ms for one in best_of(measure_onnx_passes(models[:parts], measurer, args.passes))]
        figures += [one.latency_ms for one in best_of(measure_onnx_passes(models[parts:], measurer, args.passes))]
    else:
        figures = [one.latency_ms for one in best_of(measure_onnx_passes(models, measurer, args.passes))]
    measure_s = time.perf_counter() - start
    single_ms = dict(zip(singles, figures[: len(singles)]))
    pair_ms = dict(zip(pairs, figures[len(singles): len(singles) + len(pairs)]))
    whole_ms = np.array(figures[len(singles) + len(pairs):])
    print(f"exported in {export_s:.0f} s, measured {len(models)} models x {args.passes} passes in {measure_s:.0f} s"
          f" ({'units, then whole networks, apart' if args.separate else 'units and whole networks in the same passes'})")

    single_sum = np.array([sum(single_ms[u.key()] for u in units) for units in networks])
    pair_sum = np.array([pair_prediction(units, single_ms, pair_ms) for units in networks])
    report(args, specs, shape, whole_ms, single_sum, pair_sum)
    return 0


if __name__ == "__main__":
    sys.exit(main())
