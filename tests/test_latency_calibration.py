"""Online calibration: whole-network figures injected into the calibration move the next prediction."""

from __future__ import annotations

import math
import sys

import pytest

from netadapt.latency import OnlineCalibration


def test_before_any_measurement_the_table_is_used_as_it_is():
    assert OnlineCalibration().apply(2.5) == 2.5


def test_one_point_scales_the_next_prediction_by_its_ratio():
    calibration = OnlineCalibration()
    calibration.observe(table_ms=1.0, measured_ms=1.2)  # the table says 1.0, the machine 1.2
    assert calibration.apply(0.8) == pytest.approx(0.96)


def test_by_default_the_latest_network_alone_calibrates_the_next_prediction():
    # The table's error changes along a search's path: +20% at the base, -10% one cut later.
    calibration = OnlineCalibration()
    calibration.observe(table_ms=1.0, measured_ms=1.2)
    calibration.observe(table_ms=0.9, measured_ms=0.81)
    assert calibration.factor == pytest.approx(0.9)
    assert calibration.apply(0.8) == pytest.approx(0.72)


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


def _replay_script():
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parent.parent / "benchmarks" / "calibration_replay.py"
    spec = importlib.util.spec_from_file_location("calibration_replay", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_replay_predicts_each_network_from_the_ones_before_it(tmp_path, capsys):
    import pandas as pd

    # The table is 20% high at the base and right afterwards; the quiet figures equal the steady ones.
    frame = pd.DataFrame({"iteration": [2, 0, 1], "table_predicted_ms": [0.8, 1.2, 1.0],
                          "in_search_ms": [0.8, 1.0, 1.0], "steady_ms": [0.8, 1.0, 1.0],
                          "remeasured_ms": [0.8, 1.0, 1.0]})
    path = tmp_path / "validate-run.csv"
    frame.to_csv(path, index=False)
    module = _replay_script()
    run = module.load_run(path)
    assert run.table_ms == [1.2, 1.0, 0.8], "rows in iteration order"
    # Window 1: network 1 is predicted 1.0 * (1.0/1.2); network 2 at 0.8 * (1.0/1.0).
    assert module.replay(run, 1) == pytest.approx([100 * (1 / 1.2 - 1) * -1, 0.0])
    # Window 2: network 2 takes the median of 1/1.2 and 1.0.
    assert module.replay(run, 2)[1] == pytest.approx(100 * (1 - (1 / 1.2 + 1.0) / 2))
    assert module.main([str(path), "--windows", "1", "2"]) == 0
    assert "window 2: median" in capsys.readouterr().out


def test_the_replay_refuses_a_csv_that_is_not_a_run_validation(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("iteration,error_pct\n0,1.0\n")
    with pytest.raises(SystemExit, match=r"other.csv: not a `lut validate --run` CSV \(no column in_search_ms"):
        _replay_script().load_run(path)
