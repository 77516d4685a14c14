import json

import pandas as pd
import pytest

from netadapt.errors import RunDirError
from netadapt.rundir import HISTORY_COLUMNS, HistoryRow, RunDir, SearchState


def test_create_refuses_an_existing_run(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create("seed: 0\n")
    assert run.config_path.read_text() == "seed: 0\n"
    with pytest.raises(RunDirError, match="already holds a run; resume it with --resume"):
        RunDir(tmp_path / "run").create("seed: 1\n")
    assert run.config_path.read_text() == "seed: 0\n", "the existing config must survive"


def test_history_append_truncates_uncommitted_iterations(tmp_path):
    run = RunDir(tmp_path)
    run.append_history([HistoryRow(0, "base", status="done", measured_ms=1.0)])
    run.append_history([HistoryRow(1, "candidate", group="head", status="ok")])
    # Iteration 1 was killed before its commit; its redo replaces the leftover row.
    run.append_history([HistoryRow(1, "iteration", group="head", status="done")],
                       keep_through_iteration=0)
    history = run.read_history()
    assert list(history.columns) == HISTORY_COLUMNS
    assert list(zip(history["iteration"], history["kind"])) == [(0, "base"), (1, "iteration")]


STATE = SearchState(iteration=2, base_ms=1.0, base_predicted_ms=1.1, budget_ms=0.7, measured_ms=0.8,
                    predicted_ms=0.82, holdout_acc=0.85, base_figures=(1.0, 1.02), holdout_loss=0.4,
                    calibration=((1.1, 1.0), (0.9, 0.8)))


def test_state_round_trip_and_corruption(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_state() is None
    run.write_state(STATE)
    assert run.read_state() == STATE
    run.state_path.write_text('{"iteration": ')
    with pytest.raises(RunDirError, match="state.json: unreadable run state"):
        run.read_state()
    run.state_path.write_bytes(b"\xff\xfe{not utf-8")
    with pytest.raises(RunDirError, match="state.json: unreadable run state"):
        run.read_state()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"iteration": "abc"}, "iteration must be an integer >= 0, got 'abc'"),
        ({"iteration": True}, "iteration must be an integer"),
        ({"finished": "no"}, "finished must be true or false"),
        ({"measured_ms": float("nan")}, "measured_ms must be a finite positive number, got nan"),
        ({"budget_ms": -1}, "budget_ms must be a finite positive number"),
        ({"holdout_acc": 1.5}, r"holdout_acc must be in \[0, 1\]"),
        ({"base_figures": [1.0, "x"]}, "base_figures must be a list of finite positive numbers"),
        ({"calibration": [[1.0]]}, "calibration must be a list of"),
        ({"stop_reason": 3}, "stop_reason must be text or null"),
        ({"surprise": 1}, r"unknown field\(s\) \['surprise'\]"),
        ({"x" * 500: 1}, r"unknown field\(s\) \['xxx.*\.\.\.;"),  # a long value is cut short
    ],
)
def test_a_malformed_state_field_is_refused_by_name(tmp_path, change, message):
    run = RunDir(tmp_path)
    data = {"version": 1, **STATE.to_dict(), **change}
    run.state_path.write_text(json.dumps(data))
    with pytest.raises(RunDirError, match=f"{run.state_path}: {message}"):
        run.read_state()


def test_a_state_without_a_field_is_refused_by_name(tmp_path):
    run = RunDir(tmp_path)
    data = {"version": 1, **STATE.to_dict()}
    del data["iteration"], data["measured_ms"]
    run.state_path.write_text(json.dumps(data))
    with pytest.raises(RunDirError, match=r"missing field\(s\) \['iteration', 'measured_ms'\]"):
        run.read_state()


def test_corrupt_history_names_the_file(tmp_path):
    run = RunDir(tmp_path)
    run.history_path.write_text("iteration,kind\n0,base\n")
    with pytest.raises(RunDirError, match=r"history.csv: missing columns"):
        run.read_history()


def test_require_existing(tmp_path):
    with pytest.raises(RunDirError, match="not a run directory"):
        RunDir(tmp_path / "nothing").require_existing()


def test_history_keeps_empty_strings_as_missing(tmp_path):
    run = RunDir(tmp_path)
    run.append_history([HistoryRow(0, "base", group="", status="done")])
    assert pd.isna(run.read_history()["group"].iloc[0])
