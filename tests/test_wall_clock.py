"""Wall-clock checks: a prediction against a measurement on this machine.

The scheduler in `tests/xdist_scheduling.py` runs this module last, on one
worker, after every other worker has exited; on 2 cores a neighbour's training
run moves a latency figure by 10% or more.
"""

from __future__ import annotations

import warnings

import pytest

import mobilenetv3 as m
from netadapt.benchmark import LocalMeasurer, Target, best_of
from netadapt.latency import LatencyTable, calibration_specs

pytestmark = pytest.mark.usefixtures("alone_on_the_machine")


def test_predict_full_large_within_10_percent_of_measured(tmp_path):
    # The one wall-clock assertion the issue asks for, in the configuration
    # `netadapt lut build` leaves: the correction fitted on the calibration
    # networks (the base, the smallest network of its search space, random
    # cuts), measured whole and gauged as the CLI measures them. The figure
    # checked is a second, independent session of the full network, measured
    # side by side with the calibration networks (interleaved, best of three
    # passes), so a burst of load moves both sides of the comparison alike; the
    # gauge puts them on the scale of the table's entries, which were measured
    # a minute earlier.
    shape = (1, 3, 224, 224)
    target = Target.from_settings(shape, warmup_runs=3, min_runs=20, min_seconds=0.2, windows=5, priority="realtime")
    measurer = LocalMeasurer(target)
    table = LatencyTable.open(tmp_path / "lut.csv", measurer, shape)
    base = m.large()
    calibration = calibration_specs(base, 4)
    assert calibration[0] == base
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no permission for realtime: measured at normal priority
        table.fill(calibration, progress=False, passes=3)
        *calibration_measured, check = best_of(table.measure_networks([*calibration, base], passes=3))
    correction = table.fit_correction(calibration, measured=calibration_measured)
    figures = ", ".join(f"{one.latency_ms:.3f}" for one in calibration_measured)
    assert table.predict_ms(base) == pytest.approx(check.latency_ms, rel=0.10), (
        f"correction {correction.form}: {correction.describe()}; calibration networks measured {figures} ms; "
        f"raw sum of the base's units {table.raw_sum_ms(base):.3f} ms; machine at {table.last_gauge:.3f}x the table's state")
