"""The suite's xdist scheduler: a quiet module runs last, alone, after the other workers finish."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent

INNER_CONFTEST = """
import pytest
from xdist_scheduling import make_scheduler, mark_worker_finished, wait_until_alone

def pytest_sessionfinish(session):
    mark_worker_finished(session.config)

@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    return make_scheduler(config, log, (), ("test_a_quiet.py",))

@pytest.fixture(scope="module")
def alone(request):
    wait_until_alone(request.config, timeout_s=60)
"""

# Records each test's worker, start and end in one JSON line per test.
RECORD = """
import json, os, time
from pathlib import Path

def record(name, seconds):
    start = time.time()
    time.sleep(seconds)
    line = dict(name=name, pid=os.getpid(), start=start, end=time.time())
    with open(Path(os.environ["RECORDS"]), "a") as out:
        out.write(json.dumps(line) + "\\n")
"""

# Collected first, so the scheduler must move it behind the busy module.
QUIET = """
import pytest
from record import record

pytestmark = pytest.mark.usefixtures("alone")

def test_quiet_one():
    record("quiet", 0.1)

def test_quiet_two():
    record("quiet", 0.1)
"""

BUSY = """
import pytest
from record import record

@pytest.mark.parametrize("index", range(8))
def test_busy(index):
    record("busy", 0.4)
"""


def test_quiet_module_runs_last_and_alone(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(INNER_CONFTEST)
    (suite / "record.py").write_text(RECORD)
    (suite / "test_a_quiet.py").write_text(QUIET)
    (suite / "test_b_busy.py").write_text(BUSY)
    records = tmp_path / "records.jsonl"
    env = {**os.environ, "RECORDS": str(records), "PYTHONPATH": os.pathsep.join([str(TESTS), str(suite)])}
    env.pop("PYTEST_XDIST_WORKER", None)  # the inner run is a controller of its own
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", "-q", str(suite)],
        cwd=suite, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    quiet = [row for row in rows if row["name"] == "quiet"]
    busy = [row for row in rows if row["name"] == "busy"]
    assert len(quiet) == 2 and len(busy) == 8
    assert len({row["pid"] for row in busy}) == 2, "the busy tests should be spread over both workers"
    assert len({row["pid"] for row in quiet}) == 1, "the quiet module should run whole on one worker"
    assert min(row["start"] for row in quiet) > max(row["end"] for row in busy)
