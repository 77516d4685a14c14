"""`LatencyTable`: measured unit latencies for one target; fill, gauge, predict.

A prediction is the sum of a spec's unit entries through the `Correction`
fitted for its family from a few whole-network measurements.

Entries are filled over hours or days, by several runs, while the machine's
load changes. So that entries measured at different moments do not mix
different machine states, every measuring batch also measures the table's
reference units (a few units fixed when the table is created, with their
figures at that moment), and stores each entry divided by the batch's
gauge: how much slower the references ran in that batch than at creation.
Whole networks measured to fit or check the correction are gauged the same
way, so the whole table speaks of one machine state, the reference state.
`check_drift` re-measures a sample of entries and says whether the table
still agrees with the machine (docs/latency-model.md, "Consistency").
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from mobilenetv3 import NetSpec, build
from netadapt.benchmark import (
    DEFAULT_STATISTIC,
    MAX_INTERLEAVED,
    Measurement,
    Measurer,
    best_of,
    measure_all,
    measure_onnx_passes,
)
from netadapt.errors import LatencyTableError, quote
from netadapt.latency.correction import Correction, fit_correction_terms
from netadapt.latency.store import STAT_COLUMNS, TableFile, read_table, write_table
from netadapt.latency.units import Unit, network_key, unit_onnx, units_boundary_millions, units_of, weights_millions
from netadapt.onnx_export import onnx_bytes
from netadapt.types import DRIFT_CHECKS, STATISTICS

FINGERPRINT_QUOTE = 400  # characters of a fingerprint in a message: every field of a real one, not a hand-made megabyte


def _shortened(text: str, limit: int = FINGERPRINT_QUOTE) -> str:
    """`text` as it is, or its first `limit` characters and how many more there were."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"

__all__ = ["DriftReport", "LatencyTable", "REFERENCE_UNITS"]

REFERENCE_UNITS = 3  # units measured in every batch to gauge the machine's state
REFERENCE_PASSES = 3  # sessions whose best sets each reference's figure when a table is created
# A batch whose gauge is further than this from 1 is measured again (up to GAUGE_RETRIES
# times): on this VM single sessions, references' included, now and then run 1.3-1.5x slow
# while the rest of the batch does not (benchmarks/results/search_latency/README.md).
GAUGE_TOLERANCE = 0.10
GAUGE_RETRIES = 2
# The figures a gauge is computed for; p90 and mean follow the median's.
_GAUGED = {"quiet_ms": "quiet", "min_ms": "min", "median_ms": "median", "p10_ms": "p10", "p90_ms": "median",
           "mean_ms": "median", "latency_ms": None}


@dataclass(frozen=True)
class DriftReport:
    """The outcome of `LatencyTable.check_drift`: sampled entries re-measured against the stored ones."""

    checked: int  # entries re-measured
    median_abs_pct: float  # median |re-measured / stored - 1|, both on the reference scale, in %
    max_abs_pct: float
    gauge: float  # the machine now against the table's reference state (1.1: 10% slower)
    tolerance_pct: float

    @property
    def ok(self) -> bool:
        return self.median_abs_pct <= self.tolerance_pct

    def describe(self) -> str:
        return (f"{self.checked} entries re-measured: median |difference| {self.median_abs_pct:.1f}%, "
                f"max {self.max_abs_pct:.1f}% (tolerance {self.tolerance_pct:g}%); machine at {self.gauge:.3f}x "
                "the table's reference state")


def _scaled(measurement: Measurement, gauges: dict[str, float], statistic: str) -> Measurement:
    """`measurement` divided by the batch's gauge of each figure: on the table's reference scale."""
    changes = {}
    for name, figure in _GAUGED.items():
        changes[name] = getattr(measurement, name) / gauges[figure or statistic]
    return dataclasses.replace(measurement, **changes)


def _unit_from_row(row: dict[str, Any]) -> Unit:
    values = {}
    for field in dataclasses.fields(Unit):
        value = row[field.name]
        if field.type in ("bool", bool):
            value = value if isinstance(value, bool) else str(value).strip().lower() == "true"
        elif field.type in ("int", int):
            value = int(value)
        else:
            value = "" if value is None else str(value)
        values[field.name] = value
    return Unit(**values)


def _work(unit: Unit) -> int:
    """A rough size of a unit's work, to choose references of small, middle and large cost."""
    return unit.height * unit.width * max(unit.in_channels, unit.expanded, unit.out) * unit.kernel


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
        stored: TableFile,
        statistic: str = DEFAULT_STATISTIC,
        reference_units: int = REFERENCE_UNITS,
    ) -> None:
        self.path = Path(path)
        self.measurer = measurer
        self.input_shape = tuple(int(d) for d in input_shape)
        self.batch = self.input_shape[0]
        self.fingerprint = stored.fingerprint
        self.entries = stored.entries  # key -> row (unit fields + measurement statistics)
        self.corrections: dict[str, Correction] = {}
        for key, value in stored.corrections.items():
            try:
                self.corrections[key] = Correction(**value)
            except TypeError as error:
                raise LatencyTableError(f"{self.path}: correction {quote(key)} is malformed ({quote(str(error))}); rebuild the table") from None
        self.references = [dict(r) for r in stored.references]  # [{"unit": fields, "figures": {stat: ms}}]
        if statistic not in STATISTICS:
            raise LatencyTableError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
        self.statistic = statistic  # which column predictions sum: the measurer's statistic unless asked otherwise
        self.reference_count = max(0, int(reference_units))
        self._key_cache: dict[NetSpec, tuple[list[str], float, float]] = {}  # keys, boundary elements and parameters in millions
        self._order_rng = random.Random(0)  # the order units are measured in (see _measure_all)
        self.measured_count = 0  # entries measured by this object (on demand or by fill)
        self.measure_seconds = 0.0  # time spent exporting and measuring them
        self.last_gauge = 1.0  # the table statistic's gauge of the last measuring batch

    # ------------------------------------------------------------ open / save
    @classmethod
    def open(
        cls,
        path: str | Path,
        measurer: Measurer,
        input_shape: tuple[int, int, int, int],
        statistic: str | None = None,
        reference_units: int = REFERENCE_UNITS,
    ) -> "LatencyTable":
        """Load the table at `path`, or start an empty one there if it does not exist.

        Args:
            path: the table file (CSV).
            measurer: measures missing entries; its fingerprint must match the file's.
            input_shape: (N, C, H, W) of the networks this table predicts.
            statistic: the figure predictions sum and corrections fit ("quiet",
                "median", "p10" or "min"); default: the measurer's `statistic` (its
                target's `measure.statistic`), else "min".
            reference_units: how many units a new table chooses as its gauge.

        Raises:
            LatencyTableError: the file is corrupt or truncated, or was built
                for a target whose fingerprint differs from `measurer`'s.
        """
        path = Path(path)
        statistic = statistic or getattr(measurer, "statistic", None) or DEFAULT_STATISTIC
        current = measurer.fingerprint()
        if not path.exists():
            return cls(path, measurer, input_shape, TableFile(current), statistic, reference_units)
        stored = read_table(path)
        if stored.fingerprint != current:
            differing = sorted(k for k in set(stored.fingerprint) | set(current) if stored.fingerprint.get(k) != current.get(k))
            # The stored fingerprint is the file's: quoted short, however big a hand-edited field is.
            raise LatencyTableError(
                f"{path}: this table was measured on another target (differs in {quote(differing, FINGERPRINT_QUOTE)}).\n"
                f"  table:   {_shortened(json.dumps(stored.fingerprint, sort_keys=True))}\n"
                f"  current: {_shortened(json.dumps(current, sort_keys=True))}\n"
                "Use a table built for this target (--table FILE) or build a new one."
            )
        return cls(path, measurer, input_shape, stored, statistic, reference_units)

    def _file(self) -> TableFile:
        return TableFile(self.fingerprint, {k: c.to_dict() for k, c in self.corrections.items()},
                         self.references, self.entries)

    def save(self) -> None:
        """Write the whole table atomically: a kill leaves the old file or the new one.

        Entries another process added to the file since it was read (e.g.
        parallel candidates filling the same table) are merged in first, if
        that file shares this table's reference state, so concurrent writers
        lose nothing but a race's last few entries.
        """
        self._merge_from_disk()
        write_table(self.path, self._file())

    def _adopt_references_from_disk(self) -> None:
        if self.path.exists():
            try:
                other = read_table(self.path)
            except LatencyTableError:
                return
            if other.fingerprint == self.fingerprint:
                self.references = [dict(r) for r in other.references]

    def _merge_from_disk(self) -> None:
        if not self.path.exists():
            return
        try:
            other = read_table(self.path)
        except LatencyTableError:
            return  # we opened it intact; whatever damaged it since is replaced
        if other.fingerprint != self.fingerprint:
            return
        if not self.references:
            self.references = [dict(r) for r in other.references]  # adopt the file's scale before measuring on it
        if other.references != self.references:
            return  # another reference state: its figures are on another scale and must not mix with ours
        for key, row in other.entries.items():
            self.entries.setdefault(key, row)
        for key, value in other.corrections.items():
            if key not in self.corrections:
                try:
                    self.corrections[key] = Correction(**value)
                except TypeError:
                    continue

    def save_copy(self, path: str | Path) -> None:
        """Write the table to another file (e.g. a run directory's snapshot), atomically.

        The copy keeps this table's fingerprint, references and corrections;
        this object keeps saving to its own path.
        """
        write_table(Path(path), self._file())

    def correction_specs(self, spec: NetSpec | None = None) -> int:
        """Whole networks behind the correction fitted for `spec`'s own family (all families if None); 0: none.

        A deeper family's correction, which `correction_for` lends to a spec with
        blocks removed, does not count: a new base network gets its own fit."""
        if spec is not None:
            key = _correction_key(network_key(spec, self.input_shape), self.statistic)  # type: ignore[arg-type]
            correction = self.corrections.get(key)
            return correction.samples if correction else 0
        return sum(c.samples for k, c in self.corrections.items() if _statistic_of(k) == self.statistic)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, unit: Unit) -> bool:
        return unit.key() in self.entries

    # ---------------------------------------------------------------- gauge
    def reference_units(self) -> list[Unit]:
        """The units every measuring batch also measures (empty until the first batch)."""
        return [_unit_from_row(r["unit"]) for r in self.references]

    def _choose_references(self, candidates: list[Unit]) -> list[Unit]:
        # Small, middle and large units: load slows memory-bound and
        # compute-bound work differently, and the gauge averages over both.
        ordered = sorted({u.key(): u for u in candidates}.values(), key=lambda u: (_work(u), u.key()))
        count = min(self.reference_count, len(ordered))
        if count == 0:
            return []
        picks = sorted({round(i * (len(ordered) - 1) / max(1, count - 1)) for i in range(count)})
        return [ordered[i] for i in picks]

    def measure_gauged(
        self, models: list[bytes], measurer: Measurer | None = None, candidates: list[Unit] | None = None
    ) -> tuple[list[Measurement], list[float]]:
        """Measure `models` with the reference units in every interleaved batch; figures on the reference scale.

        Args:
            models: ONNX models (units or whole networks).
            measurer: default the table's; whole networks may use a longer one.
            candidates: units to choose the references from if the table has none yet.

        Returns:
            One measurement per model, divided by its batch's gauge, and each
            model's gauge of the table's statistic (1.0 in the batch that set the references).
        """
        measurer = measurer or self.measurer
        if not self.references:
            self._adopt_references_from_disk()  # another writer may have set the scale since we opened
        if not self.references and self.reference_count and candidates:
            references = self._choose_references(candidates)
            self.references = [{"unit": dataclasses.asdict(u), "figures": {}} for u in references]
        reference_models = [unit_onnx(u, self.batch) for u in self.reference_units()]
        if reference_models and not self.references[0]["figures"]:
            self._set_reference_figures(reference_models, measurer)
        chunk = max(1, MAX_INTERLEAVED - len(reference_models))
        results: list[Measurement] = []
        gauges: list[float] = []
        for first in range(0, len(models), chunk):
            part = models[first : first + chunk]
            tries = []
            for _ in range(1 + (GAUGE_RETRIES if reference_models else 0)):
                refs, rest = self._measure_beside_references(reference_models, part, measurer)
                tries.append((self._batch_gauges(refs), rest))
                if abs(tries[-1][0][self.statistic] - 1) <= GAUGE_TOLERANCE:
                    break
            # The try whose references ran closest to their reference figures: a gauge far off
            # more often means the references' own sessions ran slow than the whole machine.
            batch_gauges, rest = min(tries, key=lambda one: abs(math.log(one[0][self.statistic])))
            self.last_gauge = batch_gauges[self.statistic]
            results.extend(_scaled(m, batch_gauges, self.statistic) for m in rest)
            gauges.extend([self.last_gauge] * len(rest))
        return results, gauges

    def _measure_beside_references(
        self, reference_models: list[bytes], part: list[bytes], measurer: Measurer
    ) -> tuple[list[Measurement], list[Measurement]]:
        """One interleaved batch of the references and `part`, in random positions; (references', part's)."""
        models = reference_models + part
        order = list(range(len(models)))
        self._order_rng.shuffle(order)
        by_index = dict(zip(order, measure_all(measurer, [models[i] for i in order])))
        measured = [by_index[i] for i in range(len(models))]
        return measured[: len(reference_models)], measured[len(reference_models) :]

    def _set_reference_figures(self, reference_models: list[bytes], measurer: Measurer) -> None:
        """The references' figures at creation: each one's best of REFERENCE_PASSES sessions, so one slow
        session does not set the scale of the whole table."""
        passes = [measure_all(measurer, reference_models) for _ in range(REFERENCE_PASSES)]
        for reference, measured in zip(self.references, zip(*passes)):
            reference["figures"] = {s: min(m.statistic_ms(s) for m in measured) for s in STATISTICS}

    def _batch_gauges(self, refs: list[Measurement]) -> dict[str, float]:
        """Median over the references of now / at creation, per figure (robust to one slow reference session)."""
        if not refs:
            return {statistic: 1.0 for statistic in STATISTICS}
        return {
            statistic: float(np.median([measured.statistic_ms(statistic) / reference["figures"][statistic]
                                        for reference, measured in zip(self.references, refs)]))
            for statistic in STATISTICS
        }

    def check_drift(self, sample: int = 8, tolerance_pct: float = 5.0, seed: int = 0) -> DriftReport:
        """Re-measure `sample` random entries (gauged) and compare them with the stored figures.

        An entry's stored figure is the best of its passes, so a single
        re-measurement reads a little higher even on an unchanged machine;
        the tolerance allows for that and for the noise of one measurement.
        """
        keys = sorted(self.entries)
        if not keys:
            return DriftReport(0, 0.0, 0.0, 1.0, tolerance_pct)
        chosen = random.Random(f"drift-{seed}").sample(keys, min(sample, len(keys)))
        units = [_unit_from_row(self.entries[k]) for k in chosen]
        measured, _ = self.measure_gauged([unit_onnx(u, self.batch) for u in units], candidates=units)
        column = f"{self.statistic}_ms"
        differences = [100 * abs(m.statistic_ms(self.statistic) / float(self.entries[k][column]) - 1)
                       for k, m in zip(chosen, measured)]
        return DriftReport(len(units), float(np.median(differences)), float(max(differences)), self.last_gauge,
                           tolerance_pct)

    def ensure_consistent(
        self, policy: str = "remeasure", sample: int = 8, tolerance_pct: float = 5.0,
        echo: Callable[[str], None] = print, progress: bool = True,
    ) -> DriftReport | None:
        """Run `check_drift` on a filled table and act on a failure as `policy` says.

        "remeasure": every entry is measured again (the old figures are
        dropped, not kept as a best) under new references, and the
        corrections are dropped so that they are fitted anew; "refuse":
        raise LatencyTableError; "off": no check. The outcome is echoed
        either way, so a table is never used on a failed check silently.
        """
        if policy not in DRIFT_CHECKS:
            raise LatencyTableError(f"lut.drift_check must be one of {list(DRIFT_CHECKS)}, got {policy!r}")
        if policy == "off" or not self.entries:
            return None
        report = self.check_drift(sample, tolerance_pct)
        if report.ok:
            echo(f"table {self.path}: drift check passed ({report.describe()})")
            return report
        if policy == "refuse":
            raise LatencyTableError(
                f"{self.path}: drift check failed ({report.describe()}): its entries no longer agree with this "
                "machine; rebuild it (netadapt lut build --rebuild) or set lut.drift_check=remeasure"
            )
        echo(f"table {self.path}: drift check failed ({report.describe()}); re-measuring all {len(self.entries)} "
             "entries under new reference units and refitting its corrections")
        self.rebuild(progress=progress)
        return report

    def rebuild(self, progress: bool = True) -> int:
        """Measure every entry again from scratch (new references, no corrections); returns the count."""
        units = [_unit_from_row(row) for row in self.entries.values()]
        self.entries, self.corrections, self.references = {}, {}, []
        self._key_cache.clear()
        self._measure_all(units, progress, save_every=16, replace=True, merge=False)
        return len(units)

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

    def _measure_units(self, units: list[Unit], replace: bool = False) -> list[Measurement]:
        """Measure `units` together (interleaved, with the references) and store their entries.

        If the table already holds a unit, the measurement with the lower
        figure is kept (unless `replace`): both are on the reference scale,
        and other load only ever makes a run slower, so the best of several
        passes is the closest to the unloaded figure.
        """
        start = time.perf_counter()
        measurements, gauges = self.measure_gauged([unit_onnx(unit, self.batch) for unit in units], candidates=units)
        self.measure_seconds += time.perf_counter() - start
        self.measured_count += len(units)
        column = f"{self.statistic}_ms"
        for unit, measurement, gauge in zip(units, measurements, gauges):
            old = self.entries.get(unit.key())
            if replace or old is None or measurement.statistic_ms(self.statistic) < float(old[column]):
                row = {"key": unit.key(), **dataclasses.asdict(unit)}
                row.update({name: getattr(measurement, name) for name in STAT_COLUMNS if name != "gauge"})
                row["gauge"] = gauge
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
                over all of them, keeping the best (see `_measure_units`).
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

    def _measure_all(self, units: list[Unit], progress: bool, save_every: int, replace: bool = False,
                     merge: bool = True) -> None:
        # Batches of `save_every` units are measured together (interleaved) and
        # then saved, so a kill loses at most the batch being measured.
        # In random order: in first-seen order the units only one network uses
        # are measured one after another, so that network's sum would carry the
        # machine's state of that moment as a whole; shuffled, each network's
        # units come from all through the build (benchmarks/results/lut_accuracy/).
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
                self._measure_units(chunk, replace=replace)
                if merge:
                    self.save()
                else:
                    write_table(self.path, self._file())  # a rebuild replaces the file's scale: nothing to merge
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

    # ---------------------------------------------------------- whole networks
    def measure_networks(
        self, specs: list[NetSpec], passes: int = 1, measurer: Measurer | None = None
    ) -> list[list[Measurement]]:
        """Measure `specs` whole, gauged, in `passes` passes; one list per pass, in `specs` order.

        Each pass goes through the specs in its own seeded random order, so
        the machine's drift over a pass does not follow the specs' positions.
        """
        models = [onnx_bytes(build(spec), self.input_shape) for spec in specs]
        candidates = self.units(specs[0]) if specs else None
        return measure_onnx_passes(models, measurer or self.measurer, passes,
                                   lambda batch: self.measure_gauged(batch, measurer, candidates=candidates)[0])

    def measure_networks_around(
        self, specs: list[NetSpec], passes: int, between: Callable[[], object], measurer: Measurer | None = None
    ) -> list[list[Measurement]]:
        """`measure_networks` with its passes split around `between()`: half before it, the rest after.

        `between` is the entries' fill, minutes long on a large target. A whole
        MobileNetV3-Large at 224 px streams 22 MB of weights, and on a shared
        host its figure moves by up to 13% over minutes (a median 3.7%) while
        its units (and the table's gauge) move by 0.3%. Passes on both sides of
        the fill give each network's best figure two moments to come from,
        where back-to-back passes see one (benchmarks/results/lut_targets/,
        "Why Large misses").
        Returns one list per pass, in `specs` order, as `measure_networks`.
        """
        early = passes // 2
        first = self.measure_networks(specs, early, measurer) if early and specs else []
        between()
        return first + self.measure_networks(specs, max(1, passes - early), measurer)

    # ------------------------------------------------------------ prediction
    def _layout(self, spec: NetSpec) -> tuple[list[str], float, float]:
        # A search predicts the same specs over and over; building their units
        # costs more than summing them, so keys (and the boundary size and
        # parameter count the correction needs) are cached per (hashable) spec.
        layout = self._key_cache.get(spec)
        if layout is None:
            units = self.units(spec)
            layout = ([unit.key() for unit in units], units_boundary_millions(units), weights_millions(spec))
            self._key_cache[spec] = layout
        return layout

    def boundary_millions(self, spec: NetSpec) -> float:
        """Elements (millions, per image) of the activations between `spec`'s units: the correction's boundary term."""
        return self._layout(spec)[1]

    def weights_millions(self, spec: NetSpec) -> float:
        """Parameters (millions) of `spec`: the correction's weights term."""
        return self._layout(spec)[2]

    def raw_sum_ms(self, spec: NetSpec, statistic: str | None = None) -> float:
        """Sum of the unit entries (the table's statistic, or `statistic`), without the correction."""
        statistic = statistic or self.statistic
        if statistic not in STATISTICS:
            raise LatencyTableError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
        column = f"{statistic}_ms"
        keys = self._layout(spec)[0]
        try:
            return float(sum(self.entries[key][column] for key in keys))
        except KeyError:
            self.fill([spec], progress=False)
            return float(sum(self.entries[key][column] for key in keys))

    def correction_for(self, spec: NetSpec, statistic: str | None = None) -> Correction | None:
        """The correction fitted for `spec`'s family; for a spec with blocks removed (a depth
        proposal), the nearest deeper family's at the same input, whose offset `Correction.apply`
        scales to the spec's unit count. None when there is neither."""
        statistic = statistic or self.statistic
        exact = self.corrections.get(_correction_key(network_key(spec, self.input_shape), statistic))  # type: ignore[arg-type]
        if exact is not None:
            return exact
        deeper = []
        for key, correction in self.corrections.items():
            family, _, key_statistic = key.rpartition(":")
            blocks, _, shape = family.partition("blocks@")
            if key_statistic == statistic and shape == network_key(spec, self.input_shape).partition("blocks@")[2] \
                    and blocks.isdigit() and int(blocks) > len(spec.blocks):  # type: ignore[arg-type]
                deeper.append((int(blocks), correction))
        return min(deeper, key=lambda pair: pair[0])[1] if deeper else None

    def predict_ms(self, spec: NetSpec, statistic: str | None = None) -> float:
        """Predicted latency (ms, on the table's reference scale) of `spec` on this table's target.

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
        if correction is None:
            return raw
        predicted = correction.apply(raw, self.boundary_millions(spec), self.weights_millions(spec),
                                     units=len(units_of(spec, self.input_shape)))  # type: ignore[arg-type]
        return predicted

    def fit_correction(
        self, specs: list[NetSpec], repeats: int = 1, measured: list[Measurement] | None = None,
        unfitted: list[NetSpec] | None = None,
    ) -> Correction:
        """Measure `specs` whole (gauged), fit a `Correction` for their family and save it.

        Corrections for every statistic (quiet, median, p10 and min) are fitted
        from the same measurements; the table's own statistic's one is returned.

        Args:
            specs: networks of one family (same block count and input); a few
                of different sizes, e.g. `calibration_specs`.
            repeats: whole-network measurements per spec, in separate passes
                over all specs, half before the entries are filled and half
                after (`measure_networks_around`); the best (lowest) is used,
                as for the entries.
            measured: the specs' gauged whole-network measurements, if the
                caller already has them (`measure_networks`); then nothing is
                measured here.
            unfitted: networks of the family that are not measured or fitted
                on but must get a positive prediction (the search space's
                floor: see `fit_correction_terms`); their entries are filled.
        """
        if not specs:
            raise LatencyTableError("fit_correction needs at least one spec")
        families = {network_key(s, self.input_shape) for s in specs}  # type: ignore[arg-type]
        if len(families) != 1:
            raise LatencyTableError(f"fit_correction: specs come from several families {sorted(families)}; fit each on its own")
        family = families.pop()
        if measured is not None and len(measured) != len(specs):
            raise LatencyTableError(f"fit_correction: {len(measured)} measurements for {len(specs)} specs")
        unfitted = unfitted or []
        if {network_key(s, self.input_shape) for s in unfitted} - {family}:  # type: ignore[arg-type]
            raise LatencyTableError(f"fit_correction: the unfitted networks are not all of the family {family}")

        def fill_entries() -> None:  # between whole passes, never during one: no whole measurement waits on an entry
            self.fill(specs + unfitted, progress=False)

        if measured is None:
            whole = best_of(self.measure_networks_around(specs, repeats, fill_entries))
        else:
            fill_entries()
            whole = measured
        for statistic in STATISTICS:
            sums = [self.raw_sum_ms(spec, statistic) for spec in specs]
            figures = [m.statistic_ms(statistic) for m in whole]
            boundaries = [self.boundary_millions(spec) for spec in specs]
            weights = [self.weights_millions(spec) for spec in specs]
            extremes = [(self.raw_sum_ms(spec, statistic), self.boundary_millions(spec), self.weights_millions(spec))
                        for spec in unfitted]
            self.corrections[_correction_key(family, statistic)] = fit_correction_terms(
                sums, figures, boundaries, weights, units=len(units_of(specs[0], self.input_shape)),  # type: ignore[arg-type]
                unfitted=extremes)
        self.save()
        return self.corrections[_correction_key(family, self.statistic)]


def _correction_key(family: str, statistic: str) -> str:
    return f"{family}:{statistic}"


def _statistic_of(correction_key: str) -> str:
    return correction_key.rsplit(":", 1)[-1]
