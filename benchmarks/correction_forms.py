"""Which correction form predicts whole networks best: refit offline on saved validation runs.

Reads the CSV files `benchmarks/lut_accuracy.py --out` wrote (the raw sum
and the measured figure of each random sub-network), then many times: draws
--fit networks of a file, fits each correction form on them with
`netadapt.lut.fit_correction_terms` and predicts the file's other networks.
Prints, per file and form, the mean over draws of the median |error| and of
the share within 5%. Nothing is measured, so it runs in seconds and the
comparison is the same every time; the spread between files shows how much
the machine moved between runs.

Forms: "scale" (one ratio), "affine" (scale and offset), "affine+boundary"
(plus a cost per element of the activations between units, see
netadapt.lut.Correction), and "chosen": what `fit_correction_terms` picks
itself (the boundary term only where it predicts left-out networks better).

    python benchmarks/correction_forms.py benchmarks/results/lut_accuracy/validation-*.csv
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

from mobilenetv3 import NetSpec
from netadapt.cli.common import parse_input_shape
from netadapt.lut import Correction, fit_correction_terms, units_of

FORMS = ("scale", "affine", "affine+boundary", "chosen")


def boundary_millions(spec_json: str, input_shape: tuple[int, int, int, int]) -> float:
    units = units_of(NetSpec.from_dict(json.loads(spec_json)), input_shape)
    return sum(unit.height * unit.width * unit.in_channels for unit in units[1:]) / 1e6


def fit_form(form: str, sums: np.ndarray, measured: np.ndarray, boundaries: np.ndarray) -> Correction:
    if form == "chosen":
        return fit_correction_terms(list(sums), list(measured), list(boundaries))
    if form == "scale":
        # What fit_correction_terms falls back to: one ratio, least squares on relative error.
        ratios = sums / measured
        scale = float(ratios.sum() / (ratios**2).sum())
        return Correction(scale=scale, samples=len(sums), rms_error=float(np.sqrt(np.mean((scale * ratios - 1) ** 2))))
    # Each form as it is, without the fit's own left-out check, which would mix them.
    boundary = list(boundaries) if form == "affine+boundary" else None
    correction = fit_correction_terms(list(sums), list(measured), boundary, check_left_out=False)
    if correction.form != form:
        raise SystemExit(f"too few or too alike networks for the {form} form (got {correction.form}); raise --fit")
    return correction


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="validation CSV files from benchmarks/lut_accuracy.py --out")
    parser.add_argument("--fit", type=int, default=12, help="networks each correction is fitted on (default 12)")
    parser.add_argument("--draws", type=int, default=200, help="random fit/check splits per file (default 200)")
    parser.add_argument("--input", default="1x3x224x224", help="the input shape the files were measured at")
    args = parser.parse_args()
    shape = parse_input_shape(args.input)
    print(f"# correction forms refitted on {args.fit} networks, checked on the rest, mean of {args.draws} draws")
    print(f"{'file':<52} {'form':<16} {'median |error| %':>17} {'within 5% (share)':>18}")
    for path in args.files:
        frame = pd.read_csv(path)
        sums, measured = frame["raw_sum_ms"].to_numpy(), frame["measured_ms"].to_numpy()
        boundaries = np.array([boundary_millions(spec, shape) for spec in frame["spec"]])
        if len(frame) <= args.fit:
            raise SystemExit(f"{path}: {len(frame)} networks, need more than --fit {args.fit}")
        results: dict[str, list[tuple[float, float]]] = {form: [] for form in FORMS}
        rng = np.random.default_rng(0)  # the same draws whatever files come before
        for _ in range(args.draws):
            chosen = rng.choice(len(frame), args.fit, replace=False)
            rest = np.setdiff1d(np.arange(len(frame)), chosen)
            for form in FORMS:
                correction = fit_form(form, sums[chosen], measured[chosen], boundaries[chosen])
                predicted = np.array([correction.apply(s, b) for s, b in zip(sums[rest], boundaries[rest])])
                errors = np.abs(100 * (predicted - measured[rest]) / measured[rest])
                results[form].append((float(np.median(errors)), float(np.mean(errors <= 5))))
        for form in FORMS:
            medians, within = zip(*results[form])
            print(f"{path.rsplit('/', 1)[-1]:<52} {form:<16} {np.mean(medians):>17.2f} {100 * np.mean(within):>17.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
