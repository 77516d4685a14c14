import pandas as pd
import pytest

from netadapt.errors import RunDirError
from netadapt.rundir import HISTORY_COLUMNS, RunDir


def test_create_refuses_an_existing_run(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create("seed: 0\n")
    assert run.config_path.read_text() == "seed: 0\n"
    with pytest.raises(RunDirError, match="already holds a run; resume it with --resume"):
        RunDir(tmp_path / "run").create("seed: 1\n")
    assert run.config_path.read_text() == "seed: 0\n", "the existing config must survive"


def test_history_append_truncates_uncommitted_iterations(tmp_path):
    run = RunDir(tmp_path)
    run.append_history([{"iteration": 0, "kind": "base", "status": "done", "measured_ms": 1.0}])
    run.append_history([{"iteration": 1, "kind": "candidate", "group": "head", "status": "ok"}])
    # Iteration 1 was killed before its commit; its redo replaces the leftover row.
    run.append_history([{"iteration": 1, "kind": "iteration", "group": "head", "status": "done"}],
                       keep_through_iteration=0)
    history = run.read_history()
    assert list(history.columns) == HISTORY_COLUMNS
    assert list(zip(history["iteration"], history["kind"])) == [(0, "base"), (1, "iteration")]


def test_state_round_trip_and_corruption(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_state() is None
    run.write_state({"iteration": 2, "finished": False})
    assert run.read_state() == {"version": 1, "iteration": 2, "finished": False}
    run.state_path.write_text('{"iteration": ')
    with pytest.raises(RunDirError, match="state.json: unreadable run state"):
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
    run.append_history([{"iteration": 0, "kind": "base", "group": "", "status": "done"}])
    assert pd.isna(run.read_history()["group"].iloc[0])
