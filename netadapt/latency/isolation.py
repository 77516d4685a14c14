"""Measurement isolated from training: a measuring process that does nothing else.

A search fine-tunes candidates with torch and then measures the winner.
Measured in the training process, right after a fine-tune, a network ran a
median 11% and up to 28% slower than in a quiet separate process: torch's
thread pool is still spinning or finishing work, and the training has
filled the caches and the allocator with its own data. `IsolatedMeasurer`
runs onnxruntime in a spawned child process that holds no model and no
data of the search, and before every measurement it waits until the
parent process (the trainer) has been idle for a moment, read from the
parent's CPU time in /proc. The parent blocks while it waits for the
answer, so training and measuring never overlap.

Why a process and not a pause in the same process: a pause cannot undo the
cache and allocator state the training left, and the wait-for-idle check
needs a vantage point outside the trainer (docs/latency-model.md,
"Isolation").
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from netadapt.benchmark import LocalMeasurer, Measurement, Target, measure_many
from netadapt.errors import NetadaptError

__all__ = ["IsolatedMeasurer", "MeasuringProcessError", "wait_until_idle"]

# The parent counts as idle when it used at most this share of one core over a window.
IDLE_SHARE = 0.1
IDLE_WINDOW_S = 0.1
IDLE_TIMEOUT_S = 5.0


class MeasuringProcessError(NetadaptError):
    """The measuring process failed or died."""


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of all threads of process `pid`, or None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command name: state is field 3, utime field 14, stime field 15 (1-based, proc(5)).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(pid: int, share: float = IDLE_SHARE, window_s: float = IDLE_WINDOW_S,
                    timeout_s: float = IDLE_TIMEOUT_S) -> tuple[float, bool]:
    """Wait until process `pid` used at most `share` of a core over `window_s`; returns (waited s, idle).

    `idle` is False when the timeout ran out first (the measurement then
    goes ahead, and the caller can report it), or True at once where /proc
    is not available.
    """
    start = time.monotonic()
    before = _cpu_seconds(pid)
    if before is None:
        return 0.0, True
    while True:
        time.sleep(window_s)
        after = _cpu_seconds(pid)
        if after is None or after - before <= share * window_s + 1e-9:
            return time.monotonic() - start, True
        if time.monotonic() - start >= timeout_s:
            return time.monotonic() - start, False
        before = after


def _serve(parent_pid: int) -> None:
    """The measuring process: read (target) then ("measure", models) requests from stdin, answer on stdout.

    Each answer is ("ok", measurements, waited_s, idle) or ("error", text, 0, True);
    pickle frames itself, so one `load` reads exactly one request.
    """
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing printed by a library may corrupt the answers
    target = pickle.load(requests)
    while True:
        try:
            request = pickle.load(requests)
        except EOFError:
            return
        if request[0] == "stop":
            return
        try:
            waited, idle = wait_until_idle(parent_pid)
            answer = ("ok", measure_many(request[1], target), waited, idle)
        except Exception as error:  # reported to the parent, which raises it with this text
            answer = ("error", f"{type(error).__name__}: {error}", 0.0, True)
        pickle.dump(answer, answers)
        answers.flush()


class IsolatedMeasurer(LocalMeasurer):
    """A `LocalMeasurer` that measures in its own process.

    The process is `python -m netadapt.latency.isolation`, started afresh
    (not forked: forking a process that runs torch's threads is unsafe, and
    multiprocessing's spawn would import the caller's main script again).
    The fingerprint is the target's, as `LocalMeasurer`'s: the figures are of
    the same machine and settings, only taken away from the training. Call
    `close()` (or use it as a context manager) to end the process.
    """

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self.waited_s = 0.0  # total time spent waiting for the trainer to go idle
        self.busy_measurements = 0  # measurements taken although the trainer never went idle
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "netadapt.latency.isolation", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
        )
        self._send(target)

    def _send(self, message: Any) -> None:
        assert self._process.stdin is not None
        pickle.dump(message, self._process.stdin)
        self._process.stdin.flush()

    def measure(self, onnx_bytes: bytes) -> Measurement:
        return self.measure_many([onnx_bytes])[0]

    def measure_many(self, models: list[bytes]) -> list[Measurement]:
        """Measure `models` interleaved in the measuring process (see `netadapt.benchmark.measure_many`)."""
        if self._process.poll() is not None:
            raise MeasuringProcessError(f"the measuring process has ended (exit code {self._process.returncode})")
        try:
            self._send(("measure", list(models)))
            status, payload, waited, idle = pickle.load(self._process.stdout)
        except (EOFError, OSError, pickle.UnpicklingError) as error:
            raise MeasuringProcessError(f"the measuring process died while measuring ({error or 'no answer'})") from None
        self.waited_s += waited
        self.busy_measurements += not idle
        if status != "ok":
            raise MeasuringProcessError(f"measuring failed in the measuring process: {payload}")
        return payload

    def close(self) -> None:
        """End the measuring process (idempotent)."""
        if self._process.poll() is None:
            try:
                self._send(("stop",))
                self._process.stdin.close()
            except OSError:
                pass
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None and not stream.closed:
                stream.close()

    def __enter__(self) -> "IsolatedMeasurer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"IsolatedMeasurer({self.target!r})"


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
