"""Probe (2026-12-03): how far apart are whole-network figures from one onnxruntime session to the next?

MobileNetV3-Large at 1x3x224x224 and five networks of the third large-224-1 validation
(`validate-2026-12-03-large-224-1-third.csv`), each measured whole on 1 thread in 30 passes
(`measure_onnx_passes`: a new session per model and pass, each pass in its own order). Prints
each pass's figures, each network's max / min, and how far apart two best-of-k figures are
(two draws of k passes out of the 30, 2,000 times per network): what `lut.network_passes` = k
leaves. Run from the repository root, nothing else running:

    python benchmarks/results/lut_targets/session_spread.py
"""
import json
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd

import mobilenetv3 as m
from mobilenetv3 import NetSpec, build
from netadapt.benchmark import LocalMeasurer, Target, measure_onnx_passes
from netadapt.onnx_export import onnx_bytes

PASSES = 30
rows = pd.read_csv(Path(__file__).with_name("validate-2026-12-03-large-224-1-third.csv"))
picked = {"base": None, "random 3": 3, "random 8": 8, "random 0": 0, "trajectory 25": 25, "trajectory 39 (near floor)": 39}
specs = [m.large(num_classes=1000) if i is None else NetSpec.from_dict(json.loads(rows.loc[i, "spec"])) for i in picked.values()]
shape = (1, 3, 224, 224)
models = [onnx_bytes(build(spec).eval(), shape) for spec in specs]
start = time.time()
passes = measure_onnx_passes(models, LocalMeasurer(Target.from_settings(shape, threads=1)), PASSES)
figures = np.array([[one.latency_ms for one in measured] for measured in passes])
print(f"{PASSES} passes of {len(models)} networks in {time.time() - start:.0f} s (ms, fastest run of each session)")
with pd.option_context("display.width", 200):
    print(pd.DataFrame(figures, columns=list(picked)).round(3).to_string())
print("max / min:", dict(zip(picked, (figures.max(0) / figures.min(0)).round(3))))
rng = random.Random(0)
for k in (2, 4, 6, 8, 10):
    gaps = [abs(min(rng.sample(list(column), k)) / min(rng.sample(list(column), k)) - 1) * 100
            for _ in range(2000) for column in figures.T]
    print(f"best of {k:>2} passes: two such figures differ by a median {np.median(gaps):.2f}%, "
          f"p90 {np.percentile(gaps, 90):.2f}%, p99 {np.percentile(gaps, 99):.2f}%")
