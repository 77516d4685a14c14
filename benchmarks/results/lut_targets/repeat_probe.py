"""Probe (2026-12-03): what limits a table's accuracy, its entries or the whole-network figures?

Takes a table and a `lut validate --out` CSV made from it (as `lut_targets.py --out` keeps them)
and measures again, with the table's own measurer and gauge: every validation network whole
(`network_passes` passes, best kept, as `lut validate` does) and every unit of those networks
once (gauged, not stored). Prints how far the fresh figures are from the stored ones, for the
raw sums and for the whole networks, and how well a correction fitted on half of the networks
(200 random halves) predicts the other half from each pairing of stored and fresh figures. Run
from the repository root, nothing else running:

    python benchmarks/results/lut_targets/repeat_probe.py TABLE.csv VALIDATE.csv --preset large --size 224 --threads 1
"""
import argparse
import json
import random
import statistics

import numpy as np
import pandas as pd

from mobilenetv3 import NetSpec
from netadapt.benchmark import best_of
from netadapt.config import load_config
from netadapt.latency import LatencyTable, fit_correction_terms
from netadapt.latency.units import unit_onnx
from netadapt.measurers import make_measurer

parser = argparse.ArgumentParser()
parser.add_argument("table")
parser.add_argument("validation")
parser.add_argument("--preset", default="large")
parser.add_argument("--size", type=int, default=224)
parser.add_argument("--threads", type=int, default=1)
args = parser.parse_args()

config = load_config(None, [], {"model.preset": args.preset, "target.threads": args.threads, "target.batch": 1})
shape = (1, 3, args.size, args.size)
table = LatencyTable.open(args.table, make_measurer(config.target, config.measure, shape), shape)
rows = pd.read_csv(args.validation)
specs = [NetSpec.from_dict(json.loads(text)) for text in rows["spec"]]
statistic = f"{table.statistic}_ms"

units = {unit.key(): unit for spec in specs for unit in table.units(spec)}
print(f"{len(specs)} networks, {len(units)} distinct units; measuring the units once more ...", flush=True)
keys = list(units)
fresh_units, _ = table.measure_gauged([unit_onnx(units[key], table.batch) for key in keys], candidates=list(units.values()))
fresh_entry = {key: m.statistic_ms(table.statistic) for key, m in zip(keys, fresh_units)}
print(f"... and the networks whole ({config.lut.network_passes} passes)", flush=True)
fresh_whole = [m.statistic_ms(table.statistic) for m in best_of(table.measure_networks(specs, config.lut.network_passes))]

frame = pd.DataFrame({
    "kind": rows["kind"],
    "raw_stored": [sum(float(table.entries[u.key()][statistic]) for u in table.units(s)) for s in specs],
    "raw_fresh": [sum(fresh_entry[u.key()] for u in table.units(s)) for s in specs],
    "whole_stored": rows["measured_ms"],
    "whole_fresh": fresh_whole,
    "boundary": rows["boundary_millions"],
    "weights": rows["weights_millions"],
})
entry_ratio = np.array([fresh_entry[k] / float(table.entries[k][statistic]) for k in keys])
print(f"\nunits: fresh / stored median {np.median(entry_ratio):.4f}, median |diff| "
      f"{100 * np.median(np.abs(entry_ratio - 1)):.2f}%, p90 |diff| {100 * np.percentile(np.abs(entry_ratio - 1), 90):.2f}%")
for name in ("raw", "whole"):
    ratio = frame[f"{name}_fresh"] / frame[f"{name}_stored"]
    print(f"{name:>5} sums: fresh / stored median {ratio.median():.4f}, median |diff| {100 * (ratio - 1).abs().median():.2f}%, "
          f"max |diff| {100 * (ratio - 1).abs().max():.2f}%")


def halves(raw: str, whole: str, draws: int = 200) -> tuple[float, float, float]:
    """Median over random halves of (median |error|, share within 5%, max |error|) on the other half."""
    rng = random.Random(0)
    scores = []
    for _ in range(draws):
        fit = rng.sample(range(len(frame)), len(frame) // 2)
        test = [i for i in range(len(frame)) if i not in fit]
        part = frame.iloc[fit]
        correction = fit_correction_terms(list(part[raw]), list(part[whole]), list(part["boundary"]), list(part["weights"]))
        errors = [abs(correction.apply(frame[raw][i], frame["boundary"][i], frame["weights"][i]) / frame[whole][i] - 1) * 100
                  for i in test]
        scores.append((statistics.median(errors), sum(e <= 5 for e in errors) / len(errors) * 100, max(errors)))
    return tuple(float(v) for v in np.median(np.array(scores), axis=0))


print("\nfit on half the networks, scored on the other half (medians over 200 halves):")
print(f"{'entries':>8} {'whole':>8} {'median':>8} {'within 5%':>10} {'max':>8}")
for raw in ("raw_stored", "raw_fresh"):
    for whole in ("whole_stored", "whole_fresh"):
        median, within, worst = halves(raw, whole)
        print(f"{raw[4:]:>8} {whole[6:]:>8} {median:>7.2f}% {within:>9.1f}% {worst:>7.2f}%")
frame["raw_best"] = frame[["raw_stored", "raw_fresh"]].min(axis=1)
frame["whole_best"] = frame[["whole_stored", "whole_fresh"]].min(axis=1)
median, within, worst = halves("raw_best", "whole_best")
print(f"{'best':>8} {'best':>8} {median:>7.2f}% {within:>9.1f}% {worst:>7.2f}%")
with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
    print("\n" + frame.drop(columns=["boundary", "weights"]).to_string())
