"""Which correction form, fitted on which networks, predicts whole networks best: refit offline on saved runs.

Reads the CSV files `benchmarks/lut_accuracy.py --out` wrote (the raw sum
and the measured figure of each random sub-network), then many times: draws
--fit networks of a file, fits each correction form on them with
`netadapt.latency.fit_correction_terms` and predicts the file's other networks.
Prints, per file and form, the mean over draws of the median |error| and of
the share within 5%. Nothing is measured, so it runs in seconds and the
comparison is the same every time; the spread between files shows how much
the machine moved between runs.

Forms: "scale" (one ratio), "affine" (scale and offset), "affine+boundary"
(plus a cost per element of the activations between units),
"affine+boundary+weights" (plus a cost per parameter; see
netadapt.latency.Correction), and "chosen": what `fit_correction_terms` picks
itself (a richer form only where it predicts left-out networks better).

Second table, for the runs that also saved the networks their correction was
fitted on (correction-nets-FILE.csv beside FILE.csv, written since the
boundary term): the chosen form fitted on those networks as the run did, on
them without the smallest network, and on the random cuts alone (the base and
the smallest network were what
`netadapt.latency.calibration_specs` used to put first; later runs fitted on
the base and cuts only), each checked on all of the file's random networks;
the mean signed error is the bias.

Third table: the correlation of each run's residual with the networks'
parameter count (after the boundary form: what the weights term is for) and
with their position in the run's list (after the weights form: drift, when
networks and their units were measured in list order).

    python benchmarks/correction_forms.py benchmarks/results/lut_accuracy/validation-*.csv
"""

from __future__ import annotations

import argparse
import json

from pathlib import Path

import numpy as np
import pandas as pd

from mobilenetv3 import NetSpec
from netadapt.cli.common import parse_input_shape
from netadapt.groups import lower_bound_spec
from netadapt.latency import Correction, boundary_millions, fit_correction_terms, weights_millions

FORMS = ("scale", "affine", "affine+boundary", "affine+boundary+weights", "chosen")


def fit_form(form: str, sums: np.ndarray, measured: np.ndarray, boundaries: np.ndarray, weights: np.ndarray) -> Correction:
    args = (list(sums), list(measured), list(boundaries), list(weights))
    if form == "chosen":
        return fit_correction_terms(*args)
    # Each form as it is, without the fit's own left-out check, which would mix them.
    return fit_correction_terms(*args, form=form)


def columns(frame: pd.DataFrame, shape: tuple[int, int, int, int]) -> tuple[np.ndarray, ...]:
    """Raw sums, measured figures, boundary sizes and parameter counts of a saved frame's networks."""
    specs = [NetSpec.from_dict(json.loads(spec)) for spec in frame["spec"]]
    return (
        frame["raw_sum_ms"].to_numpy(),
        frame["measured_ms"].to_numpy(),
        np.array([boundary_millions(spec, shape) for spec in specs]),
        np.array([weights_millions(spec) for spec in specs]),
    )


def errors_pct(correction: Correction, sums, measured, boundaries, weights) -> np.ndarray:
    predicted = np.array([correction.apply(*terms) for terms in zip(sums, boundaries, weights)])
    return 100 * (predicted - measured) / measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="validation CSV files from benchmarks/lut_accuracy.py --out")
    parser.add_argument("--fit", type=int, default=12, help="networks each correction is fitted on (default 12)")
    parser.add_argument("--draws", type=int, default=200, help="random fit/check splits per file (default 200)")
    parser.add_argument("--input", default="1x3x224x224", help="the input shape the files were measured at")
    args = parser.parse_args()
    shape = parse_input_shape(args.input)
    print(f"# correction forms refitted on {args.fit} networks, checked on the rest, mean of {args.draws} draws")
    print(f"{'file':<52} {'form':<24} {'median |error| %':>17} {'within 5% (share)':>18}")
    for path in args.files:
        frame = pd.read_csv(path)
        data = columns(frame, shape)
        if len(frame) <= args.fit:
            raise SystemExit(f"{path}: {len(frame)} networks, need more than --fit {args.fit}")
        results: dict[str, list[tuple[float, float]]] = {form: [] for form in FORMS}
        rng = np.random.default_rng(0)  # the same draws whatever files come before
        for _ in range(args.draws):
            chosen = rng.choice(len(frame), args.fit, replace=False)
            rest = np.setdiff1d(np.arange(len(frame)), chosen)
            for form in FORMS:
                correction = fit_form(form, *(column[chosen] for column in data))
                errors = np.abs(errors_pct(correction, *(column[rest] for column in data)))
                results[form].append((float(np.median(errors)), float(np.mean(errors <= 5))))
        for form in FORMS:
            medians, within = zip(*results[form])
            print(f"{Path(path).name:<52} {form:<24} {np.mean(medians):>17.2f} {100 * np.mean(within):>17.1f}%")

    print("\n# the chosen form fitted on each run's own correction networks, checked on all its random networks")
    print(f"{'file':<52} {'fitted on':<28} {'median |error| %':>17} {'within 5%':>10} {'bias %':>7}")
    for path in args.files:
        fit_path = Path(path).with_name("correction-nets-" + Path(path).name)
        if not fit_path.exists():
            continue
        data = columns(pd.read_csv(path), shape)
        fit_frame = pd.read_csv(fit_path)
        fit_data = columns(fit_frame, shape)
        # The base comes first; runs before 2026-11-29 (weights term) also fitted on the smallest network.
        base = NetSpec.from_dict(json.loads(fit_frame["spec"][0]))
        smallest = lower_bound_spec(base)
        is_smallest = np.array([NetSpec.from_dict(json.loads(spec)) == smallest for spec in fit_frame["spec"]])
        cuts = np.flatnonzero(~is_smallest)[1:]
        fitted_on = [("the base and the cuts", np.r_[0, cuts]), ("the random cuts alone", cuts)]
        if is_smallest.any():
            fitted_on.insert(0, ("all (base, smallest, cuts)", np.arange(len(fit_frame))))
        for label, rows in fitted_on:
            correction = fit_form("chosen", *(column[rows] for column in fit_data))
            errors = errors_pct(correction, *data)
            print(f"{Path(path).name:<52} {label:<28} {np.median(np.abs(errors)):>17.2f} "
                  f"{100 * np.mean(np.abs(errors) <= 5):>9.0f}% {np.mean(errors):>+7.2f}")

    # What the residual still follows: a term the fit lacks shows as a correlation
    # with the parameter count; drift while a run measured its networks in list
    # order (before 2026-11-29's shuffle) as a correlation with the position.
    print("\n# correlation of each run's residual (fitted on all its random networks) with")
    print(f"{'file':<52} {'parameters (boundary form)':>27} {'list position (weights form)':>29}")
    for path in args.files:
        data = columns(pd.read_csv(path), shape)
        boundary_fit = fit_form("affine+boundary", *data)
        weights_fit = fit_form("affine+boundary+weights", *data)
        position = np.arange(len(data[0]))
        print(f"{Path(path).name:<52} {np.corrcoef(errors_pct(boundary_fit, *data), data[3])[0, 1]:>+27.2f} "
              f"{np.corrcoef(errors_pct(weights_fit, *data), position)[0, 1]:>+29.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
