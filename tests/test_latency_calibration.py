"""Online calibration: whole-network figures injected into the calibration move the next prediction."""

from __future__ import annotations

import math

import pytest

from netadapt.latency import OnlineCalibration


def test_before_any_measurement_the_table_is_used_as_it_is():
    assert OnlineCalibration().apply(2.5) == 2.5


def test_the_latest_ratio_scales_the_next_prediction():
    calibration = OnlineCalibration(decay=0.0)
    calibration.observe(table_ms=1.0, measured_ms=1.2)  # the table says 1.0, the machine 1.2
    assert calibration.apply(0.8) == pytest.approx(0.96)
    calibration.observe(table_ms=0.8, measured_ms=0.72)  # now the table overshoots by 10/9
    assert calibration.apply(0.7) == pytest.approx(0.63)


def test_older_points_weigh_by_the_decay():
    calibration = OnlineCalibration(decay=0.5)
    calibration.observe(1.0, 2.0)
    calibration.observe(1.0, 1.0)
    # log factor = (1 * log 1 + 0.5 * log 2) / 1.5
    assert calibration.factor == pytest.approx(math.exp(0.5 * math.log(2.0) / 1.5))


@pytest.mark.parametrize("table_ms, measured_ms", [(0.0, 1.0), (1.0, -1.0), (math.nan, 1.0), (1.0, math.inf)])
def test_impossible_figures_are_refused(table_ms, measured_ms):
    with pytest.raises(ValueError, match="positive finite"):
        OnlineCalibration().observe(table_ms, measured_ms)
