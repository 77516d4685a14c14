"""Probe (2026-12-02): six networks of the small-28-2 validation, measured whole on 1 thread and on
2 threads with and without the spin stop, best of 4 interleaved passes. Does the floor skip the
pool (a 2-thread figure near its 1-thread one)? Run from the repository root:

    python benchmarks/results/lut_targets/floor_probe.py
"""
import json
from pathlib import Path
import pandas as pd
from mobilenetv3 import NetSpec
from netadapt.benchmark import LocalMeasurer, Target, measure_best_of

rows = pd.read_csv(Path(__file__).with_name("validate-2026-12-02-small-28-2-spin-stop.csv"))
picked = {"floor (row 35)": 35, "near floor (row 26)": 26, "mid trajectory (row 31)": 31,
          "random (row 5)": 5, "random (row 8)": 8, "trajectory top (row 28)": 28}
specs = {name: NetSpec.from_dict(json.loads(rows.loc[i, "spec"])) for name, i in picked.items()}
shape = (1, 1, 28, 28)
results = {}
for label, settings in [("1 thread", dict(threads=1)), ("2 threads, stop", dict(threads=2, spin_between_runs=False)),
                        ("2 threads, spinning", dict(threads=2, spin_between_runs=True))]:
    measurer = LocalMeasurer(Target.from_settings(shape, **settings))
    results[label] = [m.latency_ms for m in measure_best_of(list(specs.values()), measurer, shape, passes=4)]
frame = pd.DataFrame(results, index=list(specs))
frame["2-stop / 1"] = frame["2 threads, stop"] / frame["1 thread"]
frame["2-spin / 1"] = frame["2 threads, spinning"] / frame["1 thread"]
print(frame.round(4).to_string())
