"""Probe (2026-12-03): the build's 12 correction networks measured again, later, against the build's fit.

Takes a table built by `lut build` (its correction fitted on `calibration_specs(base, 12)`)
and a `lut validate --out` CSV made from it. Measures the 12 networks whole with the table's
measurer and gauge, 4 passes one by one (each network's measured / predicted ratio per pass),
then 8 passes, best kept, and refits the correction on those fresh figures in each form,
scoring every fit on the validation's networks. Run from the repository root, nothing else
running (the third large-224-1 table, which it was run on, was not kept):

    python benchmarks/results/lut_targets/calibration_probe.py TABLE.csv VALIDATE.csv
"""
import argparse
import json
import statistics

import pandas as pd

import mobilenetv3 as m
from mobilenetv3 import NetSpec, build
from netadapt.benchmark import best_of
from netadapt.config import load_config
from netadapt.latency import LatencyTable, calibration_specs, fit_correction_terms
from netadapt.measurers import make_measurer
from netadapt.onnx_export import onnx_bytes

parser = argparse.ArgumentParser()
parser.add_argument("table")
parser.add_argument("validation")
args = parser.parse_args()
config = load_config(None, [], {"model.preset": "large", "target.threads": 1, "target.batch": 1})
shape = (1, 3, 224, 224)
table = LatencyTable.open(args.table, make_measurer(config.target, config.measure, shape), shape)
specs = calibration_specs(m.large(num_classes=1000), 12)
models = [onnx_bytes(build(spec).eval(), shape) for spec in specs]
for index in range(4):
    measured, gauges = table.measure_gauged(models)
    print(f"pass {index}: gauge {gauges[0]:.3f}, measured / predicted:",
          " ".join(f"{one.latency_ms / table.predict_ms(spec):.3f}" for one, spec in zip(measured, specs)))
whole = [one.latency_ms for one in best_of(table.measure_networks(specs, 8))]
rows = pd.read_csv(args.validation)
checked = [NetSpec.from_dict(json.loads(text)) for text in rows["spec"]]


def terms(networks):
    return ([table.raw_sum_ms(s) for s in networks], [table.boundary_millions(s) for s in networks],
            [table.weights_millions(s) for s in networks])


sums, boundaries, weights = terms(specs)
checked_sums, checked_boundaries, checked_weights = terms(checked)
for form in (None, "affine", "affine+boundary", "affine+boundary+weights"):
    correction = fit_correction_terms(sums, whole, boundaries, weights, form=form)
    errors = [abs(correction.apply(s, b, w) / actual - 1) * 100 for s, b, w, actual
              in zip(checked_sums, checked_boundaries, checked_weights, rows["measured_ms"])]
    print(f"refit {form or 'chosen'} -> {correction.form}: validation median {statistics.median(errors):.2f}%, "
          f"within 5% {100 * sum(e <= 5 for e in errors) / len(errors):.0f}%, max {max(errors):.1f}% ({correction.describe()})")
