"""The measuring process: real onnxruntime in a spawned child, which waits for the trainer to go idle."""

from __future__ import annotations

import contextlib
import os
import threading
import time

import pytest

import mobilenetv3 as m
from netadapt.benchmark import LocalMeasurer, Target
from netadapt.latency.isolation import IsolatedMeasurer, MeasuringProcessError, wait_until_idle
from netadapt.onnx_export import onnx_bytes

SHAPE = (1, 1, 32, 32)
FAST = dict(warmup_runs=1, min_runs=3, min_seconds=0.0)


def test_isolated_measurer_measures_in_another_process_with_the_same_fingerprint(tiny_spec):
    target = Target.from_settings(SHAPE, **FAST)
    model = onnx_bytes(m.build(tiny_spec), SHAPE)
    with IsolatedMeasurer(target) as measurer:
        assert measurer._process.pid != os.getpid() and measurer._process.poll() is None
        assert measurer.fingerprint() == LocalMeasurer(target).fingerprint()
        one, two = measurer.measure_many([model, model])
        assert one.runs >= 3 and one.latency_ms > 0 and two.latency_ms > 0
        assert measurer.measure(model).fingerprint == target.fingerprint()
        process = measurer._process
    assert process.poll() is not None  # closed with the block


def test_a_model_the_child_cannot_run_is_a_clear_error():
    with IsolatedMeasurer(Target.from_settings(SHAPE, **FAST)) as measurer:
        with pytest.raises(MeasuringProcessError, match="measuring failed in the measuring process"):
            measurer.measure(b"not an onnx model")
        # The process survives a bad model and measures the next one.
        assert measurer._process.poll() is None


@contextlib.contextmanager
def busy_for(seconds: float):
    """A thread of this process burns a core for `seconds`, as a trainer's threads would."""
    stop = time.monotonic() + seconds

    def spin() -> None:
        while time.monotonic() < stop:
            pass

    busy = threading.Thread(target=spin)
    busy.start()
    try:
        yield
    finally:
        busy.join()


def test_waits_while_the_parent_burns_cpu():
    with busy_for(0.6):
        waited, idle = wait_until_idle(os.getpid(), timeout_s=5.0)
    assert idle and waited >= 0.4  # not before the spinning thread stopped
    waited, idle = wait_until_idle(os.getpid(), timeout_s=5.0)
    assert idle and waited < 0.5  # an idle process is measured at once (one window)


def test_gives_up_waiting_after_the_timeout_and_says_so():
    with busy_for(1.5):
        waited, idle = wait_until_idle(os.getpid(), timeout_s=0.3)
    assert not idle and 0.3 <= waited < 1.0
