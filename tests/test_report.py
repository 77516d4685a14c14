"""Comparing a NetAdapt family with a width-multiplier baseline (`compare_to_baseline`).

Hand-made frames only: the headline benchmark's figures come from training
and measuring, the comparison's logic does not.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from netadapt.report import COMPARISON_COLUMNS, compare_to_baseline


def frame(*rows: tuple[str, float, float]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["name", "measured_ms", "test_acc"])


FAMILY = frame(("fast", 0.10, 0.80), ("mid", 0.20, 0.85), ("slow", 0.30, 0.90))


def compare_one(point: tuple[str, float, float], family: pd.DataFrame = FAMILY) -> pd.Series:
    result = compare_to_baseline(family, frame(point))
    assert list(result.columns) == COMPARISON_COLUMNS and len(result) == 1
    return result.iloc[0]


def test_a_dominated_point():
    row = compare_one(("x0.75", 0.25, 0.84))
    # matched accuracy: "mid" is the fastest member with >= 84%
    assert row["matched_acc_member"] == "mid" and row["speedup"] == pytest.approx(0.25 / 0.20)
    # matched latency: "mid" is the most accurate member at <= 0.25 ms
    assert row["matched_ms_member"] == "mid" and row["acc_gain"] == pytest.approx(0.01)
    assert row["dominated"]


def test_equal_latency_and_accuracy_still_dominates():
    row = compare_one(("x0.5", 0.20, 0.85))
    assert row["dominated"] and row["speedup"] == pytest.approx(1.0) and row["acc_gain"] == pytest.approx(0.0)


def test_a_point_no_member_dominates():
    # faster than "mid" and more accurate than "fast": neither figure is matched by one member
    row = compare_one(("x0.5", 0.15, 0.82))
    assert row["matched_acc_member"] == "mid" and row["speedup"] == pytest.approx(0.15 / 0.20)
    assert row["matched_ms_member"] == "fast" and row["acc_gain"] == pytest.approx(-0.02)
    assert not row["dominated"]


def test_no_member_accurate_enough_leaves_the_speedup_undefined():
    row = compare_one(("x1.0", 0.50, 0.95))
    assert row["matched_acc_member"] == "" and math.isnan(row["speedup"]) and math.isnan(row["matched_acc_ms"])
    assert row["matched_ms_member"] == "slow" and row["acc_gain"] == pytest.approx(-0.05)
    assert not row["dominated"]


def test_no_member_fast_enough_leaves_the_gain_undefined():
    row = compare_one(("x0.35", 0.05, 0.70))
    assert row["matched_ms_member"] == "" and math.isnan(row["acc_gain"]) and math.isnan(row["matched_ms_acc"])
    assert row["matched_acc_member"] == "fast" and row["speedup"] == pytest.approx(0.5)
    assert not row["dominated"]


def test_one_row_per_point_in_the_baseline_order():
    baseline = frame(("x1.0", 0.50, 0.95), ("x0.35", 0.05, 0.70), ("x0.75", 0.25, 0.84))
    result = compare_to_baseline(FAMILY, baseline)
    assert list(result["name"]) == ["x1.0", "x0.35", "x0.75"]
    assert list(result["dominated"]) == [False, False, True]


def test_an_empty_family_matches_nothing():
    row = compare_one(("x0.5", 0.20, 0.85), family=frame())
    assert math.isnan(row["speedup"]) and math.isnan(row["acc_gain"]) and not row["dominated"]


def test_the_plot_is_written_through_a_unique_temporary_name(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is part of the dev extra")
    import os

    from netadapt.report import plot_pareto

    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    plot = tmp_path / "run" / "pareto.png"
    plot.parent.mkdir()
    # Once the plot went through the fixed name .pareto.png.tmp.png: whoever put a link there chose the target.
    os.symlink(victim, plot.parent / ".pareto.png.tmp.png")
    table = pd.DataFrame({"measured_ms": [1.0, 2.0], "test_acc": [0.8, 0.9], "pareto": [True, True]})
    assert plot_pareto(table, None, plot)
    assert victim.read_text() == "keep"
    assert not plot.is_symlink() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in plot.parent.iterdir()) == [".pareto.png.tmp.png", "pareto.png"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("name,measured_ms,test_acc\nx0.5,fast,0.5\n", "row 1, column measured_ms: expected a finite positive number, got 'fast'"),
        ("name,measured_ms,test_acc\nx0.5,0.1,0.5\nx1.0,0.2,87\n", r"row 2, column test_acc: expected a number in \[0, 1\]"),
        (b"\xff\xfe\x00binary", "unreadable baseline"),
    ],
)
def test_a_malformed_baseline_is_refused_by_row_and_column(tmp_path, text, message):
    from netadapt.errors import RunDirError
    from netadapt.report import read_baseline

    path = tmp_path / "baseline.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(RunDirError, match=f"{path}: {message}"):
        read_baseline(tmp_path)
