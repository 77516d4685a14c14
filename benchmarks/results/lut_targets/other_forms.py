"""Correction forms beyond netadapt's, refitted offline on the saved validation files (2026-12-01).

For each file: many times, fit a form on 12 of its networks (least squares on
relative error, as `fit_correction_terms` does) and check it on the rest;
print the median over draws of the median |error|, of the share within 5% and
of the max |error|. Nothing is measured. The forms that netadapt fits are the
first rows; the rest were tried and not adopted (README.md beside this file).

    python benchmarks/results/lut_targets/other_forms.py benchmarks/results/lut_targets/validate-2026-12-01-*.csv
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pandas as pd

from mobilenetv3 import NetSpec
from netadapt.latency.units import units_of


def features(frame: pd.DataFrame, size: int) -> dict[str, np.ndarray]:
    raw, boundary, weights = (frame[c].to_numpy() for c in ("raw_sum_ms", "boundary_millions", "weights_millions"))
    head, last, aligned = [], [], []
    for text in frame["spec"]:
        spec = NetSpec.from_dict(json.loads(text))
        head.append((spec.last_conv * spec.head_hidden + spec.head_hidden * spec.num_classes) / 1e6)
        last.append(spec.last_conv_in * spec.last_conv / 1e6)
        units = units_of(spec, (1, spec.in_channels, size, size))
        # Boundaries whose channel count fills AVX-512's 16-wide NCHWc block.
        aligned.append(sum(u.height * u.width * u.in_channels for u in units[1:] if u.in_channels % 16 == 0) / 1e6)
    head, last, aligned = np.array(head), np.array(last), np.array(aligned)
    return {"raw": raw, "one": np.ones(len(raw)), "boundary": boundary, "weights": weights, "head": head,
            "body": weights - head - last, "head_squared": head ** 2, "aligned": aligned, "unaligned": boundary - aligned}


FORMS = {
    "affine": ["raw", "one"],
    "affine+boundary+weights": ["raw", "one", "boundary", "weights"],
    "scale 1 + offset": ["one"],
    "scale 1 + offset + weights": ["one", "weights"],
    "affine + aligned/unaligned boundary": ["raw", "one", "aligned", "unaligned"],
    "affine + head + body weights": ["raw", "one", "head", "body"],
    "affine + head weights squared": ["raw", "one", "head_squared"],
}


def check(columns: dict[str, np.ndarray], terms: list[str], measured: np.ndarray, fixed_scale: bool,
          rng: np.random.Generator, fit: int = 12, draws: int = 300) -> tuple[float, float, float]:
    design = np.stack([columns[t] for t in terms], axis=1)
    offset = columns["raw"] if fixed_scale else np.zeros(len(measured))
    medians, within, worst = [], [], []
    for _ in range(draws):
        order = rng.permutation(len(measured))
        fitted, checked = order[:fit], order[fit:]
        target = 1 - offset[fitted] / measured[fitted]
        solution, *_ = np.linalg.lstsq(design[fitted] / measured[fitted, None], target, rcond=None)
        errors = np.abs((design[checked] @ solution + offset[checked]) / measured[checked] - 1) * 100
        medians.append(np.median(errors)), within.append(np.mean(errors < 5)), worst.append(errors.max())
    return float(np.median(medians)), float(np.median(within)), float(np.median(worst))


def main() -> int:
    print(f"{'file':48s} {'form':38s} {'median %':>9s} {'within 5%':>10s} {'max %':>7s}")
    for path in sys.argv[1:]:
        size = int(re.search(r"-(\d+)-\d+\.csv$", path).group(1))
        frame = pd.read_csv(path)
        columns = features(frame, size)
        measured = frame["measured_ms"].to_numpy()
        for name, terms in FORMS.items():
            rng = np.random.default_rng(0)  # the same draws for every form
            median, within, worst = check(columns, terms, measured, name.startswith("scale 1"), rng)
            print(f"{path.rsplit('/', 1)[-1]:48s} {name:38s} {median:9.2f} {100 * within:9.0f}% {worst:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
