import dataclasses
import json
import os

import pandas as pd
import pytest

from mobilenetv3 import build
from netadapt.cli.main import main
from netadapt.errors import RunDirError
from netadapt.family import run_members
from netadapt.rundir import HISTORY_COLUMNS, HistoryRow, RunDir, SearchState
from netadapt.checkpoint import save_checkpoint


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


def test_a_state_with_a_repeated_field_is_refused(tmp_path):
    run = RunDir(tmp_path)
    text = json.dumps({"version": 1, **STATE.to_dict()})
    run.state_path.write_text(text.replace('"iteration": 2', '"iteration": 2, "iteration": 7'))
    with pytest.raises(RunDirError, match=rf"{run.state_path}: unreadable run state \(key 'iteration' is repeated"):
        run.read_state()


@pytest.fixture
def committed_run(tmp_path, tiny_spec) -> RunDir:
    """A run directory as a search leaves it after one iteration: base, a candidate, the iteration."""
    run = RunDir(tmp_path / "run")
    run.create("seed: 0\n")
    model = build(tiny_spec)
    for iteration in (0, 1):
        save_checkpoint(run.checkpoint_path(iteration), model)
        tiny_spec.save(run.spec_path(iteration))
    run.append_history([
        HistoryRow(0, "base", group="", status="done", predicted_ms=1.1, table_predicted_ms=1.1, measured_ms=1.0,
                   holdout_acc=0.8, test_acc=0.8, checkpoint="checkpoints/iter-000.pt"),
        HistoryRow(1, "candidate", group="head", width_before=16, width_after=8, status="ok", measured_ms=0.9),
        HistoryRow(1, "iteration", group="head", width_before=16, width_after=8, status="done", predicted_ms=0.9,
                   measured_ms=0.85, holdout_acc=0.79, test_acc=0.78, checkpoint="checkpoints/iter-001.pt"),
    ])
    run.write_state(dataclasses.replace(STATE, iteration=1))
    return run


def edit_history(run: RunDir, row: int, column: str, value: str) -> None:
    frame = pd.read_csv(run.history_path, dtype=str, keep_default_na=False)
    frame.loc[row, column] = value
    frame.to_csv(run.history_path, index=False)


def test_a_committed_run_reads_back(committed_run):
    members = run_members(committed_run)
    assert [(m.iteration, m.measured_ms, m.holdout_acc) for m in members] == [(0, 1.0, 0.8), (1, 0.85, 0.79)]
    assert members[1].checkpoint == committed_run.path / "checkpoints" / "iter-001.pt"
    assert [n.iteration for n in committed_run.iteration_networks()] == [0, 1]
    history = committed_run.read_history()
    assert history["iteration"].dtype == "int64" and history["width_before"].tolist()[1:] == [16, 16]


@pytest.mark.parametrize(
    "row, column, value, message",
    [
        (2, "measured_ms", "abc", r"row 3 \(line 4\), column measured_ms: expected a finite number > 0, got 'abc'"),
        (1, "holdout_acc", "x" * 500, r"row 2 \(line 3\), column holdout_acc: expected a number in \[0, 1\], got 'xxx.*\.\.\.$"),
        # Numbers out of their column's range, which state.json refuses too.
        (2, "measured_ms", "inf", r"row 3 \(line 4\), column measured_ms: expected a finite number > 0, got 'inf'"),
        (2, "measured_ms", "-1", r"column measured_ms: expected a finite number > 0, got '-1'"),
        (0, "predicted_ms", "nan", r"column predicted_ms: expected a finite number > 0, got 'nan'"),
        (2, "holdout_acc", "5", r"row 3 \(line 4\), column holdout_acc: expected a number in \[0, 1\], got '5'"),
        (1, "measure_s", "-0.5", r"column measure_s: expected a finite number >= 0, got '-0.5'"),
        (1, "iteration", "one", r"row 2 \(line 3\), column iteration: expected an integer >= 0, got 'one'"),
        (1, "iteration", "-1", r"column iteration: expected an integer >= 0, got '-1'"),
        (2, "width_after", "8.5", r"row 3 \(line 4\), column width_after: expected an integer, got '8.5'"),
        (0, "kind", "bogus", r"row 1 \(line 2\), column kind: expected one of \['base', 'candidate'"),
        (0, "iteration", "", r"column iteration: expected an integer >= 0, got an empty cell"),
    ],
)
def test_a_history_cell_of_the_wrong_type_is_refused_by_row_and_column(committed_run, capsys, row, column, value,
                                                                        message):
    edit_history(committed_run, row, column, value)
    with pytest.raises(RunDirError, match=message):
        committed_run.read_history()
    # `report` and `export` read the history first: the same message, no traceback.
    assert main(["report", str(committed_run.path)]) == 2
    assert f"{committed_run.history_path}: row {row + 1}" in capsys.readouterr().err


def test_a_committed_row_without_its_figure_is_refused(committed_run):
    edit_history(committed_run, 2, "measured_ms", "")
    with pytest.raises(RunDirError, match=r"history.csv: row 3, column measured_ms: empty, but iteration 1"):
        run_members(committed_run)
    with pytest.raises(RunDirError, match=r"history.csv: row 3, column measured_ms: empty"):
        committed_run.iteration_networks()


@pytest.mark.parametrize("name", ["absolute", "../outside.pt", "checkpoints/../../outside.pt", "checkpoints/link.pt"])
def test_checkpoint_paths_are_confined_to_the_run_directory(committed_run, tmp_path, capsys, name):
    outside = tmp_path / "outside.pt"
    outside.write_bytes((committed_run.path / "checkpoints" / "iter-001.pt").read_bytes())
    if name == "absolute":
        name = str(outside)
    if name == "checkpoints/link.pt":
        os.symlink(outside, committed_run.path / "checkpoints" / "link.pt")
    edit_history(committed_run, 2, "checkpoint", name)
    with pytest.raises(RunDirError, match=r"row 3, column checkpoint: .* is outside the run directory"):
        run_members(committed_run)
    assert main(["export", str(committed_run.path), "--out", str(tmp_path / "family")]) == 2
    assert "is outside the run directory" in capsys.readouterr().err
    assert not (tmp_path / "family").exists()


@pytest.mark.parametrize("name, reason", [("c" * 300 + ".pt", "File name too long"), ("checkpoints/iter\x00.pt", "null byte")])
def test_a_checkpoint_name_the_file_system_cannot_look_up_is_named(committed_run, tmp_path, capsys, name, reason):
    edit_history(committed_run, 2, "checkpoint", name)
    with pytest.raises(RunDirError, match=rf"row 3, column checkpoint: '.* cannot be looked up \(.*{reason}"):
        run_members(committed_run)
    assert main(["export", str(committed_run.path), "--out", str(tmp_path / "family")]) == 2
    err = capsys.readouterr().err
    assert "cannot be looked up" in err and "Traceback" not in err


def test_a_missing_checkpoint_is_named(committed_run):
    (committed_run.path / "checkpoints" / "iter-001.pt").unlink()
    with pytest.raises(RunDirError, match=r"row 3, column checkpoint: 'checkpoints/iter-001.pt' is missing from"):
        run_members(committed_run)


@pytest.mark.parametrize(
    "text, message",
    [
        ("blocks: 5\n", r"spec is missing field\(s\)"),
        ("stem: [unclosed\n", "not valid YAML"),
        ("7\n", "a spec must be a mapping, got int"),
    ],
)
def test_a_spec_file_that_is_not_a_spec_is_refused_by_name(committed_run, text, message):
    committed_run.spec_path(0).write_text(text)
    with pytest.raises(RunDirError, match=f"{committed_run.spec_path(0)}: {message}"):
        committed_run.read_spec(0)
    with pytest.raises(RunDirError, match=f"{committed_run.spec_path(0)}: {message}"):
        committed_run.iteration_networks()
    committed_run.spec_path(0).unlink()
    with pytest.raises(RunDirError, match=r"iter-000.spec.yaml: missing; iteration 0"):
        committed_run.read_spec(0)
