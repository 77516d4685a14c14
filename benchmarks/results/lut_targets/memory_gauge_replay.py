"""Replay (2026-12-03): would a gauge of memory-bound work have tracked Large's whole networks?

Reads the two measurements of the third large-224-1 validation's 40 networks, minutes apart:
`validate-2026-12-03-large-224-1-third.csv` (the validation's own) and the fresh figures of
`repeat-probe-2026-12-03-large-224-1-third.txt`. Takes the n networks with the most parameters
as anchors (measured at both moments, as a gauge network would be) and predicts every other
network's second figure from its first by three rules: no change (what the unit gauge did),
the anchors' median ratio (a multiplicative gauge), and the anchors' shift per million
parameters times the network's parameters (a memory gauge). No measurement; run from the
repository root:

    python benchmarks/results/lut_targets/memory_gauge_replay.py
"""
from pathlib import Path

import numpy as np
import pandas as pd

here = Path(__file__).parent
lines = (here / "repeat-probe-2026-12-03-large-224-1-third.txt").read_text().splitlines()
header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["kind", "raw_stored"])
columns = lines[header].split()
table = pd.DataFrame([line.split()[1:] for line in lines[header + 1:] if line.strip()], columns=columns)
first, second = table["whole_stored"].astype(float), table["whole_fresh"].astype(float)
weights = pd.read_csv(here / "validate-2026-12-03-large-224-1-third.csv")["weights_millions"]
by_size = weights.sort_values(ascending=False).index
print(f"{'anchors':>7} {'rule':>15} {'median':>8} {'within 5%':>10} {'max':>7}")
for count in (1, 2, 3, 4):
    anchors = list(by_size[:count])
    rest = [i for i in table.index if i not in anchors]
    shift = float(np.sum((second[anchors] - first[anchors]) * weights[anchors]) / np.sum(weights[anchors] ** 2))
    ratio = float(np.median(second[anchors] / first[anchors]))
    rules = {"no change": first[rest], "anchors' ratio": first[rest] * ratio,
             f"{shift:.3f} ms/M": first[rest] + shift * weights[rest]}
    for name, predicted in rules.items():
        errors = (predicted / second[rest] - 1).abs() * 100
        print(f"{count:>7} {name:>15} {errors.median():>7.2f}% {100 * (errors <= 5).mean():>9.0f}% {errors.max():>6.1f}%")
