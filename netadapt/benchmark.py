"""ONNX -> latency: measure a model on a target with onnxruntime.

A `Target` is data: the execution provider, thread counts, graph
optimisation level, input shape and how long to measure. Its
`fingerprint()` names everything about the machine and session that changes
a latency figure; every `Measurement` and every lookup table carries it, so
figures from different targets are never mixed.

Measuring builds the session once, warms it up, then times `session.run`
(with a pre-allocated input) until both a minimum number of runs and a
minimum total time are reached. The median is the figure the rest of the
project uses: one preempted run on a shared machine moves the mean, not the
median.

`Measurer` is the seam for remote devices: anything with `fingerprint()` and
`measure(onnx_bytes)` can stand in for `LocalMeasurer`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np
import onnxruntime as ort

from mobilenetv3 import NetSpec, build
from netadapt.config import MeasureConfig, TargetConfig
from netadapt.errors import ConfigError
from netadapt.onnx_export import onnx_bytes

__all__ = [
    "LocalMeasurer",
    "Measurement",
    "Measurer",
    "Target",
    "cpu_model",
    "measure",
    "measure_best_of",
    "measure_spec",
    "measure_spec_ms",
    "scheduling_priority",
    "summarize",
    "time_session",
]

PRIORITIES = ("normal", "high", "realtime")

_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux), or the best the platform offers."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@dataclass(frozen=True)
class Target:
    """Where and how a model is measured.

    The first six fields are part of the fingerprint; the measuring settings
    (warm-up and run counts) change how precise a figure is, not what it is,
    so they are not.
    """

    provider: str = "CPUExecutionProvider"  # any name in onnxruntime.get_available_providers()
    threads: int = 1  # intra-op threads; 1 gives mobile-like, low-noise numbers
    inter_op_threads: int = 1  # only matters for parallel graph execution
    optimization_level: str = "all"  # "disable", "basic", "extended" or "all"
    input_shape: tuple[int, int, int, int] = (1, 3, 224, 224)  # N, C, H, W
    # Spinning workers shave wake-up latency off multi-threaded runs at the cost
    # of burning CPU; it is onnxruntime's default and irrelevant at 1 thread.
    allow_spinning: bool = True
    warmup_runs: int = 10
    min_runs: int = 30  # time at least this many runs ...
    min_seconds: float = 0.5  # ... and for at least this long
    max_runs: int = 10_000  # an upper bound for very fast models
    # Scheduling of the measuring thread while the session is built and timed:
    # "normal"; "high" (nice -10); "realtime" (SCHED_FIFO, Linux and root only).
    # On a machine shared with other jobs, time slicing inflates the median;
    # "realtime" gives the measured thread a core (see benchmarks/lut_accuracy.py).
    priority: str = "normal"

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        if len(self.input_shape) != 4 or min(self.input_shape) < 1:
            raise ConfigError(f"target input shape must be 4 positive ints (N, C, H, W), got {self.input_shape}")
        if self.optimization_level not in _OPTIMIZATION_LEVELS:
            raise ConfigError(
                f"target.optimization_level must be one of {sorted(_OPTIMIZATION_LEVELS)}, "
                f"got {self.optimization_level!r}"
            )
        if self.threads < 0 or self.inter_op_threads < 0:
            raise ConfigError(f"target.threads and inter_op_threads must be >= 0, got {self.threads}, {self.inter_op_threads}")
        if self.priority not in PRIORITIES:
            raise ConfigError(f"measure.priority must be one of {list(PRIORITIES)}, got {self.priority!r}")
        if self.warmup_runs < 0 or self.min_runs < 1 or self.max_runs < self.min_runs or self.min_seconds < 0:
            raise ConfigError(
                "measure: need warmup_runs >= 0, min_runs >= 1, max_runs >= min_runs and min_seconds >= 0; got "
                f"{self.warmup_runs}, {self.min_runs}, {self.max_runs}, {self.min_seconds}"
            )

    def require_provider_here(self) -> None:
        """Refuse a provider this machine's onnxruntime lacks. Not part of validation:
        a remote device may have providers (CoreML, QNN, ...) the host does not."""
        available = ort.get_available_providers()
        if self.provider not in available:
            raise ConfigError(f"target.provider {self.provider!r} is not available here; onnxruntime lists {available}")

    @classmethod
    def from_config(
        cls,
        target_cfg: TargetConfig,
        measure_cfg: MeasureConfig,
        input_shape: tuple[int, int, int, int],
    ) -> "Target":
        """Build a target from the config's `target` and `measure` sections.

        Args:
            target_cfg: provider, threads and optimisation level.
            measure_cfg: warm-up and run counts.
            input_shape: (N, C, H, W); N is replaced by `target_cfg.batch`.
        """
        shape = (target_cfg.batch, *tuple(input_shape)[1:])
        return cls(
            provider=target_cfg.provider,
            threads=target_cfg.threads,
            inter_op_threads=target_cfg.inter_op_threads,
            optimization_level=target_cfg.optimization_level,
            input_shape=shape,  # type: ignore[arg-type]
            allow_spinning=target_cfg.allow_spinning,
            warmup_runs=measure_cfg.warmup_runs,
            min_runs=measure_cfg.min_runs,
            min_seconds=measure_cfg.min_seconds,
            max_runs=measure_cfg.max_runs,
            priority=measure_cfg.priority,
        )

    def with_settings(self, **changes: Any) -> "Target":
        return dataclasses.replace(self, **changes)

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes a latency figure: machine, runtime and session settings.

        The input's spatial size and channels are not in it: lookup-table keys
        carry them per entry, so one table serves several input sizes. The
        batch size is, because no entry key mentions it.
        """
        return {
            "cpu": cpu_model(),
            "cores": os.cpu_count() or 0,
            "onnxruntime": ort.__version__,
            "provider": self.provider,
            "threads": self.threads,
            "inter_op_threads": self.inter_op_threads,
            "optimization_level": self.optimization_level,
            "allow_spinning": self.allow_spinning,
            "batch": self.input_shape[0],
        }

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = self.inter_op_threads
        options.graph_optimization_level = _OPTIMIZATION_LEVELS[self.optimization_level]
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        options.log_severity_level = 3  # warnings about unused initializers are noise here
        return options


@dataclass(frozen=True)
class Measurement:
    """Summary statistics of one measurement, in milliseconds."""

    median_ms: float  # the figure every other part of netadapt uses
    p10_ms: float
    p90_ms: float
    mean_ms: float
    cv: float  # coefficient of variation: std / mean of the timed runs
    runs: int
    fingerprint: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def summarize(times_ms: list[float] | np.ndarray, fingerprint: dict[str, Any] | None = None) -> Measurement:
    """Reduce per-run times (ms) to a `Measurement`."""
    times = np.asarray(times_ms, dtype=np.float64)
    if times.size == 0:
        raise ValueError("no timed runs to summarise")
    mean = float(times.mean())
    std = float(times.std(ddof=1)) if times.size > 1 else 0.0
    return Measurement(
        median_ms=float(np.median(times)),
        p10_ms=float(np.percentile(times, 10)),
        p90_ms=float(np.percentile(times, 90)),
        mean_ms=mean,
        cv=std / mean if mean > 0 else 0.0,
        runs=int(times.size),
        fingerprint=dict(fingerprint or {}),
    )


def _input_for(session: ort.InferenceSession, fallback: tuple[int, ...]) -> dict[str, np.ndarray]:
    (model_input,) = session.get_inputs()
    shape = [d if isinstance(d, int) and d > 0 else f for d, f in zip(model_input.shape, fallback)]
    rng = np.random.default_rng(0)
    return {model_input.name: rng.standard_normal(shape).astype(np.float32)}


def time_session(session: ort.InferenceSession, feeds: dict[str, np.ndarray], target: Target) -> list[float]:
    """Warm up, then time `session.run` until min_runs and min_seconds are both reached."""
    for _ in range(target.warmup_runs):
        session.run(None, feeds)
    times: list[float] = []
    total = 0.0
    clock = time.perf_counter
    while len(times) < target.max_runs and (len(times) < target.min_runs or total < target.min_seconds):
        start = clock()
        session.run(None, feeds)
        elapsed = clock() - start
        times.append(elapsed * 1e3)
        total += elapsed
    return times


_priority_warned: set[str] = set()


@contextlib.contextmanager
def scheduling_priority(priority: str) -> Iterator[None]:
    """Raise the calling thread's scheduling priority for the block, then restore it.

    Linux keeps nice values and policies per thread, so only the measuring
    thread (and the intra-op threads a session started inside the block
    inherits) is affected. Without the permission it warns once and measures
    at normal priority.
    """
    if priority == "normal":
        yield
        return
    restore = None
    try:
        if priority == "realtime":
            old_policy, old_param = os.sched_getscheduler(0), os.sched_getparam(0)
            # FIFO at a low RT priority: above every normal job, below kernel threads.
            # The kernel's RT throttling still leaves other jobs 5% of the core.
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            restore = lambda: os.sched_setscheduler(0, old_policy, old_param)  # noqa: E731
        else:
            old_nice = os.getpriority(os.PRIO_PROCESS, 0)
            os.setpriority(os.PRIO_PROCESS, 0, -10)
            restore = lambda: os.setpriority(os.PRIO_PROCESS, 0, old_nice)  # noqa: E731
    except (OSError, AttributeError) as error:
        if priority not in _priority_warned:
            _priority_warned.add(priority)
            warnings.warn(f"measure.priority {priority!r} is not available here ({error}); measuring at normal priority")
    try:
        yield
    finally:
        if restore is not None:
            restore()


def measure(onnx: bytes, target: Target) -> Measurement:
    """Measure one ONNX model (single float input) on `target`.

    Args:
        onnx: the serialised model, e.g. from `netadapt.onnx_export.onnx_bytes`.
        target: provider, threads, how long to measure and at what priority.
    """
    target.require_provider_here()
    with scheduling_priority(target.priority):
        session = ort.InferenceSession(onnx, sess_options=target.session_options(), providers=[target.provider])
        feeds = _input_for(session, target.input_shape)
        times = time_session(session, feeds, target)
    return summarize(times, target.fingerprint())


@runtime_checkable
class Measurer(Protocol):
    """Something that measures ONNX models on one target: local or a remote device."""

    def fingerprint(self) -> dict[str, Any]: ...

    def measure(self, onnx_bytes: bytes) -> Measurement: ...


class LocalMeasurer:
    """Measures in this process with onnxruntime."""

    def __init__(self, target: Target) -> None:
        target.require_provider_here()  # fail when the search starts, not at its first measurement
        self.target = target

    def fingerprint(self) -> dict[str, Any]:
        return self.target.fingerprint()

    def measure(self, onnx_bytes: bytes) -> Measurement:
        return measure(onnx_bytes, self.target)

    def __repr__(self) -> str:
        return f"LocalMeasurer({self.target!r})"


def measure_spec(spec: NetSpec, measurer: Measurer, input_shape: tuple[int, int, int, int]) -> Measurement:
    """Build a freshly initialised model from `spec`, export it and measure it.

    Latency does not depend on the weights, so no checkpoint is needed.
    """
    if input_shape[1] != spec.in_channels:
        raise ConfigError(f"input shape {input_shape} has {input_shape[1]} channels but the spec expects {spec.in_channels}")
    return measurer.measure(onnx_bytes(build(spec), input_shape))


def measure_spec_ms(spec: NetSpec, measurer: Measurer, input_shape: tuple[int, int, int, int]) -> float:
    """The median latency (ms) of `spec`, measured whole; see `measure_spec`."""
    return measure_spec(spec, measurer, input_shape).median_ms


def measure_best_of(
    specs: list[NetSpec], measurer: Measurer, input_shape: tuple[int, int, int, int], passes: int = 1
) -> list[Measurement]:
    """Measure each spec whole in `passes` passes over all of them; keep each one's lowest-median measurement.

    Each spec is exported once. Passes, rather than back-to-back repeats,
    spread a spec's measurements over time, so one burst of load from
    another job cannot spoil all of them.
    """
    models = [onnx_bytes(build(spec), input_shape) for spec in specs]
    best: list[Measurement | None] = [None] * len(specs)
    for _ in range(max(1, passes)):
        for index, model in enumerate(models):
            result = measurer.measure(model)
            current = best[index]
            if current is None or result.median_ms < current.median_ms:
                best[index] = result
    return best  # type: ignore[return-value]
