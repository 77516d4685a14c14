"""Latency lookup table: keys, units, storage, refusal, on-demand fill, prediction of Large."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest

import mobilenetv3 as m
from mobilenetv3 import count
from netadapt.benchmark import LocalMeasurer, Measurement, Target, cpu_model, summarize
from netadapt.cli.main import main
from netadapt.errors import LatencyTableError
from netadapt.groups import candidate_widths, lower_bound_spec, prunable_groups, removable_blocks, without_block
from netadapt.latency.correction import leave_one_out_rms as _leave_one_out_rms
from netadapt.latency import (
    FORMS,
    LEFT_OUT_TOLERANCE,
    VERSION,
    LatencyTable,
    calibration_specs,
    first_iteration_specs,
    fit_correction_terms,
    network_key,
    random_subnetwork,
    table_filename,
    trajectory,
    trajectory_specs,
    unit_module,
    unit_onnx,
    units_of,
    validate,
)

SHAPE = (1, 1, 32, 32)
FAST = dict(warmup_runs=1, min_runs=3, min_seconds=0.0)


class CountingMeasurer:
    """A Measurer that counts calls and can fail after a number of them (a killed build)."""

    def __init__(self, fingerprint_extra: dict | None = None, fail_after: int | None = None) -> None:
        self.inner = LocalMeasurer(Target.from_settings(SHAPE, **FAST))
        self.extra = fingerprint_extra or {}
        self.fail_after = fail_after
        self.calls = 0

    def fingerprint(self) -> dict:
        return {**self.inner.fingerprint(), **self.extra}

    def measure(self, onnx_bytes: bytes) -> Measurement:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        return self.inner.measure(onnx_bytes)


def test_unit_keys_spell_out_everything(tiny_spec):
    keys = [unit.key() for unit in units_of(tiny_spec, SHAPE)]
    assert keys == [
        "stem:32x32x1:o8:k3:s2:HS",
        "block:16x16x8:e8:o8:k3:s1:se8:RE:x0:r1",
        "block:16x16x8:e32:o16:k3:s2:se0:RE:x1:r0",
        "block:8x8x16:e48:o16:k5:s1:se16:HS:x1:r1",
        "last_conv:8x8x16:o64:k1:s1:HS",
        "head:8x8x64:h32:o10",
    ]


@pytest.mark.parametrize(
    "change",
    [dict(se_squeeze=8), dict(residual=False), dict(activation="relu"), dict(kernel=3), dict(expanded=40, se_squeeze=8)],
)
def test_every_block_field_changes_the_key(tiny_spec, change):
    before = units_of(tiny_spec, SHAPE)[3].key()
    after = units_of(tiny_spec.replace_block(2, **change), SHAPE)[3].key()
    assert before != after


def test_units_rebuild_the_network(tiny_spec):
    # Each unit's module has exactly the parameters of its row in the block table,
    # so the units are the network, cut at its seams.
    units = units_of(tiny_spec, SHAPE)
    rows = count(tiny_spec, 32)
    assert [u.kind for u in units] == ["stem", "block", "block", "block", "last_conv", "head"]
    for unit, row in zip(units, rows):
        assert sum(p.numel() for p in unit_module(unit).parameters()) == row.params, unit.key()
        assert unit.in_channels == row.in_channels


def test_first_iteration_specs_are_every_single_group_cut(tiny_spec):
    specs = first_iteration_specs(tiny_spec, granularity=8, min_channels=8)
    groups = prunable_groups(tiny_spec, 8, 8)
    assert specs[0] == tiny_spec
    assert len(specs) == 1 + sum(len(candidate_widths(g)) for g in groups)
    assert len(set(specs)) == len(specs)
    for spec in specs:
        assert all(b.expanded % 8 == 0 and b.out % 8 == 0 for b in spec.blocks)


def test_random_subnetwork_stays_on_the_grid():
    base = m.large()
    spec = random_subnetwork(base, random.Random(1), granularity=8)
    assert spec != base and network_key(spec, (1, 3, 224, 224)) == network_key(base, (1, 3, 224, 224))
    assert all(b.expanded % 8 == 0 and b.out % 8 == 0 for b in spec.blocks)


def test_on_demand_fill_measures_once_and_saves(tmp_path, tiny_spec):
    path = tmp_path / "lut.csv"
    measurer = CountingMeasurer()
    table = LatencyTable.open(path, measurer, SHAPE, reference_units=0)  # no gauge: every call is an entry
    first = table.predict_ms(tiny_spec)
    # Every unit of the tiny spec is distinct: 6 entries.
    assert measurer.calls == 6 and len(table) == 6 and path.is_file()
    assert table.predict_ms(tiny_spec) == first and measurer.calls == 6
    reopened = LatencyTable.open(path, measurer, SHAPE, reference_units=0)
    assert len(reopened) == 6 and reopened.predict_ms(tiny_spec) == pytest.approx(first, rel=1e-5)
    assert measurer.calls == 6
    cut = tiny_spec.replace_block(2, expanded=40, se_squeeze=8)
    reopened.predict_ms(cut)
    assert measurer.calls == 7  # only the changed block is new


def test_whole_networks_are_measured_on_both_sides_of_the_fill(tmp_path, tiny_spec):
    # Half the passes before `between` (the entries' fill), the rest after it; one pass all after.
    measurer = CountingMeasurer()
    table = LatencyTable.open(tmp_path / "lut.csv", measurer, SHAPE, reference_units=0)  # every call is one model
    specs = [tiny_spec, tiny_spec.replace(head_hidden=16)]
    seen: list[int] = []
    passes = table.measure_networks_around(specs, 5, lambda: seen.append(measurer.calls))
    assert seen == [2 * len(specs)] and len(passes) == 5 and measurer.calls == 5 * len(specs)
    assert all(len(one) == len(specs) for one in passes)
    seen.clear()
    assert len(table.measure_networks_around(specs, 1, lambda: seen.append(measurer.calls))) == 1
    assert seen == [5 * len(specs)]


def test_fit_correction_measures_whole_networks_before_and_after_filling_entries(tmp_path, tiny_spec):
    table = None
    entries_at_call: list[int] = []

    class Watching(CountingMeasurer):
        def measure(self, onnx_bytes: bytes) -> Measurement:
            entries_at_call.append(len(table.entries))
            return super().measure(onnx_bytes)

    table = LatencyTable.open(tmp_path / "lut.csv", Watching(), SHAPE, reference_units=0)
    specs = [tiny_spec, tiny_spec.replace(head_hidden=16)]
    table.fit_correction(specs, repeats=4)
    units = len(table.entries)
    assert units > 0 and len(entries_at_call) == 4 * len(specs) + units
    assert entries_at_call[: 2 * len(specs)] == [0] * (2 * len(specs))  # two passes before any entry
    assert entries_at_call[-2 * len(specs):] == [units] * (2 * len(specs))  # two after all of them


def test_save_load_round_trip_is_atomic(tmp_path, tiny_spec):
    path = tmp_path / "lut.csv"
    measurer = CountingMeasurer()
    table = LatencyTable.open(path, measurer, SHAPE)
    table.fill([tiny_spec, tiny_spec.replace(head_hidden=16)], progress=False)
    correction = table.fit_correction([tiny_spec])
    loaded = LatencyTable.open(path, measurer, SHAPE)
    assert loaded.entries.keys() == table.entries.keys()
    for key, row in table.entries.items():
        assert loaded.entries[key]["median_ms"] == pytest.approx(row["median_ms"], rel=1e-5)
        assert loaded.entries[key]["se"] == row["se"] and loaded.entries[key]["activation"] == row["activation"]
    assert loaded.correction_for(tiny_spec).scale == pytest.approx(correction.scale)
    assert loaded.correction_specs(tiny_spec) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["lut.csv"]  # no temporary files left behind
    copy = tmp_path / "run" / "lut.csv"
    loaded.save_copy(copy)
    assert len(LatencyTable.open(copy, measurer, SHAPE)) == len(loaded)


def test_two_writers_merge_their_entries(tmp_path, tiny_spec):
    path = tmp_path / "lut.csv"
    first = LatencyTable.open(path, CountingMeasurer(), SHAPE)
    second = LatencyTable.open(path, CountingMeasurer(), SHAPE)
    first.predict_ms(tiny_spec)
    second.predict_ms(tiny_spec.replace(head_hidden=16))  # saves after `first` did
    assert len(LatencyTable.open(path, CountingMeasurer(), SHAPE)) == 7


class ScriptedMeasurer:
    """A Measurer whose medians come from a script: lets a test know every figure."""

    def __init__(self, medians: list[float]) -> None:
        self.medians = iter(medians)

    def fingerprint(self) -> dict:
        return {"cpu": "scripted"}

    def measure(self, onnx_bytes: bytes) -> Measurement:
        return summarize([next(self.medians)])


def test_fill_measures_units_in_random_order_and_files_each_under_its_key(tmp_path, tiny_spec, size_measurer):
    specs = [tiny_spec, tiny_spec.replace(last_conv=32), tiny_spec.replace(head_hidden=16)]
    measurer = size_measurer()
    table = LatencyTable.open(tmp_path / "lut.csv", measurer, SHAPE, reference_units=0)
    todo = table.missing(specs)
    assert table.fill(specs, progress=False) == len(todo) == 9  # 6, a last conv and head of 32, a head of 16
    first_seen = [len(unit_onnx(unit, 1)) for unit in todo]
    # Not in first-seen order, where one network's own units would be measured back to back.
    assert sorted(measurer.asked) == sorted(first_seen) and measurer.asked != first_seen
    for unit in todo:
        assert table.entry_ms(unit) == pytest.approx(len(unit_onnx(unit, 1)) / 1000)


def test_a_removed_block_is_predicted_from_the_entries_already_there(tmp_path, tiny_spec, size_measurer):
    table = LatencyTable.open(tmp_path / "lut.csv", size_measurer(), SHAPE, reference_units=0)
    table.fill([tiny_spec], progress=False)
    assert removable_blocks(tiny_spec) == [0, 2]
    for index in removable_blocks(tiny_spec):
        removed = without_block(tiny_spec, index)
        # Every other unit keeps its shapes, so the removal needs no new measurement ...
        assert table.missing([removed]) == []
        # ... and saves exactly the removed block's entry.
        (block_unit,) = [unit for unit in units_of(tiny_spec, SHAPE) if unit not in units_of(removed, SHAPE)]
        assert table.raw_sum_ms(tiny_spec) - table.raw_sum_ms(removed) == pytest.approx(table.entry_ms(block_unit))
    # A correction fitted on the full-depth family (here on made-up whole figures, 0.9 x sum - 0.05 ms)
    # is lent to the shallower spec, with the offset scaled to its unit count: one session overhead less.
    family = [tiny_spec, tiny_spec.replace(last_conv=32), tiny_spec.replace(head_hidden=16),
              tiny_spec.replace_block(2, expanded=24)]
    figures = [0.9 * table.raw_sum_ms(spec) - 0.05 for spec in family]
    correction = table.fit_correction(family, measured=[summarize([ms]) for ms in figures])
    assert correction.units == len(units_of(tiny_spec, SHAPE)) == 6 and correction.offset_ms == pytest.approx(-0.05)
    removed = without_block(tiny_spec, 2)
    assert table.correction_for(removed) == correction and table.correction_specs(removed) == 0
    expected = 0.9 * table.raw_sum_ms(removed) - 0.05 * (5 - 1) / (6 - 1)
    assert table.predict_ms(removed) == pytest.approx(expected, rel=1e-6)
    assert table.predict_ms(tiny_spec) == pytest.approx(0.9 * table.raw_sum_ms(tiny_spec) - 0.05, rel=1e-6)


def test_remeasure_keeps_each_entrys_best(tmp_path, tiny_spec):
    # Pass 1: every unit 5 ms. Pass 2: alternately 1 ms (kept) and 9 ms (ignored).
    table = LatencyTable.open(tmp_path / "lut.csv", ScriptedMeasurer([5.0] * 6 + [1.0, 9.0] * 3), SHAPE, reference_units=0)
    assert table.fill([tiny_spec], progress=False) == 6
    assert table.raw_sum_ms(tiny_spec) == pytest.approx(30.0)
    assert table.remeasure([tiny_spec], progress=False) == 6
    assert table.raw_sum_ms(tiny_spec) == pytest.approx(3 * 1.0 + 3 * 5.0)


def test_correction_scales_the_sum(tmp_path, tiny_spec):
    # Units sum to 6 x 2 ms = 12 ms; the whole network measures 9 ms: scale 0.75.
    table = LatencyTable.open(tmp_path / "lut.csv", ScriptedMeasurer([2.0] * 6 + [9.0]), SHAPE, reference_units=0)
    table.fill([tiny_spec], progress=False)
    assert table.predict_ms(tiny_spec) == pytest.approx(12.0)  # no correction yet: the raw sum
    correction = table.fit_correction([tiny_spec])
    assert correction.scale == pytest.approx(0.75) and correction.samples == 1
    assert table.predict_ms(tiny_spec) == pytest.approx(9.0)
    assert table.predict_ms(tiny_spec, "p10") == pytest.approx(9.0)


def test_boundary_size_counts_the_activations_between_units(tmp_path, tiny_spec):
    # tiny at 32x32: stem out 16x16x8, block 1 out 16x16x8, block 2 out 8x8x16,
    # block 3 out 8x8x16, last conv out 8x8x64 (the head's input).
    table = LatencyTable.open(tmp_path / "lut.csv", CountingMeasurer(), SHAPE)
    expected = 16 * 16 * 8 + 16 * 16 * 8 + 8 * 8 * 16 + 8 * 8 * 16 + 8 * 8 * 64
    assert table.boundary_millions(tiny_spec) == pytest.approx(expected / 1e6)
    assert table.boundary_millions(tiny_spec.replace(last_conv=32)) == pytest.approx((expected - 8 * 8 * 32) / 1e6)


def _synthetic_family(count, scale=1.1, offset=-0.2, per_million=-0.3, per_parameter_million=0.05):
    # Sums, boundary sizes and parameter counts that vary independently, figures that follow the model exactly.
    rng = random.Random(0)
    sums = [rng.uniform(1.0, 3.0) for _ in range(count)]
    boundaries = [rng.uniform(0.2, 1.0) for _ in range(count)]
    weights = [rng.uniform(1.5, 5.5) for _ in range(count)]
    measured = [scale * s + offset + per_million * b + per_parameter_million * w for s, b, w in zip(sums, boundaries, weights)]
    return sums, measured, boundaries, weights


def test_correction_fit_uses_the_richest_form_the_networks_support():
    needed = FORMS["affine+boundary+weights"][1]
    sums, measured, boundaries, weights = _synthetic_family(needed)
    full = fit_correction_terms(sums, measured, boundaries, weights)
    assert full.form == "affine+boundary+weights" and full.samples == needed
    assert (full.scale, full.offset_ms, full.boundary_ms_per_million, full.weights_ms_per_million) == pytest.approx(
        (1.1, -0.2, -0.3, 0.05)
    )
    assert full.rms_error == pytest.approx(0.0, abs=1e-9)
    assert full.apply(2.0, 0.5, 3.0) == pytest.approx(1.1 * 2.0 - 0.2 - 0.3 * 0.5 + 0.05 * 3.0)
    assert "per million parameters" in full.describe()
    # One network fewer: too few for four terms, so three (which cannot fit exactly).
    fewer = fit_correction_terms(sums[:-1], measured[:-1], boundaries[:-1], weights[:-1])
    assert fewer.form == "affine+boundary" and fewer.weights_ms_per_million == 0.0 and fewer.rms_error > 0
    # Too few for the boundary term: the affine form.
    boundary_needed = FORMS["affine+boundary"][1]
    assert fit_correction_terms(sums[: boundary_needed - 1], measured[: boundary_needed - 1], boundaries[: boundary_needed - 1]).form == "affine"
    # No boundary sizes or parameter counts, or all equal: the affine form; one network: a ratio.
    assert fit_correction_terms(sums, measured).form == "affine"
    assert fit_correction_terms(sums, measured, [0.5] * len(sums), [2.0] * len(sums)).form == "affine"
    single = fit_correction_terms(sums[:1], measured[:1], boundaries[:1], weights[:1])
    assert single.form == "scale" and single.scale == pytest.approx(measured[0] / sums[0])
    # One form on request, refused where the networks cannot support it.
    assert fit_correction_terms(sums, measured, boundaries, weights, form="affine").form == "affine"
    with pytest.raises(LatencyTableError, match="affine\\+boundary\\+weights form needs more networks"):
        fit_correction_terms(sums[:-1], measured[:-1], boundaries[:-1], weights[:-1], form="affine+boundary+weights")


def test_boundary_term_is_dropped_when_it_only_fits_noise():
    # Figures that follow the affine form plus alternating noise, boundary sizes
    # unrelated to them: a third coefficient fits the noise, predicts networks
    # left out of the fit worse, and the fit keeps the affine form.
    rng = random.Random(1)
    sums = [1.0 + 0.25 * i for i in range(8)]
    measured = [1.1 * s - 0.2 + noise for s, noise in zip(sums, [0.03, -0.03] * 4)]
    boundaries = [rng.uniform(0.2, 1.0) for _ in sums]
    assert fit_correction_terms(sums, measured, boundaries).form == "affine"
    assert fit_correction_terms(sums, measured, boundaries, form="affine+boundary").form == "affine+boundary"


def test_the_richest_form_is_used_where_the_networks_follow_all_its_terms():
    # Figures that follow all four terms, with a little noise: every richer form
    # predicts left-out networks about as well or better, so the richest is used.
    sums, measured, boundaries, weights = _synthetic_family(12)
    noisy = [value * (1 + noise) for value, noise in zip(measured, [0.004, -0.004] * 6)]
    correction = fit_correction_terms(sums, noisy, boundaries, weights)
    assert correction.form == "affine+boundary+weights"
    assert correction.weights_ms_per_million == pytest.approx(0.05, abs=0.02)


def test_a_richer_form_slightly_worse_on_left_out_networks_is_kept():
    # Figures that follow the boundary form, with +-0.5% noise: the weights term
    # fits a little of the noise, so it predicts left-out networks slightly worse
    # than the boundary form (by less than LEFT_OUT_TOLERANCE), and is still used;
    # taking the lowest left-out error would pick the boundary form.
    sums, _, boundaries, weights = _synthetic_family(12)
    noise = [-0.005, -0.005, 0.005, -0.005, -0.005, -0.005, -0.005, -0.005, -0.005, 0.005, 0.005, -0.005]
    measured = [(1.1 * s - 0.2 - 0.3 * b) * (1 + n) for s, b, n in zip(sums, boundaries, noise)]
    columns = {"scale": np.array(sums), "offset": np.ones(12), "boundary": np.array(boundaries), "weights": np.array(weights)}
    left_out = {name: _leave_one_out_rms(columns, FORMS[name][0], np.array(measured)) for name in ("affine+boundary", "affine+boundary+weights")}
    assert left_out["affine+boundary"] < left_out["affine+boundary+weights"] <= LEFT_OUT_TOLERANCE * left_out["affine+boundary"]
    assert fit_correction_terms(sums, measured, boundaries, weights).form == "affine+boundary+weights"


def test_correction_fit_falls_back_from_an_implausible_form():
    # Figures that fall as the sum grows: the affine fit needs a negative scale,
    # so the single ratio is used, which keeps every prediction positive.
    correction = fit_correction_terms([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    assert correction.form == "scale" and correction.scale > 0
    with pytest.raises(LatencyTableError, match="as many sums"):
        fit_correction_terms([1.0, 2.0], [1.0, 2.0], [0.5])
    with pytest.raises(LatencyTableError, match="as many sums"):
        fit_correction_terms([1.0, 2.0], [1.0, 2.0], [0.5, 0.6], [1.0])


def test_correction_fit_keeps_the_search_floor_positive(tmp_path, searchable):
    # Figures that grow twice as fast as the sums: the affine fit (scale 2,
    # offset -1 ms) predicts a network with a raw sum of 0.4 ms at -0.2 ms.
    sums, measured = [1.0, 1.1, 1.2, 1.3], [1.0, 1.2, 1.4, 1.6]
    assert fit_correction_terms(sums, measured).apply(0.4) < 0
    # Told that such a network is in the search space, the fit falls back to a form that predicts it positive.
    kept = fit_correction_terms(sums, measured, unfitted=[(0.4, 0.0, 0.0)])
    assert kept.form == "scale" and kept.apply(0.4) > 0
    # Through the table, on real measured entries: whole figures that follow a
    # steep line through the cuts' raw sums cross zero above the floor's raw sum.
    # The searchable spec, not the tiny one: its cuts move latency about 8x, so
    # timing noise (a loaded machine) cannot put a cut's sum next to the floor's.
    base = searchable
    floor = lower_bound_spec(base, 8, 8)
    cuts = [base, *(random_subnetwork(base, random.Random(seed), granularity=8) for seed in range(20))]
    cuts = [spec for spec in dict.fromkeys(cuts) if spec != floor]
    table = LatencyTable.open(tmp_path / "lut.csv", CountingMeasurer(), SHAPE)
    table.fill(cuts + [floor], progress=False)
    # Four cuts whose sums are clearly above the floor's, spread from the
    # smallest to the largest (the affine form needs sums that differ by more
    # than 5%), and a line through zero between the floor's sum and theirs.
    floor_raw = table.raw_sum_ms(floor)
    above = sorted((spec for spec in cuts if table.raw_sum_ms(spec) > 1.1 * floor_raw), key=table.raw_sum_ms)
    assert len(above) >= 4, "the searchable spec's cuts should mostly measure above its floor"
    cuts = [above[round(i * (len(above) - 1) / 3)] for i in range(4)]
    raw = [table.raw_sum_ms(spec) for spec in cuts]
    assert max(raw) > 1.05 * min(raw), f"the cuts' sums {raw} should differ by more than 5%"
    zero = (floor_raw + min(raw)) / 2
    steep = [summarize([10 * (r - zero)]) for r in raw]
    table.fit_correction(cuts, measured=steep)
    assert table.predict_ms(floor) < 0, "the test's figures should extrapolate the floor below zero"
    table.fit_correction(cuts, measured=steep, unfitted=[floor])
    assert table.predict_ms(floor) > 0
    another_family = dataclasses.replace(floor, blocks=floor.blocks[:-1])
    with pytest.raises(LatencyTableError, match="unfitted networks are not all of the family"):
        table.fit_correction(cuts, measured=steep, unfitted=[another_family])


def test_prediction_applies_the_boundary_and_weights_terms(tmp_path, searchable):
    # Whole networks that follow scale 0.5, offset 1 ms, 2 ms per million
    # boundary elements and 0.3 ms per million parameters exactly; predictions
    # of other cuts follow them too. The searchable spec, whose cuts' measured
    # sums differ by more than timing noise: the fit tries a term only where
    # its values vary by more than 5%.
    specs = [searchable, *(random_subnetwork(searchable, random.Random(seed), granularity=8) for seed in range(40))]
    specs = list(dict.fromkeys(specs))[: FORMS["affine+boundary+weights"][1] + 1]
    table = LatencyTable.open(tmp_path / "lut.csv", CountingMeasurer(), SHAPE)
    table.fill(specs, progress=False)
    assert table.weights_millions(searchable) == pytest.approx(sum(row.params for row in count(searchable)) / 1e6)

    def model(spec):
        return 0.5 * table.raw_sum_ms(spec) + 1.0 + 2.0 * table.boundary_millions(spec) + 0.3 * table.weights_millions(spec)

    fit, check = specs[:-1], specs[-1]
    measured = [summarize([model(spec)]) for spec in fit]
    correction = table.fit_correction(fit, measured=measured)
    assert correction.form == "affine+boundary+weights"
    assert table.predict_ms(check) == pytest.approx(model(check), rel=1e-6)
    # The coefficients survive a save and load.
    path = tmp_path / "lut.csv"
    reopened = LatencyTable.open(path, CountingMeasurer(), SHAPE)
    assert reopened.predict_ms(check) == pytest.approx(model(check), rel=1e-6)
    # A table saved before the terms existed has corrections without them: read as no such terms.
    first, _, body = path.read_text().partition("\n")
    header = json.loads(first[2:])
    for stored in header["corrections"].values():
        del stored["boundary_ms_per_million"], stored["weights_ms_per_million"]
    path.write_text("# " + json.dumps(header) + "\n" + body)
    older = LatencyTable.open(path, CountingMeasurer(), SHAPE).correction_for(check)
    assert older.form == "affine" and older.scale == pytest.approx(correction.scale)


def test_calibration_networks_are_the_base_trajectory_networks_and_distinct_random_cuts(tiny_spec):
    base = m.large()
    specs = calibration_specs(base, 12)
    assert specs[0] == base and len(specs) == 12 and len(set(specs)) == 12
    assert lower_bound_spec(base, 8, 8) not in specs
    # Half after the base come from search-like paths (drawn with their own seed), the rest are random cuts.
    floor = lower_bound_spec(base, 8, 8)
    paths = [s for s in trajectory_specs(base, 5, random.Random("correction-path-0")) if s != floor]
    assert specs[1 : 1 + len(paths)] == paths and len(paths) >= 4
    assert specs == calibration_specs(base, 12)  # the same seed draws the same networks
    assert specs != calibration_specs(base, 12, seed=1)
    # A search space with fewer distinct cuts than asked for gives what it has, each once.
    # (tiny with a 16-wide last conv and head: random cuts reach 4 * 2 * 5 * 2 * 2 = 160 networks,
    # trajectories a few more below a quarter of a group's width.)
    small_space = tiny_spec.replace(last_conv=16, head_hidden=16)
    few = calibration_specs(small_space, 200)
    assert few[0] == small_space and len(set(few)) == len(few) and 160 <= len(few) < 200
    assert lower_bound_spec(small_space, 8, 8) not in few


def test_measurements_given_for_the_wrong_number_of_specs_are_refused(tmp_path, tiny_spec):
    table = LatencyTable.open(tmp_path / "lut.csv", ScriptedMeasurer([2.0] * 6), SHAPE)
    specs = [tiny_spec, tiny_spec.replace(head_hidden=16)]
    one = [summarize([9.0])]
    with pytest.raises(LatencyTableError, match="1 measurements for 2 specs"):
        validate(table, specs, progress=False, measured=one)
    with pytest.raises(LatencyTableError, match="1 measurements for 2 specs"):
        table.fit_correction(specs, measured=one)
    assert not table.corrections  # nothing half-fitted


def test_killed_build_keeps_measured_entries_and_resumes(tmp_path, tiny_spec):
    path = tmp_path / "lut.csv"
    specs = first_iteration_specs(tiny_spec)
    with pytest.raises(KeyboardInterrupt):
        LatencyTable.open(path, CountingMeasurer(fail_after=5), SHAPE, reference_units=0).fill(
            specs, progress=False, save_every=2)
    # Entries are measured and saved in batches of `save_every` (2): the kill came
    # during the third batch, so the two finished batches (4 entries) survive.
    resumed = LatencyTable.open(path, CountingMeasurer(), SHAPE)
    assert len(resumed) == 4
    total = len(resumed.missing(specs)) + 4
    measured = resumed.fill(specs, progress=False)
    assert measured == total - 4 and len(resumed) == total


def test_foreign_fingerprint_is_refused_naming_both(tmp_path, tiny_spec):
    path = tmp_path / "lut.csv"
    LatencyTable.open(path, CountingMeasurer(), SHAPE).predict_ms(tiny_spec)
    with pytest.raises(LatencyTableError) as error:
        LatencyTable.open(path, CountingMeasurer({"threads": 4, "cpu": "Other CPU"}), SHAPE)
    message = str(error.value)
    assert str(path) in message and "Other CPU" in message and cpu_model() in message
    assert "threads" in message and message.count('"threads"') == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "edit", "empty"])
def test_corrupt_file_is_refused_naming_it(tmp_path, tiny_spec, damage):
    path = tmp_path / "lut.csv"
    LatencyTable.open(path, CountingMeasurer(), SHAPE).predict_ms(tiny_spec)
    text = path.read_text()
    if damage == "truncate":
        path.write_text(text[: len(text) * 2 // 3])
    elif damage == "garbage":
        path.write_bytes(b"\x00\xff not a table")
    elif damage == "edit":
        path.write_text(text.replace("stem:32x32x1", "stem:64x64x1"))
    else:
        path.write_text("")
    with pytest.raises(LatencyTableError, match=str(path)):
        LatencyTable.open(path, CountingMeasurer(), SHAPE)


@pytest.fixture(scope="module")
def table_file(tmp_path_factory, tiny_spec) -> str:
    """The text of a filled table with references and fitted corrections."""
    path = tmp_path_factory.mktemp("table") / "lut.csv"
    LatencyTable.open(path, CountingMeasurer(), SHAPE).fit_correction([tiny_spec])
    return path.read_text()


def resigned(text: str, header_edit=None, cell: tuple[str, str] | None = None) -> str:
    """`text` with its header changed by `header_edit(header)` or the first row's `cell` (column, value) set,
    and the checksum and row count made to match again: damage the checksum cannot catch."""
    import hashlib
    import io

    import pandas as pd

    first, _, body = text.partition("\n")
    header = json.loads(first[2:])
    if cell is not None:
        frame = pd.read_csv(io.StringIO(body), dtype=str, keep_default_na=False)
        frame.loc[0, cell[0]] = cell[1]
        body = frame.to_csv(index=False, lineterminator="\n")
    if header_edit is not None:
        header_edit(header)
    header["sha256"] = hashlib.sha256(body.encode("utf-8")).hexdigest()
    return "# " + json.dumps(header, sort_keys=True) + "\n" + body


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("min_ms", "-70", "column min_ms: expected a finite positive number, got '-70'"),  # once predicted -70 ms
        ("min_ms", "inf", "column min_ms: expected a finite positive number, got 'inf'"),
        ("median_ms", "nan", "column median_ms: expected a finite positive number, got 'nan'"),
        ("median_ms", "abc", "column median_ms: expected a finite positive number, got 'abc'"),
        ("gauge", "0", "column gauge: expected a finite positive number, got '0'"),
        ("cv", "-0.1", "column cv: expected a finite number >= 0, got '-0.1'"),
        ("runs", "2.5", r"column runs: expected an integer in \[1, 2147483647\], got '2.5'"),
        ("height", "1e30", r"column height: expected an integer in \[1, 2147483647\], got '1e30'"),
        ("se", "maybe", "column se: expected True or False, got 'maybe'"),
        ("kind", "layer", r"column kind: expected one of \['stem', 'block', 'last_conv', 'head'\]"),
        ("stride", "3", r"column key: '.*' does not name the row's unit \('.*:s3:"),
    ],
)
def test_a_table_value_out_of_place_is_refused_by_row_and_column(tmp_path, table_file, column, value, message):
    path = tmp_path / "lut.csv"
    path.write_text(resigned(table_file, cell=(column, value)))
    with pytest.raises(LatencyTableError, match=rf"{path}: row 1 \(line 3[,)].*{message}"):
        LatencyTable.open(path, CountingMeasurer(), SHAPE)


def test_a_repeated_key_is_refused(tmp_path, table_file):
    first, _, body = table_file.partition("\n")
    lines = body.splitlines()
    path = tmp_path / "lut.csv"
    path.write_text(resigned(first + "\n" + "\n".join([lines[0], lines[1], *lines[1:]]) + "\n",
                             lambda header: header.update(rows=header["rows"] + 1)))
    with pytest.raises(LatencyTableError, match=rf"{path}: row 2 \(line 4\) repeats the key of row 1"):
        LatencyTable.open(path, CountingMeasurer(), SHAPE)


def _first_correction(header: dict) -> dict:
    return header["corrections"][sorted(header["corrections"])[0]]


CORRECTION = r"corrections\['.*'\]: "  # a message about the first correction starts so


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda h: h.update(corrections={"x:min": [1, 2]}), r"corrections\['x:min'\]: expected a mapping of"),
        (lambda h: h.update(corrections=[1, 2]), r"not a valid latency table \(header's corrections or references"),
        (lambda h: _first_correction(h).update(scale=[1.0]), CORRECTION + r"scale must be a finite number > 0, got \[1.0\]"),
        # A negative scale once turned every prediction negative, checksum intact.
        (lambda h: _first_correction(h).update(scale=-1.0), CORRECTION + r"scale must be a finite number > 0, got -1.0"),
        (lambda h: _first_correction(h).update(scale=0), CORRECTION + r"scale must be a finite number > 0, got 0"),
        (lambda h: _first_correction(h).update(offset_ms=float("nan")), CORRECTION + "offset_ms must be a finite number"),
        (lambda h: _first_correction(h).update(samples=0), CORRECTION + "samples must be an integer >= 1, got 0"),
        (lambda h: _first_correction(h).update(colour=1), CORRECTION + r"unknown field\(s\) \['colour'\]"),
        (lambda h: _first_correction(h).pop("scale"), CORRECTION + r"missing field\(s\) \['scale'\]"),
        (lambda h: h["references"][0]["figures"].update(min=-1.0),
         r"references\[0\]: figures\['min'\] must be a finite positive number of ms, got -1.0"),
        (lambda h: h["references"][0]["unit"].update(kernel="3"), r"references\[0\]: unit field kernel must be"),
        (lambda h: h["references"].append([1]), r"references\[3\]: expected"),
    ],
)
def test_a_header_value_out_of_place_is_refused_by_field(tmp_path, table_file, edit, message):
    path = tmp_path / "lut.csv"
    path.write_text(resigned(table_file, edit))
    prefix = "" if message.startswith("not a valid") else "header field "
    with pytest.raises(LatencyTableError, match=rf"{path}: {prefix}{message}"):
        LatencyTable.open(path, CountingMeasurer(), SHAPE)


def path_written(path, text: str):
    path.write_text(text)
    return path


def test_a_table_of_another_target_is_named_with_its_fingerprint_cut_short(tmp_path, table_file):
    path = tmp_path / "lut.csv"
    path.write_text(resigned(table_file, lambda h: h["fingerprint"].update(cpu="x" * 1_000_000)))
    with pytest.raises(LatencyTableError, match="measured on another target") as refused:
        LatencyTable.open(path, CountingMeasurer(), SHAPE)
    assert len(str(refused.value)) < 2000 and "more characters" in str(refused.value)


def test_a_header_with_a_repeated_field_is_refused(tmp_path, table_file):
    path = tmp_path / "lut.csv"
    path.write_text(table_file.replace('"format": "netadapt-lut"', '"format": "netadapt-lut", "format": "netadapt-lut"',
                                       1))
    with pytest.raises(LatencyTableError, match=rf"{path}: not a valid latency table \(header: key 'format' is repeated"):
        LatencyTable.open(path, CountingMeasurer(), SHAPE)


def test_an_intact_table_reads_back_with_typed_values(tmp_path, table_file):
    path = tmp_path / "lut.csv"
    path.write_text(table_file)
    table = LatencyTable.open(path, CountingMeasurer(), SHAPE)
    row = next(iter(table.entries.values()))
    assert isinstance(row["min_ms"], float) and isinstance(row["runs"], int) and isinstance(row["se"], bool)
    assert len(table.corrections) == 4 and len(table.references) == 3


def test_cached_table_names_differ_by_target_and_format():
    # A new format gets a new cache file, so `search` never meets an older one it would refuse.
    name = table_filename({"cpu": "A", "threads": 1})
    assert name.startswith(f"lut-v{VERSION}-") and name.endswith(".csv")
    assert name != table_filename({"cpu": "A", "threads": 2})
    assert name == table_filename({"threads": 1, "cpu": "A"})


def test_table_of_an_older_format_is_refused_naming_the_version(tmp_path, tiny_spec):
    # Version 2 tables lack min_ms: reading one would leave "min" predictions without data.
    path = tmp_path / "lut.csv"
    LatencyTable.open(path, CountingMeasurer(), SHAPE).predict_ms(tiny_spec)
    first, _, body = path.read_text().partition("\n")
    header = json.loads(first[2:])
    header["version"] = 2
    path.write_text("# " + json.dumps(header) + "\n" + body)
    with pytest.raises(LatencyTableError, match="format version 2, this netadapt reads 4") as error:
        LatencyTable.open(path, CountingMeasurer(), SHAPE)
    assert str(path) in str(error.value)


def test_table_sums_the_measurers_statistic(tmp_path, tiny_spec):
    # Each scripted unit runs 4, 1, 4, 4 ms: median 4, fastest run (the default figure) 1.
    class MedianMeasurer(ScriptedMeasurer):
        statistic = "median"

        def measure(self, onnx_bytes: bytes) -> Measurement:
            return summarize([4.0, 1.0, 4.0, 4.0], statistic="median")

    table = LatencyTable.open(tmp_path / "lut.csv", MedianMeasurer([]), SHAPE)
    assert table.statistic == "median"
    assert table.raw_sum_ms(tiny_spec) == pytest.approx(6 * 4.0)
    assert table.raw_sum_ms(tiny_spec, "min") == pytest.approx(6 * 1.0)


def test_lut_cli_build_predict_validate(tmp_path, capsys):
    table = tmp_path / "lut.csv"
    flags = ["--preset", "small", "--width", "0.35", "--input", "1x3x32x32", "--table", str(table),
             "--min-runs", "3", "--min-seconds", "0", "--warmup", "1"]
    assert main(["lut", "build", *flags, "--fit-samples", "1", "--granularity", "64"]) == 0
    out = capsys.readouterr().out
    assert "entries/s" in out and "correction for 11blocks@1x3x32x32" in out
    assert main(["lut", "predict", *flags]) == 0
    assert "0 entries measured on demand" in capsys.readouterr().out
    rows = tmp_path / "val.csv"
    assert main(["lut", "validate", *flags, "--samples", "2", "--trajectory", "3", "--removals", "2", "--out",
                 str(rows), "--network-seconds", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "2 random cuts: median |error|" in out and "3 trajectory networks: median |error|" in out
    assert "2 networks with blocks removed: median |error|" in out
    assert "within 5%" in out and "Spearman" in out
    import pandas as pd

    frame = pd.read_csv(rows)
    assert list(frame["kind"]) == ["random"] * 2 + ["trajectory"] * 3 + ["removal"] * 2
    base_blocks = len(m.small(width=0.35, num_classes=1000).blocks)
    removed = [json.loads(spec)["blocks"] for spec in frame.loc[frame["kind"] == "removal", "spec"]]
    assert all(1 <= base_blocks - len(blocks) <= 3 for blocks in removed)
    assert {"predicted_ms", "measured_ms", "error_pct"} <= set(frame.columns)


def test_lut_cli_refuses_a_negative_network_time(tmp_path, capsys):
    flags = ["--preset", "small", "--width", "0.35", "--input", "1x3x32x32", "--table", str(tmp_path / "lut.csv"),
             "--min-runs", "3", "--min-seconds", "0", "--warmup", "1", "--granularity", "64"]
    assert main(["lut", "build", *flags, "--fit-samples", "1", "--network-seconds", "-1"]) == 2
    assert "--network-seconds must be >= 0, got -1" in capsys.readouterr().err


def test_lut_cli_refuses_foreign_table(tmp_path, capsys):
    table = tmp_path / "lut.csv"
    flags = ["--preset", "small", "--width", "0.35", "--input", "1x3x32x32", "--table", str(table),
             "--min-runs", "2", "--min-seconds", "0", "--warmup", "0"]
    assert main(["lut", "predict", *flags]) == 0
    capsys.readouterr()
    assert main(["lut", "predict", *flags, "--threads", "2"]) == 2
    err = capsys.readouterr().err
    assert str(table) in err and "another target" in err


def test_validation_summary_needs_no_scipy():
    import pandas as pd

    from netadapt.latency import summarize_validation

    frame = pd.DataFrame({"predicted_ms": [1.0, 2.0, 3.0, 4.0], "measured_ms": [1.0, 4.0, 9.0, 16.0]})
    frame["error_pct"] = 100 * (frame["predicted_ms"] - frame["measured_ms"]) / frame["measured_ms"]
    summary = summarize_validation(frame)
    assert summary["spearman"] == pytest.approx(1.0)  # monotone but not linear: rank correlation is exactly 1
    assert summary["within_5_pct"] == 0.25 and summary["samples"] == 4


# ------------------------------------------------------------ gauge and drift
class MachineStateMeasurer:
    """A Measurer whose figure is the model's size in kB times the machine's `state` (1.0: quiet).

    `slower` maps model sizes to an extra factor, for load that slows some
    units but not others (a change the reference units cannot see).
    """

    statistic = "min"

    def __init__(self) -> None:
        self.state = 1.0
        self.slower: dict[int, float] = {}

    def fingerprint(self) -> dict:
        return {"cpu": "state"}

    def measure(self, onnx_bytes: bytes) -> Measurement:
        size = len(onnx_bytes)
        return summarize([size / 1000 * self.state * self.slower.get(size, 1.0)])


def test_entries_measured_under_different_load_are_put_on_one_scale(tmp_path, tiny_spec):
    cut = tiny_spec.replace(last_conv=32, head_hidden=16)
    for references, consistent in ((3, True), (0, False)):
        measurer = MachineStateMeasurer()
        table = LatencyTable.open(tmp_path / f"lut-{references}.csv", measurer, SHAPE, reference_units=references)
        table.fill([tiny_spec], progress=False)
        measurer.state = 1.5  # the machine is busier when the cut's new units are measured
        table.fill([cut], progress=False)
        new_units = [u for u in table.units(cut) if u.key() not in {x.key() for x in table.units(tiny_spec)}]
        assert new_units
        for unit in table.units(tiny_spec) + new_units:
            size_ms = len(unit_onnx(unit, 1)) / 1000
            matches = table.entry_ms(unit) == pytest.approx(size_ms, rel=1e-6)
            assert matches or (not consistent and unit in new_units), unit.key()
        if consistent:
            assert len(table.reference_units()) == 3
            assert {round(table.entries[u.key()]["gauge"], 6) for u in new_units} == {1.5}
            reopened = LatencyTable.open(tmp_path / f"lut-{references}.csv", measurer, SHAPE)
            assert reopened.references == table.references  # the scale travels with the file
        else:
            # Without a gauge the busy moment is baked into the new entries: the failure the gauge prevents.
            assert all(table.entry_ms(u) == pytest.approx(1.5 * len(unit_onnx(u, 1)) / 1000) for u in new_units)


def test_a_batch_whose_references_ran_slow_alone_is_measured_again(tmp_path, tiny_spec):
    measurer = MachineStateMeasurer()
    table = LatencyTable.open(tmp_path / "lut.csv", measurer, SHAPE)
    table.fill([tiny_spec], progress=False)
    # The references' next sessions run 1.4x slow while the units beside them do not: a gauge of
    # 1.4 would put the new entries 1.4x too low. The batch is measured again and that try is used.
    reference_sizes = {len(unit_onnx(u, 1)) for u in table.reference_units()}
    slow_left = {"calls": len(reference_sizes)}
    plain = measurer.measure

    def measure(onnx_bytes):
        if len(onnx_bytes) in reference_sizes and slow_left["calls"] > 0:
            slow_left["calls"] -= 1
            return summarize([len(onnx_bytes) / 1000 * 1.4])
        return plain(onnx_bytes)

    measurer.measure = measure
    cut = tiny_spec.replace(head_hidden=16)
    table.fill([cut], progress=False)
    head = table.units(cut)[-1]
    assert slow_left["calls"] == 0
    assert table.entry_ms(head) == pytest.approx(len(unit_onnx(head, 1)) / 1000, rel=1e-6)
    assert table.entries[head.key()]["gauge"] == pytest.approx(1.0)


def test_whole_networks_are_gauged_like_the_entries(tmp_path, tiny_spec):
    measurer = MachineStateMeasurer()
    table = LatencyTable.open(tmp_path / "lut.csv", measurer, SHAPE)
    table.fill([tiny_spec], progress=False)
    measurer.state = 2.0
    (whole,), = table.measure_networks([tiny_spec])
    from netadapt.onnx_export import onnx_bytes

    assert whole.latency_ms == pytest.approx(len(onnx_bytes(m.build(tiny_spec), SHAPE)) / 1000, rel=1e-6)
    assert table.last_gauge == pytest.approx(2.0)


def test_drift_check_passes_a_uniformly_slower_machine_and_catches_a_changed_one(tmp_path, tiny_spec):
    measurer = MachineStateMeasurer()
    path = tmp_path / "lut.csv"
    table = LatencyTable.open(path, measurer, SHAPE)
    table.fill(first_iteration_specs(tiny_spec, granularity=16), progress=False)
    table.fit_correction([tiny_spec])
    measurer.state = 1.3  # the whole machine slower: the gauge absorbs it
    report = table.check_drift(sample=6)
    assert report.ok and report.median_abs_pct == pytest.approx(0.0, abs=1e-6) and report.gauge == pytest.approx(1.3)

    # Now every unit but the references runs 20% slower still: the table no longer describes this machine.
    reference_sizes = {len(unit_onnx(u, 1)) for u in table.reference_units()}
    for row in table.entries.values():
        size = len(unit_onnx(_unit(row), 1))
        if size not in reference_sizes:
            measurer.slower[size] = 1.2
    with pytest.raises(LatencyTableError, match="drift check failed") as error:
        LatencyTable.open(path, measurer, SHAPE).ensure_consistent("refuse", sample=6, echo=lambda _: None)
    assert str(path) in str(error.value) and "20.0%" in str(error.value)

    said: list[str] = []
    rebuilt = LatencyTable.open(path, measurer, SHAPE)
    entries = len(rebuilt)
    rebuilt.ensure_consistent("remeasure", sample=6, echo=said.append, progress=False)
    assert "drift check failed" in said[0] and f"re-measuring all {entries} entries" in said[0]
    assert len(rebuilt) == entries and not rebuilt.corrections  # corrections are fitted anew
    assert rebuilt.check_drift(sample=6).ok  # consistent with the machine as it is now
    assert LatencyTable.open(path, measurer, SHAPE).check_drift(sample=6).ok  # and saved so
    with pytest.raises(LatencyTableError, match="lut.drift_check must be one of"):
        rebuilt.ensure_consistent("sometimes")


def _unit(row):
    from netadapt.latency.table import _unit_from_row

    return _unit_from_row(row)


# ------------------------------------------------------------------ trajectories
def test_a_trajectory_cuts_one_group_at_a_time_down_to_the_floor():
    base = m.small(in_channels=1, num_classes=10)
    path = trajectory(base, random.Random(3))
    assert path[0] == base and path[-1] == lower_bound_spec(base, 8, 8) and len(path) > 10
    for before, after in zip(path, path[1:]):
        widths_before = {g.name: g.width for g in prunable_groups(before, 8, 8)}
        widths_after = {g.name: g.width for g in prunable_groups(after, 8, 8)}
        changed = [name for name in widths_before if widths_after[name] != widths_before[name]]
        assert len(changed) == 1 and widths_after[changed[0]] < widths_before[changed[0]]
        assert widths_after[changed[0]] % 8 == 0


def test_trajectory_samples_span_the_path_and_repeat_with_the_seed():
    base = m.small(in_channels=1, num_classes=10)
    specs = trajectory_specs(base, 16, random.Random(0))
    assert len(specs) == len(set(specs)) == 16 and base not in specs
    assert lower_bound_spec(base, 8, 8) in specs  # each path's sample ends at the floor
    assert specs == trajectory_specs(base, 16, random.Random(0))
    table_free_sizes = [sum(g.width for g in prunable_groups(s, 8, 8)) for s in specs[:8]]
    assert table_free_sizes == sorted(table_free_sizes, reverse=True)  # one path, from the top down


def test_lut_accuracy_out_files_are_written_atomically(tmp_path):
    import importlib.util
    from pathlib import Path

    import pandas as pd

    script = Path(__file__).parent.parent / "benchmarks" / "lut_accuracy.py"
    spec = importlib.util.spec_from_file_location("lut_accuracy", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "validation.csv"
    nets = tmp_path / "correction-nets-validation.csv"
    out.write_text("earlier results\n")
    nets.write_text("earlier networks\n")

    class DiesWhenWritten:  # a run killed while the rows are written
        def __str__(self) -> str:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        module.write_out(out, pd.DataFrame({"error_pct": [1.0, 2.0], "spec": ["a", DiesWhenWritten()]}),
                         pd.DataFrame({"raw_sum_ms": [1.0]}))
    assert out.read_text() == "earlier results\n" and nets.read_text() == "earlier networks\n"
    module.write_out(out, pd.DataFrame({"error_pct": [1.0]}), pd.DataFrame({"raw_sum_ms": [2.0]}))
    assert list(pd.read_csv(out)["error_pct"]) == [1.0] and list(pd.read_csv(nets)["raw_sum_ms"]) == [2.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [nets.name, out.name], "no temporary file is left"
