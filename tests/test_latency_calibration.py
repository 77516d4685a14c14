"""Online calibration: whole-network figures injected into the calibration move the next prediction."""

from __future__ import annotations

import math

import pytest

from netadapt.latency import OnlineCalibration


def test_before_any_measurement_the_table_is_used_as_it_is():
    assert OnlineCalibration().apply(2.5) == 2.5


def test_one_point_scales_the_next_prediction_by_its_ratio():
    calibration = OnlineCalibration()
    calibration.observe(table_ms=1.0, measured_ms=1.2)  # the table says 1.0, the machine 1.2
    assert calibration.apply(0.8) == pytest.approx(0.96)


def test_the_median_of_the_latest_points_outvotes_one_bad_reading():
    calibration = OnlineCalibration(window=3)
    for measured in (1.10, 1.10, 1.60):  # the last one caught a slow stretch
        calibration.observe(1.0, measured)
    assert calibration.factor == pytest.approx(1.10)
    for _ in range(2):  # the machine really is slower now: the window follows it
        calibration.observe(1.0, 1.60)
    assert calibration.factor == pytest.approx(1.60)
    with pytest.raises(ValueError, match="window"):
        OnlineCalibration(window=0)


@pytest.mark.parametrize("table_ms, measured_ms", [(0.0, 1.0), (1.0, -1.0), (math.nan, 1.0), (1.0, math.inf)])
def test_impossible_figures_are_refused(table_ms, measured_ms):
    with pytest.raises(ValueError, match="positive finite"):
        OnlineCalibration().observe(table_ms, measured_ms)
