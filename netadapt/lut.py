"""Latency lookup table: predict a spec's latency from measured units.

A network is cut into units (stem, each inverted-residual block, the last
1x1 conv, pooling plus the classifier head). Each unit is exported alone and
measured on the target; its key spells out everything that changes its
latency (input HxWxC, expanded and output channels, kernel, stride, SE and
its squeeze width, activation, expansion conv, residual). A prediction is
the sum of a spec's unit latencies through a correction fitted from a few
whole-network measurements (`Correction`): each isolated unit pays its own
session overhead and layout conversions at its input and output, so the
raw sum overshoots the whole network (OFA and nn-Meter predict the same
way, with per-block keys).

Channel counts are used as they are, never interpolated: onnxruntime's x86
kernels block channels by 8 or 16, so latency has cliffs between grid
points (REFERENCE.md, "Channel blocking on x86").

The table is one CSV file per target: a JSON header line with the format,
the target's fingerprint, the fitted corrections, the row count and a
checksum of the body, then one row per unit. It is rewritten atomically
after every batch of new entries, so a killed build keeps what it measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn

from mobilenetv3 import NetSpec
from mobilenetv3.counts import count as count_parameters
from mobilenetv3.counts import spatial_after
from mobilenetv3.fileio import atomic_write_text
from mobilenetv3.model import _ACTIVATIONS, ConvNormActivation, InvertedResidual
from mobilenetv3.spec import BlockSpec
from netadapt.benchmark import DEFAULT_STATISTIC, STATISTICS, Measurement, Measurer, measure_all, measure_best_of
from netadapt.errors import LatencyTableError
from netadapt.groups import candidate_widths, prunable_groups, with_width
from netadapt.onnx_export import onnx_bytes

__all__ = [
    "Correction",
    "LatencyTable",
    "Unit",
    "boundary_millions",
    "calibration_specs",
    "fit_correction_terms",
    "first_iteration_specs",
    "network_key",
    "random_subnetwork",
    "summarize_validation",
    "table_filename",
    "unit_module",
    "units_of",
    "validate",
    "weights_millions",
]

FORMAT = "netadapt-lut"
VERSION = 3  # 2: entries carry quiet_ms (the lowest round median); 3: and min_ms (the fastest run)
UNIT_KINDS = ("stem", "block", "last_conv", "head")


# ----------------------------------------------------------------------- units
@dataclass(frozen=True)
class Unit:
    """One separately measured piece of a network; fields not used by a kind stay 0/False/""."""

    kind: str  # "stem", "block", "last_conv" or "head"
    height: int  # input spatial size
    width: int
    in_channels: int
    out: int  # output channels (head: number of classes)
    expanded: int = 0  # block: depthwise width; head: hidden Linear width
    kernel: int = 1
    stride: int = 1
    se: bool = False
    se_squeeze: int = 0
    activation: str = ""  # "relu" or "hardswish"
    has_expansion: bool = False
    residual: bool = False

    def key(self) -> str:
        """A readable key that names everything that changes this unit's latency."""
        size = f"{self.height}x{self.width}x{self.in_channels}"
        if self.kind == "block":
            act = "RE" if self.activation == "relu" else "HS"
            return (
                f"block:{size}:e{self.expanded}:o{self.out}:k{self.kernel}:s{self.stride}"
                f":se{self.se_squeeze if self.se else 0}:{act}:x{int(self.has_expansion)}:r{int(self.residual)}"
            )
        if self.kind == "head":
            return f"head:{size}:h{self.expanded}:o{self.out}"
        act = "RE" if self.activation == "relu" else "HS"
        return f"{self.kind}:{size}:o{self.out}:k{self.kernel}:s{self.stride}:{act}"

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.in_channels, self.height, self.width)


_UNIT_COLUMNS = [f.name for f in dataclasses.fields(Unit)]
_STAT_COLUMNS = ["quiet_ms", "min_ms", "median_ms", "p10_ms", "p90_ms", "mean_ms", "cv", "runs"]
_COLUMNS = ["key", *_UNIT_COLUMNS, *_STAT_COLUMNS]


def units_of(spec: NetSpec, input_shape: tuple[int, int, int, int]) -> list[Unit]:
    """The units of `spec` at `input_shape` (N, C, H, W), in network order."""
    _, channels, height, width = input_shape
    if channels != spec.in_channels:
        raise LatencyTableError(f"input shape {tuple(input_shape)} has {channels} channels but the spec expects {spec.in_channels}")
    units = [Unit("stem", height, width, channels, spec.stem, kernel=3, stride=2, activation="hardswish")]
    height, width = spatial_after(height, 2, 3), spatial_after(width, 2, 3)
    for block_in, block in zip(spec.block_inputs(), spec.blocks):
        units.append(
            Unit(
                "block", height, width, block_in, block.out, block.expanded, block.kernel, block.stride,
                block.se, block.se_squeeze if block.se else 0, block.activation, block.has_expansion, block.residual,
            )
        )
        height, width = spatial_after(height, block.stride, block.kernel), spatial_after(width, block.stride, block.kernel)
    units.append(Unit("last_conv", height, width, spec.last_conv_in, spec.last_conv, activation="hardswish"))
    units.append(Unit("head", height, width, spec.last_conv, spec.num_classes, expanded=spec.head_hidden))
    return units


class _Head(nn.Module):
    """Global pooling plus the classifier, laid out as `MobileNetV3.forward_head` runs them."""

    def __init__(self, channels: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(channels, hidden), nn.Hardswish(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def unit_module(unit: Unit) -> nn.Module:
    """A torch module that computes `unit` exactly as the whole MobileNetV3 does."""
    if unit.kind == "stem" or unit.kind == "last_conv":
        return ConvNormActivation(
            unit.in_channels, unit.out, unit.kernel, stride=unit.stride, activation_layer=_ACTIVATIONS[unit.activation]
        )
    if unit.kind == "block":
        block = BlockSpec(
            unit.kernel, unit.expanded, unit.out, unit.se, unit.se_squeeze, unit.activation, unit.stride,
            has_expansion=unit.has_expansion, residual=unit.residual,
        )
        return InvertedResidual(unit.in_channels, block)
    if unit.kind == "head":
        return _Head(unit.in_channels, unit.expanded, unit.out)
    raise ValueError(f"unknown unit kind {unit.kind!r}")  # a bug: kinds come from units_of


def unit_onnx(unit: Unit, batch: int) -> bytes:
    """The unit exported alone (BN folded), ready to measure."""
    return onnx_bytes(unit_module(unit).eval(), unit.input_shape(batch))


def network_key(spec: NetSpec, input_shape: tuple[int, int, int, int]) -> str:
    """The family a correction applies to: same block count and input, any channel counts.

    Pruning never removes blocks, so every spec a search visits shares its
    base network's key.
    """
    return f"{len(spec.blocks)}blocks@{'x'.join(str(d) for d in input_shape)}"


def table_filename(fingerprint: dict[str, Any]) -> str:
    """A file name unique to a target and format: `lut-v<VERSION>-<12 hex digits of the fingerprint's hash>.csv`.

    The version is in the name so that a cached table of an older format is
    left alone (and a new one built) rather than refused by `netadapt search`.
    """
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode("utf-8")).hexdigest()[:12]
    return f"lut-v{VERSION}-{digest}.csv"


# ---------------------------------------------------------------- correction
@dataclass(frozen=True)
class Correction:
    """measured ≈ scale * sum(unit figures) + offset_ms + boundary_ms_per_million * boundary
    + weights_ms_per_million * weights, fitted over whole networks of one family; `boundary`
    counts the elements (millions, per image) of the activations passed between the spec's
    units, `weights` the network's parameters (millions).

    The offset: every unit measured alone pays one session's fixed cost
    (input copy, output allocation, dispatch), the whole network pays it
    once, so within a family (same number of units) the sum overshoots by a
    constant. At small inputs that constant dominates; a scale alone cannot
    represent it.

    The boundary term: onnxruntime's x86 CPU provider runs convolutions in a
    channel-blocked layout (NCHWc) and converts to and from it where a graph
    needs plain NCHW. A unit measured alone converts its input and its output
    (ReorderInput/ReorderOutput nodes in its optimised graph); inside the
    whole network the activation between two units stays blocked. So the
    overshoot also grows with the size of the activations between units, a
    cost per element that the fit learns (it comes out near zero where no
    such conversion happens). On the six runs of benchmarks/lut_accuracy.py
    with 2 s per whole network in benchmarks/results/lut_accuracy/, fits on
    12 random networks predicted the others of the same run with median
    error 1.28-2.46% and 84-99.6% within 5%, against 1.93-2.84% and 80-92%
    for the affine form (benchmarks/correction_forms.py refits them, output
    in correction-forms.txt there); the noisier 0.5 s run shows no
    difference between the forms. At small inputs, where the boundaries are
    tiny and measurements noisy, a third coefficient can fit noise instead
    (in one smoke run at 32x32, `benchmarks/lut_accuracy.py --input 1x3x32x32
    --samples 4 --fit-samples 6 --passes 2 --network-seconds 0.05
    --min-seconds 0.02`, it predicted 12.7% off against 2.1% for the affine
    form), so the fit keeps it only when it predicts left-out networks
    about as well as the best form.

    The weights term: a unit measured alone runs the same few weights over
    and over, so they stay in the core's cache; the whole network streams all
    of its weights through the cache on every inference (Large at 224 holds
    5.5 M parameters, 22 MB, against 1 MB of L2 per core here). So bigger
    networks run slower than their units' sum says. After the boundary term,
    the prediction error of the same six runs falls with the parameter count
    (correlation -0.36 to -0.67: big networks predicted too fast), and fits
    with the weights term predicted left-out networks better in four of the
    six and within 0.07 points of the boundary form in the other two
    (benchmarks/correction_forms.py).

    The fit picks, among the forms its data supports, the richest one that
    predicts networks left out of the fit about as well as the best (see
    `fit_correction_terms`), so a term that only fits noise stays out. The
    scale absorbs what stays proportional (fusion across unit boundaries).
    """

    scale: float
    samples: int  # whole networks the fit used
    rms_error: float  # relative RMS error of the fit over those networks
    offset_ms: float = 0.0  # absent from tables written before the affine fit
    boundary_ms_per_million: float = 0.0  # absent from tables written before the boundary term
    weights_ms_per_million: float = 0.0  # absent from tables written before the weights term

    def apply(self, raw_sum_ms: float, boundary_millions: float = 0.0, weights_millions: float = 0.0) -> float:
        return (
            self.scale * raw_sum_ms
            + self.offset_ms
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
    or predicts a non-positive latency for one of the networks falls back to
    the next simpler one.

    `form` asks for one form without the left-out comparison (refused when
    the data cannot support it), to study the forms
    (benchmarks/correction_forms.py).
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
        left_out = {name: _leave_one_out_rms(columns, FORMS[name][0], measured_array) for name in supported[1:]}
        best = min(left_out.values())
        richest = [name for name, error in left_out.items() if error <= LEFT_OUT_TOLERANCE * best][-1]
        candidates = supported[: supported.index(richest) + 1][::-1]
    for name in candidates:
        terms = FORMS[name][0]
        design = np.stack([columns[term] / measured_array for term in terms], axis=1)
        solution, *_ = np.linalg.lstsq(design, np.ones(len(measured_array)), rcond=None)
        coefficients = dict(zip(terms, (float(value) for value in solution)))
        predictions = design @ solution * measured_array
        if coefficients["scale"] > 0 and np.all(predictions > 0):
            break
    rms = float(np.sqrt(np.mean((predictions / measured_array - 1.0) ** 2)))
    return Correction(
        scale=coefficients["scale"],
        samples=len(measured_array),
        rms_error=rms,
        offset_ms=coefficients.get("offset", 0.0),
        boundary_ms_per_million=coefficients.get("boundary", 0.0),
        weights_ms_per_million=coefficients.get("weights", 0.0),
    )


def _leave_one_out_rms(columns: dict[str, np.ndarray], form: tuple[str, ...], measured: np.ndarray) -> float:
    """Relative RMS error of predicting each network from a fit of `form` on all the others."""
    design = np.stack([columns[term] / measured for term in form], axis=1)
    errors = []
    for left_out in range(len(measured)):
        keep = np.arange(len(measured)) != left_out
        solution, *_ = np.linalg.lstsq(design[keep], np.ones(int(keep.sum())), rcond=None)
        errors.append(float(design[left_out] @ solution) - 1.0)
    return float(np.sqrt(np.mean(np.square(errors))))


def _boundary_millions(units: list[Unit]) -> float:
    return sum(unit.height * unit.width * unit.in_channels for unit in units[1:]) / 1e6


def boundary_millions(spec: NetSpec, input_shape: tuple[int, int, int, int]) -> float:
    """Elements (millions, per image) of the activations passed between `spec`'s units: the correction's boundary term."""
    return _boundary_millions(units_of(spec, input_shape))


def weights_millions(spec: NetSpec) -> float:
    """Parameters (millions) of `spec`: the correction's weights term."""
    return sum(row.params for row in count_parameters(spec)) / 1e6


# -------------------------------------------------------------------- table
class LatencyTable:
    """Measured unit latencies for one target, stored in one CSV file.

    Use `LatencyTable.open(path, measurer, input_shape)`; `predict_ms(spec)`
    sums the entries (measuring any missing one on demand) and applies the
    correction fitted for the spec's family by `fit_correction`.
    """

    def __init__(
        self,
        path: Path,
        measurer: Measurer,
        input_shape: tuple[int, int, int, int],
        entries: dict[str, dict[str, Any]],
        corrections: dict[str, Correction],
        fingerprint: dict[str, Any],
        statistic: str = DEFAULT_STATISTIC,
    ) -> None:
        self.path = Path(path)
        self.measurer = measurer
        self.input_shape = tuple(int(d) for d in input_shape)
        self.batch = self.input_shape[0]
        self.entries = entries  # key -> row (unit fields + measurement statistics)
        self.corrections = corrections
        self.fingerprint = fingerprint
        if statistic not in STATISTICS:
            raise LatencyTableError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
        self.statistic = statistic  # which column predictions sum: the measurer's statistic unless asked otherwise
        self._key_cache: dict[NetSpec, tuple[list[str], float, float]] = {}  # keys, boundary elements and parameters in millions
        self._order_rng = random.Random(0)  # the order units are measured in (see _measure_all)
        self.measured_count = 0  # entries measured by this object (on demand or by fill)
        self.measure_seconds = 0.0  # time spent exporting and measuring them

    # ------------------------------------------------------------ open / save
    @classmethod
    def open(
        cls,
        path: str | Path,
        measurer: Measurer,
        input_shape: tuple[int, int, int, int],
        statistic: str | None = None,
    ) -> "LatencyTable":
        """Load the table at `path`, or start an empty one there if it does not exist.

        Args:
            path: the table file (CSV).
            measurer: measures missing entries; its fingerprint must match the file's.
            input_shape: (N, C, H, W) of the networks this table predicts.
            statistic: the figure predictions sum and corrections fit ("quiet",
                "median", "p10" or "min"); default: the measurer's `statistic` (its
                target's `measure.statistic`), else "min".

        Raises:
            LatencyTableError: the file is corrupt or truncated, or was built
                for a target whose fingerprint differs from `measurer`'s.
        """
        path = Path(path)
        statistic = statistic or getattr(measurer, "statistic", None) or DEFAULT_STATISTIC
        current = measurer.fingerprint()
        if not path.exists():
            return cls(path, measurer, input_shape, {}, {}, current, statistic)
        header, frame = _read(path)
        stored = header["fingerprint"]
        if stored != current:
            differing = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
            raise LatencyTableError(
                f"{path}: this table was measured on another target (differs in {differing}).\n"
                f"  table:   {json.dumps(stored, sort_keys=True)}\n"
                f"  current: {json.dumps(current, sort_keys=True)}\n"
                "Use a table built for this target (--table FILE) or build a new one."
            )
        entries = {row["key"]: row for row in frame.to_dict("records")}
        corrections = {}
        for key, value in header.get("corrections", {}).items():
            try:
                corrections[key] = Correction(**value)
            except TypeError as error:
                raise LatencyTableError(f"{path}: correction {key!r} is malformed ({error}); rebuild the table") from None
        return cls(path, measurer, input_shape, entries, corrections, stored, statistic)

    def save(self) -> None:
        """Write the whole table atomically: a kill leaves the old file or the new one.

        Entries another process added to the file since it was read (e.g.
        parallel candidates filling the same table) are merged in first, so
        concurrent writers lose nothing but a race's last few entries.
        """
        self._merge_from_disk()
        frame = pd.DataFrame([self.entries[k] for k in sorted(self.entries)], columns=_COLUMNS)
        body = frame.to_csv(index=False, lineterminator="\n", float_format="%.6g")
        header = {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": self.fingerprint,
            "corrections": {k: c.to_dict() for k, c in sorted(self.corrections.items())},
            "rows": len(frame),
            "sha256": hashlib.sha256(body.encode("utf-8")).hexdigest(),
        }
        atomic_write_text(self.path, "# " + json.dumps(header, sort_keys=True) + "\n" + body)

    def _merge_from_disk(self) -> None:
        if not self.path.exists():
            return
        try:
            header, frame = _read(self.path)
        except LatencyTableError:
            return  # we opened it intact; whatever damaged it since is replaced
        if header["fingerprint"] != self.fingerprint:
            return
        for row in frame.to_dict("records"):
            self.entries.setdefault(row["key"], row)
        for key, value in header.get("corrections", {}).items():
            if key not in self.corrections:
                with contextlib.suppress(TypeError):
                    self.corrections[key] = Correction(**value)

    def save_copy(self, path: str | Path) -> None:
        """Write the table to another file (e.g. a run directory's snapshot), atomically.

        The copy keeps this table's fingerprint and corrections; this object
        keeps saving to its own path.
        """
        original = self.path
        try:
            self.path = Path(path)
            self.save()
        finally:
            self.path = original

    def correction_specs(self, spec: NetSpec | None = None) -> int:
        """Whole networks behind the median correction of `spec`'s family (all families if None); 0: none fitted."""
        if spec is not None:
            correction = self.correction_for(spec)
            return correction.samples if correction else 0
        return sum(c.samples for k, c in self.corrections.items() if _statistic_of(k) == self.statistic)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, unit: Unit) -> bool:
        return unit.key() in self.entries

    # -------------------------------------------------------------- entries
    def units(self, spec: NetSpec) -> list[Unit]:
        return units_of(spec, self.input_shape)  # type: ignore[arg-type]

    def missing(self, specs: Iterable[NetSpec]) -> list[Unit]:
        """Units of `specs` not in the table yet, each once, in first-seen order."""
        seen: dict[str, Unit] = {}
        for spec in specs:
            for unit in self.units(spec):
                key = unit.key()
                if key not in self.entries and key not in seen:
                    seen[key] = unit
        return list(seen.values())

    def measure_unit(self, unit: Unit) -> Measurement:
        """Export `unit` alone, measure it and store the entry (in memory; `save` writes it)."""
        return self._measure_units([unit])[0]

    def _measure_units(self, units: list[Unit]) -> list[Measurement]:
        """Measure `units` together (interleaved where the measurer can) and store their entries.

        If the table already holds a unit, the measurement with the lower
        figure is kept: a machine shared with other jobs only ever makes a
        run slower, so the best of several passes, taken at different
        times, is the closest to the unloaded figure.
        """
        start = time.perf_counter()
        measurements = measure_all(self.measurer, [unit_onnx(unit, self.batch) for unit in units])
        self.measure_seconds += time.perf_counter() - start
        self.measured_count += len(units)
        for unit, measurement in zip(units, measurements):
            old = self.entries.get(unit.key())
            if old is None or measurement.statistic_ms(self.statistic) < float(old[f"{self.statistic}_ms"]):
                row = {"key": unit.key(), **dataclasses.asdict(unit)}
                row.update({name: getattr(measurement, name) for name in _STAT_COLUMNS})
                self.entries[unit.key()] = row
        return measurements

    def fill(self, specs: Iterable[NetSpec], progress: bool = True, save_every: int = 16, passes: int = 1) -> int:
        """Measure every unit of `specs` that the table lacks; returns how many were measured.

        Args:
            specs: the networks whose units must be in the table.
            progress: show a progress bar.
            save_every: the file is rewritten every this many entries and at
                the end, so a killed fill resumes where it stopped.
            passes: measure each new unit this many times, in separate passes
                over all of them, keeping the best (see `measure_unit`).
        """
        todo = self.missing(specs)
        for _ in range(max(1, passes)):
            self._measure_all(todo, progress, save_every)
        return len(todo)

    def remeasure(self, specs: Iterable[NetSpec], progress: bool = True, save_every: int = 16) -> int:
        """Measure every unit of `specs` once more, keeping each entry's best; returns the count."""
        seen: dict[str, Unit] = {}
        for spec in specs:
            for unit in self.units(spec):
                seen.setdefault(unit.key(), unit)
        self._measure_all(list(seen.values()), progress, save_every)
        return len(seen)

    def _measure_all(self, units: list[Unit], progress: bool, save_every: int) -> None:
        # Batches of `save_every` units are measured together (interleaved) and
        # then saved, so a kill loses at most the batch being measured.
        # In random order: the machine drifts by a few percent over the minutes
        # a build takes, and in first-seen order the units only one network
        # uses are measured one after another, so that network's sum would
        # carry the drift of that moment as a whole; shuffled, each network's
        # units come from all through the build and their drifts average out.
        # (In five of the nine saved runs of benchmarks/lut_accuracy.py measured
        # in list order, the prediction error followed the network's place in
        # that list, |correlation| 0.41-0.77; 0.10 and 0.12 in the two runs
        # since: benchmarks/correction_forms.py, third table.)
        units = list(units)
        self._order_rng.shuffle(units)
        bar = None
        if progress and units:
            from tqdm import tqdm

            bar = tqdm(total=len(units), desc="lut", unit="entry")
        batch = max(1, save_every)
        try:
            for first in range(0, len(units), batch):
                chunk = units[first : first + batch]
                self._measure_units(chunk)
                self.save()
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()

    def entry_ms(self, unit: Unit) -> float:
        """The stored figure (the table's statistic) of `unit`, measured and saved first if missing."""
        row = self.entries.get(unit.key())
        if row is None:
            self.measure_unit(unit)
            self.save()
            row = self.entries[unit.key()]
        return float(row[f"{self.statistic}_ms"])

    # ------------------------------------------------------------ prediction
    def _layout(self, spec: NetSpec) -> tuple[list[str], float, float]:
        # A search predicts the same specs over and over; building their units
        # costs more than summing them, so keys (and the boundary size and
        # parameter count the correction needs) are cached per (hashable) spec.
        layout = self._key_cache.get(spec)
        if layout is None:
            units = self.units(spec)
            layout = ([unit.key() for unit in units], _boundary_millions(units), weights_millions(spec))
            self._key_cache[spec] = layout
        return layout

    def _keys(self, spec: NetSpec) -> list[str]:
        return self._layout(spec)[0]

    def boundary_millions(self, spec: NetSpec) -> float:
        """Elements (millions, per image) of the activations between `spec`'s units: the correction's boundary term."""
        return self._layout(spec)[1]

    def weights_millions(self, spec: NetSpec) -> float:
        """Parameters (millions) of `spec`: the correction's weights term."""
        return self._layout(spec)[2]

    def raw_sum_ms(self, spec: NetSpec, statistic: str | None = None) -> float:
        """Sum of the unit entries (median, or `statistic`), without the correction."""
        statistic = statistic or self.statistic
        if statistic not in STATISTICS:
            raise LatencyTableError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
        column = f"{statistic}_ms"
        keys = self._keys(spec)
        try:
            return float(sum(self.entries[key][column] for key in keys))
        except KeyError:
            self.fill([spec], progress=False)
            return float(sum(self.entries[key][column] for key in keys))

    def correction_for(self, spec: NetSpec, statistic: str | None = None) -> Correction | None:
        return self.corrections.get(_correction_key(network_key(spec, self.input_shape), statistic or self.statistic))  # type: ignore[arg-type]

    def predict_ms(self, spec: NetSpec, statistic: str | None = None) -> float:
        """Predicted latency (ms) of `spec` on this table's target.

        Missing entries are measured and saved first. Without a fitted
        correction for the spec's family the raw sum is returned, which
        overshoots (call `fit_correction` once per base network).

        Args:
            spec: the network.
            statistic: "quiet", "median", "p10" or "min" (default: the table's); the
                correction fitted for that statistic is applied.
        """
        correction = self.correction_for(spec, statistic)
        raw = self.raw_sum_ms(spec, statistic)
        return correction.apply(raw, self.boundary_millions(spec), self.weights_millions(spec)) if correction else raw

    def fit_correction(
        self, specs: list[NetSpec], repeats: int = 1, measured: list[Measurement] | None = None
    ) -> Correction:
        """Measure `specs` whole, fit a `Correction` for their family and save it.

        Corrections for every statistic (quiet, median, p10 and min) are fitted
        from the same measurements; the table's own statistic's one is returned.

        Args:
            specs: networks of one family (same block count and input); a few
                of different sizes, e.g. the base and some random cuts.
            repeats: whole-network measurements per spec, in separate passes
                over all specs; the best (lowest) is used, as for the entries.
            measured: the specs' whole-network measurements, if the caller
                already has them (e.g. measured side by side with other
                networks); then nothing is measured here.
        """
        if not specs:
            raise LatencyTableError("fit_correction needs at least one spec")
        families = {network_key(s, self.input_shape) for s in specs}  # type: ignore[arg-type]
        if len(families) != 1:
            raise LatencyTableError(f"fit_correction: specs come from several families {sorted(families)}; fit each on its own")
        family = families.pop()
        if measured is not None and len(measured) != len(specs):
            raise LatencyTableError(f"fit_correction: {len(measured)} measurements for {len(specs)} specs")
        whole = measured or measure_best_of(specs, self.measurer, self.input_shape, repeats)  # type: ignore[arg-type]
        for statistic in STATISTICS:
            sums = [self.raw_sum_ms(spec, statistic) for spec in specs]
            figures = [m.statistic_ms(statistic) for m in whole]
            boundaries = [self.boundary_millions(spec) for spec in specs]
            weights = [self.weights_millions(spec) for spec in specs]
            self.corrections[_correction_key(family, statistic)] = fit_correction_terms(sums, figures, boundaries, weights)
        self.save()
        return self.corrections[_correction_key(family, self.statistic)]


def _correction_key(family: str, statistic: str) -> str:
    return f"{family}:{statistic}"


def _statistic_of(correction_key: str) -> str:
    return correction_key.rsplit(":", 1)[-1]


def _read(path: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """Parse and verify a table file; any damage raises LatencyTableError naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise LatencyTableError(f"{path}: cannot read the latency table ({error})") from None
    first, _, body = text.partition("\n")
    try:
        if not first.startswith("# "):
            raise ValueError("no header line")
        header = json.loads(first[2:])
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        if header.get("version") != VERSION:
            raise ValueError(f"format version {header.get('version')!r}, this netadapt reads {VERSION}")
        if not isinstance(header.get("fingerprint"), dict):
            raise ValueError("header has no fingerprint")
    except (ValueError, json.JSONDecodeError) as error:
        raise LatencyTableError(f"{path}: not a valid latency table ({error}); delete it or point --table elsewhere") from None
    if hashlib.sha256(body.encode("utf-8")).hexdigest() != header.get("sha256"):
        raise LatencyTableError(
            f"{path}: the latency table is truncated or corrupt (checksum mismatch); "
            "delete it and rebuild with `netadapt lut build`"
        )
    try:
        frame = pd.read_csv(io.StringIO(body), keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as error:
        raise LatencyTableError(f"{path}: the latency table's rows cannot be parsed ({error})") from None
    if list(frame.columns) != _COLUMNS or len(frame) != header.get("rows"):
        raise LatencyTableError(f"{path}: the latency table's columns or row count do not match its header; rebuild it")
    return header, frame


# ------------------------------------------------------------ spec sampling
def first_iteration_specs(spec: NetSpec, granularity: int = 8, min_channels: int = 8) -> list[NetSpec]:
    """Every single-group cut of `spec`: the proposals of NetAdapt's first iteration.

    NetAdapt Alg. 1 tries, for each prunable group, the widths below the
    current one; a table holding all their units answers the first
    iteration without measuring on demand.
    """
    specs = [spec]
    for group in prunable_groups(spec, min_channels, granularity):
        specs.extend(with_width(spec, group, width) for width in candidate_widths(group))
    return specs


def random_subnetwork(
    spec: NetSpec, rng: random.Random, granularity: int = 8, min_channels: int = 8, min_fraction: float = 0.25
) -> NetSpec:
    """A random channel cut of `spec`: each prunable group, in turn, keeps its width or
    is cut to a random grid width of at least `min_fraction` of it."""
    for group in prunable_groups(spec, min_channels, granularity):
        options = [group.width] + [w for w in candidate_widths(group) if w >= min_fraction * group.width]
        width = rng.choice(options)
        if width != group.width:
            spec = with_width(spec, group, width)
    return spec


def calibration_specs(base: NetSpec, count: int, granularity: int = 8, min_channels: int = 8, seed: int = 0) -> list[NetSpec]:
    """Whole networks to fit a correction on: `base`, then distinct random cuts
    of it, drawn as `lut validate` draws the networks it checks (with their own
    seed), so the fit sees the sizes and shapes a search visits.

    The base stays because a search starts from it and predicts cuts close to
    it first. The smallest network of the search space, which the fit used to
    include to stretch the range, does not: it sits off the trend of the cuts,
    and without it the correction predicted the 2026-11-29 runs' random
    networks with less bias (+1.0 to +2.8% against +1.7 to +3.6%) and more of
    them within 5% (86-94% against 70-82%); the cuts alone did better still,
    but leave the base, 5-9% slower than their trend, unanchored
    (benchmarks/correction_forms.py refits each way).
    """
    rng = random.Random(f"correction-{seed}")
    specs, seen = [base], {base}
    for _ in range(100 * count):  # a repeated network adds nothing to the fit
        if len(specs) >= count:
            break
        cut = random_subnetwork(base, rng, granularity, min_channels)
        if cut not in seen:
            specs.append(cut)
            seen.add(cut)
    return specs


# --------------------------------------------------------------- validation
def validate(
    table: LatencyTable,
    specs: list[NetSpec],
    progress: bool = True,
    passes: int = 1,
    measured: list[Measurement] | None = None,
) -> pd.DataFrame:
    """Predict and measure each spec whole; one row per spec.

    Missing entries are filled first (and saved), so the timing of a
    prediction never includes a measurement.

    Args:
        table: the table under test; its corrections should be fitted on other specs.
        specs: the networks to compare on.
        progress: show progress bars.
        passes: whole-network measurements per spec, in separate passes; the
            best is used (see `netadapt.benchmark.measure_best_of`).
        measured: the specs' whole-network measurements, if the caller already
            has them (e.g. taken with longer measuring settings than the
            entries'); then nothing is measured whole here.

    Returns:
        Columns `index, predicted_ms, measured_ms, error_pct, raw_sum_ms,
        boundary_millions, weights_millions, measured_cv, predict_us`
        (boundary_millions, weights_millions: the correction's boundary size
        and parameter count; predict_us: time of the prediction alone),
        the same for the 10th percentile (`predicted_p10_ms, measured_p10_ms,
        error_p10_pct`) and the spec as JSON.
    """
    if measured is not None and len(measured) != len(specs):
        raise LatencyTableError(f"validate: {len(measured)} measurements for {len(specs)} specs")
    table.fill(specs, progress=progress)
    measured_all = measured or measure_best_of(specs, table.measurer, table.input_shape, passes)  # type: ignore[arg-type]
    rows = []
    for index, (spec, measured) in enumerate(zip(specs, measured_all)):
        start = time.perf_counter()
        predicted = table.predict_ms(spec)
        predict_us = (time.perf_counter() - start) * 1e6
        actual = measured.statistic_ms(table.statistic)
        predicted_p10 = table.predict_ms(spec, "p10")
        rows.append(
            {
                "index": index,
                "predicted_ms": predicted,
                "measured_ms": actual,
                "error_pct": 100.0 * (predicted - actual) / actual,
                "raw_sum_ms": table.raw_sum_ms(spec),
                "boundary_millions": table.boundary_millions(spec),
                "weights_millions": table.weights_millions(spec),
                "measured_cv": measured.cv,
                "predict_us": predict_us,
                # The same comparison on the 10th percentile, which load on a shared machine disturbs less.
                "predicted_p10_ms": predicted_p10,
                "measured_p10_ms": measured.p10_ms,
                "error_p10_pct": 100.0 * (predicted_p10 - measured.p10_ms) / measured.p10_ms,
                "spec": json.dumps(spec.to_dict(), separators=(",", ":")),
            }
        )
    return pd.DataFrame(rows)


def summarize_validation(frame: pd.DataFrame) -> dict[str, float]:
    """The accuracy figures of a `validate` frame."""
    errors = frame["error_pct"].abs()
    return {
        "samples": int(len(frame)),
        "median_abs_error_pct": float(errors.median()),
        "max_abs_error_pct": float(errors.max()),
        "within_5_pct": float((errors <= 5.0).mean()),
        "within_10_pct": float((errors <= 10.0).mean()),
        # Spearman = Pearson on ranks (pandas' method="spearman" would need scipy)
        "spearman": float(frame["predicted_ms"].rank().corr(frame["measured_ms"].rank())) if len(frame) > 1 else float("nan"),
        "mean_bias_pct": float(frame["error_pct"].mean()),
    }
