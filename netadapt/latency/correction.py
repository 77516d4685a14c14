"""The correction from a sum of unit latencies to a whole network's latency (numpy only).

Each isolated unit pays its own session overhead and layout conversions, so
the raw sum of a spec's entries overshoots the whole network. `Correction`
maps the sum (and two size terms) to the whole-network figure; the fit
chooses, among the forms its data supports, the richest one that predicts
networks left out of the fit about as well as the best (docs/latency-model.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from netadapt.errors import LatencyTableError

__all__ = ["FORMS", "LEFT_OUT_TOLERANCE", "Correction", "fit_correction_terms", "leave_one_out_rms"]


@dataclass(frozen=True)
class Correction:
    """measured ≈ scale * sum(unit figures) + offset_ms + boundary_ms_per_million * boundary
    + weights_ms_per_million * weights, fitted over whole networks of one family.

    `boundary` counts the elements (millions, per image) of the activations
    passed between the spec's units, `weights` the network's parameters
    (millions). Why each term exists (per-session overhead, NCHWc layout
    conversions at unit boundaries, weights that stay cached in an isolated
    unit) and what each bought on saved runs: docs/latency-model.md.
    """

    scale: float
    samples: int  # whole networks the fit used
    rms_error: float  # relative RMS error of the fit over those networks
    offset_ms: float = 0.0  # absent from tables written before the affine fit
    boundary_ms_per_million: float = 0.0  # absent from tables written before the boundary term
    weights_ms_per_million: float = 0.0  # absent from tables written before the weights term
    # How many units the fitted networks had (0: not recorded, in tables written before depth proposals).
    units: int = 0

    def apply(self, raw_sum_ms: float, boundary_millions: float = 0.0, weights_millions: float = 0.0,
              units: int | None = None) -> float:
        """The whole-network figure for a spec with this raw sum and size terms.

        The offset is mostly the session overhead that each isolated unit pays
        and the whole network pays once, (units - 1) times over. For a network
        of `units` units, where the fitted ones had `self.units` (a block
        removed), it is scaled by (units - 1) / (self.units - 1).
        """
        offset = self.offset_ms
        if units is not None and self.units > 1 and units != self.units:
            offset *= (units - 1) / (self.units - 1)
        return (
            self.scale * raw_sum_ms
            + offset
            + self.boundary_ms_per_million * boundary_millions
            + self.weights_ms_per_million * weights_millions
        )

    @property
    def form(self) -> str:
        """Which terms the fit used: one of FORMS ("scale", "affine", "affine+boundary", ...)."""
        if self.weights_ms_per_million:
            return "affine+boundary+weights"
        if self.boundary_ms_per_million:
            return "affine+boundary"
        return "affine" if self.offset_ms else "scale"

    def describe(self) -> str:
        """One line for logs: the coefficients and how well they fitted."""
        terms = f"scale {self.scale:.4f}, offset {self.offset_ms:+.4f} ms"
        if self.boundary_ms_per_million:
            terms += f", {self.boundary_ms_per_million:+.4f} ms per million boundary elements"
        if self.weights_ms_per_million:
            terms += f", {self.weights_ms_per_million:+.4f} ms per million parameters"
        return f"{terms} from {self.samples} whole networks (fit rms error {100 * self.rms_error:.2f}%)"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The forms a fit chooses from, simplest first, with the terms (columns) each
# uses and the whole networks it needs before it is tried: the affine form two
# of different sizes, each further term enough more that its coefficients are
# not fitted to the noise of a few measurements.
FORMS: dict[str, tuple[tuple[str, ...], int]] = {
    "scale": (("scale",), 1),
    "affine": (("scale", "offset"), 2),
    "affine+boundary": (("scale", "offset", "boundary"), 6),
    "affine+boundary+weights": (("scale", "offset", "boundary", "weights"), 9),
}
# How much worse than the best form's left-out error a richer form's may be and
# still be used. On the saved 224x224 runs the forms chosen this way did about
# as well as always using the richest (benchmarks/correction_forms.py,
# "chosen" against the forms); at 28x28 it keeps the affine form.
LEFT_OUT_TOLERANCE = 1.25


def fit_correction_terms(
    sums: list[float],
    measured: list[float],
    boundaries: list[float] | None = None,
    weights: list[float] | None = None,
    form: str | None = None,
    units: int = 0,
    unfitted: list[tuple[float, float, float]] | None = None,
) -> Correction:
    """Fit a `Correction` to whole-network figures (ms), their raw sums, boundary sizes and parameter counts (millions).

    Least squares on relative error, minimising sum((prediction/measured - 1)^2),
    so big and small networks weigh the same. A form is a candidate when the
    data supports it: enough networks (see FORMS) and, for each of its terms,
    values that differ between the networks (sums, boundaries, weights by
    more than 5%). Of the candidates from the affine form up, the one that
    predicts each network left out of the fit best is used, or a richer one
    whose left-out error is within LEFT_OUT_TOLERANCE of the best; one ratio
    where no affine form is possible. A form that fits a non-positive scale
    or predicts a non-positive latency for one of the networks, or for one
    of `unfitted`, falls back to the next simpler one.

    `unfitted` holds (raw sum, boundary, weights) of networks of the family
    that are not fitted on but must get a positive prediction: the search
    space's floor, which sits off the fitted networks' trend and below their
    sizes, so a noisy fit's negative offset can extrapolate it below zero.

    `form` asks for one form without the left-out comparison (refused when
    the data cannot support it), to study the forms
    (benchmarks/correction_forms.py). `units` is recorded: how many units
    the networks have (see `Correction.apply`).
    """
    columns = {"scale": np.asarray(sums, dtype=float), "offset": np.ones(len(sums))}
    columns["boundary"] = np.zeros(len(sums)) if boundaries is None else np.asarray(boundaries, dtype=float)
    columns["weights"] = np.zeros(len(sums)) if weights is None else np.asarray(weights, dtype=float)
    measured_array = np.asarray(measured, dtype=float)
    lengths = [len(measured_array), *(len(columns[name]) for name in ("scale", "boundary", "weights"))]
    if len(set(lengths)) != 1 or not lengths[0]:
        raise LatencyTableError(
            "a correction needs as many sums, measurements, boundary sizes and parameter counts, got "
            f"{lengths[1]}, {lengths[0]}, {lengths[2]} and {lengths[3]}"
        )

    def varies(term: str) -> bool:
        values = columns[term]
        return term == "offset" or values.max() > 1.05 * values.min()

    supported = [
        name for name, (terms, needed) in FORMS.items()
        if lengths[0] >= needed and (name == "scale" or all(varies(term) for term in terms))
    ]
    if form is not None:
        if form not in supported:
            raise LatencyTableError(f"the {form} form needs more networks or more varied ones; possible: {supported}")
        candidates = [form]
    elif len(supported) == 1:
        candidates = supported
    else:
        # A richer form must predict networks left out of the fit about as well
        # as the best form does: at small inputs, where boundaries are tiny and
        # measurements noisy, extra coefficients mostly fit noise (and predict
        # left-out networks several times worse). Within the tolerance the
        # richer form is kept, since the left-out error of a dozen networks is
        # itself noisy and the terms have a physical cause (see Correction).
        left_out = {name: leave_one_out_rms(columns, FORMS[name][0], measured_array) for name in supported[1:]}
        best = min(left_out.values())
        richest = [name for name, error in left_out.items() if error <= LEFT_OUT_TOLERANCE * best][-1]
        candidates = supported[: supported.index(richest) + 1][::-1]
    for name in candidates:
        terms = FORMS[name][0]
        design = np.stack([columns[term] / measured_array for term in terms], axis=1)
        solution, *_ = np.linalg.lstsq(design, np.ones(len(measured_array)), rcond=None)
        coefficients = dict(zip(terms, (float(value) for value in solution)))
        predictions = design @ solution * measured_array
        if coefficients["scale"] > 0 and np.all(predictions > 0) and all(
            _predict(coefficients, *terms_of_unfitted) > 0 for terms_of_unfitted in unfitted or ()
        ):
            break
    rms = float(np.sqrt(np.mean((predictions / measured_array - 1.0) ** 2)))
    return Correction(
        scale=coefficients["scale"],
        samples=len(measured_array),
        rms_error=rms,
        offset_ms=coefficients.get("offset", 0.0),
        boundary_ms_per_million=coefficients.get("boundary", 0.0),
        weights_ms_per_million=coefficients.get("weights", 0.0),
        units=units,
    )


def _predict(coefficients: dict[str, float], raw_sum_ms: float, boundary_millions: float, weights_millions: float) -> float:
    return (coefficients["scale"] * raw_sum_ms + coefficients.get("offset", 0.0)
            + coefficients.get("boundary", 0.0) * boundary_millions + coefficients.get("weights", 0.0) * weights_millions)


def leave_one_out_rms(columns: dict[str, np.ndarray], form: tuple[str, ...], measured: np.ndarray) -> float:
    """Relative RMS error of predicting each network from a fit of `form` on all the others."""
    design = np.stack([columns[term] / measured for term in form], axis=1)
    errors = []
    for left_out in range(len(measured)):
        keep = np.arange(len(measured)) != left_out
        solution, *_ = np.linalg.lstsq(design[keep], np.ones(int(keep.sum())), rcond=None)
        errors.append(float(design[left_out] @ solution) - 1.0)
    return float(np.sqrt(np.mean(np.square(errors))))
