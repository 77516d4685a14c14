"""ONNX -> latency: measure a model on a target with onnxruntime.

A `Target` is data: the execution provider, thread counts, graph
optimisation level, input shape and how long to measure. Its
`fingerprint()` names everything about the machine and session that changes
a latency figure; every `Measurement` and every lookup table carries it, so
figures from different targets are never mixed.

Measuring builds the session once, warms it up, then times `session.run`
(with a pre-allocated input) until both a minimum number of runs and a
minimum total time are reached, in `windows` rounds. Several models are
measured together by interleaving their rounds (`measure_many`), so each
model's rounds are spread over the whole measurement and all models see the
same machine.

Which figure the rest of the project uses is `Target.statistic`:

- "min" (default): the fastest timed run. Interference on a shared or
  virtual machine only ever adds time, and on this project's VM it also
  comes from outside the VM (other tenants of the host: nothing shows in
  load or steal time), in phases from milliseconds to minutes. Five fresh
  sessions of Large at 224 had medians from 7.7 to 10.2 ms (CV 9.8%) but
  fastest runs from 7.33 to 7.63 ms (CV 1.9%); at 28x28 with 2 s of
  measuring the CV over six sessions was 0.5-2.1% for the fastest run
  against 13-22% for the median (benchmarks/lut_accuracy.py and
  benchmarks/measurement_noise.py; their output is in benchmarks/results/). It needs enough runs to meet a quiet
  moment: a few hundred for a whole network (`min_runs`, `min_seconds`).
- "quiet": the lowest median over the rounds: ignores single fast or slow
  runs but not phases longer than a round.
- "median": the median of all timed runs, the usual figure on a dedicated
  device, where runs scatter little and symmetrically.
- "p10": the 10th percentile of all runs.

`Measurer` is the seam for remote devices: anything with `fingerprint()` and
`measure(onnx_bytes)` can stand in for `LocalMeasurer`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import random
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import numpy as np
import onnxruntime as ort

from mobilenetv3 import NetSpec
from netadapt.config import MeasureConfig, TargetConfig
from netadapt.errors import ConfigError
from netadapt.types import OPTIMIZATION_LEVELS, STATISTICS

__all__ = [
    "LocalMeasurer",
    "Measurement",
    "Measurer",
    "Target",
    "cpu_model",
    "DEFAULT_STATISTIC",
    "measure",
    "measure_all",
    "best_of",
    "measure_best_of",
    "measure_onnx_passes",
    "measure_passes",
    "measure_many",
    "measure_spec",
    "measure_spec_ms",
    "scheduling_priority",
    "summarize",
    "summarize_rounds",
    "time_session",
]

DEFAULT_STATISTIC = MeasureConfig().statistic
# Sessions measured together by `measure_many`; bounds memory for big models.
MAX_INTERLEAVED = 16

_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
assert set(_OPTIMIZATION_LEVELS) == set(OPTIMIZATION_LEVELS)  # the config owns the names

# The settings that decide a figure and travel to a remote device, by the
# config section that owns each. Connection settings (device, token, retries,
# timeout) and the search's own (repeats, isolation) stay with the caller.
SESSION_SETTINGS = ("provider", "threads", "inter_op_threads", "optimization_level", "allow_spinning", "spin_between_runs")
MEASURING_SETTINGS = ("warmup_runs", "min_runs", "min_seconds", "max_runs", "priority", "statistic", "windows")


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for fingerprints."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@dataclass(frozen=True)
class Target:
    """Where and how a model is measured: the config's `target` and `measure` sections plus the input shape.

    Composed of the two config sections, which own every setting, its
    default and its range checks; `Target` only adds the input shape. Its
    `session` and `measuring` are private copies, so changing a `Config`
    later does not change a target made from it. The batch is the input's
    first dimension (`session.batch` follows it). The session settings are
    the fingerprint; the measuring settings (warm-up and run counts) change
    how precise a figure is, not what it is, so they are not.
    """

    input_shape: tuple[int, int, int, int] = (1, 3, 224, 224)  # N, C, H, W
    session: TargetConfig = field(default_factory=TargetConfig)
    measuring: MeasureConfig = field(default_factory=MeasureConfig)

    def __post_init__(self) -> None:
        shape = tuple(int(d) for d in self.input_shape)
        if len(shape) != 4 or min(shape) < 1:
            raise ConfigError(f"target input shape must be 4 positive ints (N, C, H, W), got {self.input_shape}")
        object.__setattr__(self, "input_shape", shape)
        # replace() copies and re-runs the sections' own range checks.
        object.__setattr__(self, "session", dataclasses.replace(self.session, batch=shape[0]))
        object.__setattr__(self, "measuring", dataclasses.replace(self.measuring))

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
        return cls((target_cfg.batch, *tuple(input_shape)[1:]), target_cfg, measure_cfg)  # type: ignore[arg-type]

    @classmethod
    def from_settings(cls, input_shape: tuple[int, ...] = (1, 3, 224, 224), **settings: Any) -> "Target":
        """A target from flat settings (`threads=2, min_runs=5`), each routed to the section that owns it.

        Raises:
            ConfigError: a name that is not a session or measuring setting, or a value out of range.
        """
        return cls(input_shape).with_settings(**settings)  # type: ignore[arg-type]

    def with_settings(self, **changes: Any) -> "Target":
        """This target with some session or measuring settings changed (flat names, as `settings()` gives)."""
        unknown = sorted(set(changes) - set(SESSION_SETTINGS) - set(MEASURING_SETTINGS))
        if unknown:
            raise ConfigError(f"unknown target setting(s) {unknown}; valid: {sorted(SESSION_SETTINGS + MEASURING_SETTINGS)}")
        session = {k: v for k, v in changes.items() if k in SESSION_SETTINGS}
        measuring = {k: v for k, v in changes.items() if k in MEASURING_SETTINGS}
        return dataclasses.replace(self, session=dataclasses.replace(self.session, **session),
                                   measuring=dataclasses.replace(self.measuring, **measuring))

    def settings(self) -> dict[str, Any]:
        """The settings that decide a figure, flat: what a remote device needs to reproduce this target."""
        return {**{k: getattr(self.session, k) for k in SESSION_SETTINGS},
                **{k: getattr(self.measuring, k) for k in MEASURING_SETTINGS}}

    @property
    def provider(self) -> str:
        return self.session.provider

    @property
    def statistic(self) -> str:
        return self.measuring.statistic

    def require_provider_here(self) -> None:
        """Refuse a provider this machine's onnxruntime lacks. Not part of validation:
        a remote device may have providers (CoreML, QNN, ...) the host does not."""
        available = ort.get_available_providers()
        if self.provider not in available:
            raise ConfigError(f"target.provider {self.provider!r} is not available here; onnxruntime lists {available}")

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
            **{k: getattr(self.session, k) for k in SESSION_SETTINGS},
            "batch": self.input_shape[0],
        }

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.session.threads
        options.inter_op_num_threads = self.session.inter_op_threads
        options.graph_optimization_level = _OPTIMIZATION_LEVELS[self.session.optimization_level]
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.session.allow_spinning else "0")
        options.add_session_config_entry("session.force_spinning_stop", "0" if self.session.spin_between_runs else "1")
        options.log_severity_level = 3  # warnings about unused initializers are noise here
        return options


@dataclass(frozen=True)
class Measurement:
    """Summary statistics of one measurement, in milliseconds."""

    median_ms: float  # of all timed runs
    p10_ms: float
    p90_ms: float
    mean_ms: float
    cv: float  # coefficient of variation: std / mean of the timed runs
    runs: int
    quiet_ms: float  # the lowest median over the measurement's rounds
    min_ms: float  # the fastest run
    latency_ms: float  # the figure every other part of netadapt uses: the target's statistic
    fingerprint: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def statistic_ms(self, statistic: str) -> float:
        """The figure for `statistic` ("quiet", "median", "p10" or "min")."""
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
        return float(getattr(self, f"{statistic}_ms"))


def summarize_rounds(
    rounds_ms: list[list[float]], fingerprint: dict[str, Any] | None = None, statistic: str = DEFAULT_STATISTIC
) -> Measurement:
    """Reduce per-run times (ms), grouped by measuring round, to a `Measurement`.

    Args:
        rounds_ms: the timed runs of each round; empty rounds are ignored.
        fingerprint: the target's, carried along.
        statistic: which figure becomes `latency_ms`.
    """
    rounds = [np.asarray(r, dtype=np.float64) for r in rounds_ms if len(r)]
    if not rounds:
        raise ValueError("no timed runs to summarise")
    times = np.concatenate(rounds)
    mean = float(times.mean())
    std = float(times.std(ddof=1)) if times.size > 1 else 0.0
    figures = {
        "median": float(np.median(times)),
        "p10": float(np.percentile(times, 10)),
        "quiet": float(min(np.median(r) for r in rounds)),
        "min": float(times.min()),
    }
    if statistic not in figures:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    return Measurement(
        median_ms=figures["median"],
        p10_ms=figures["p10"],
        p90_ms=float(np.percentile(times, 90)),
        mean_ms=mean,
        cv=std / mean if mean > 0 else 0.0,
        runs=int(times.size),
        quiet_ms=figures["quiet"],
        min_ms=figures["min"],
        latency_ms=figures[statistic],
        fingerprint=dict(fingerprint or {}),
    )


def summarize(
    times_ms: list[float] | np.ndarray, fingerprint: dict[str, Any] | None = None, windows: int = 1, statistic: str = DEFAULT_STATISTIC
) -> Measurement:
    """Reduce consecutive per-run times (ms) to a `Measurement`, cut into `windows` equal rounds."""
    times = list(np.asarray(times_ms, dtype=np.float64))
    size = max(1, -(-len(times) // max(1, windows)))
    return summarize_rounds([times[i : i + size] for i in range(0, len(times), size)], fingerprint, statistic)


def _input_for(session: ort.InferenceSession, fallback: tuple[int, ...]) -> dict[str, np.ndarray]:
    (model_input,) = session.get_inputs()
    shape = [d if isinstance(d, int) and d > 0 else f for d, f in zip(model_input.shape, fallback)]
    rng = np.random.default_rng(0)
    return {model_input.name: rng.standard_normal(shape).astype(np.float32)}


def time_session(
    session: ort.InferenceSession,
    feeds: dict[str, np.ndarray],
    target: Target,
    min_runs: int | None = None,
    min_seconds: float | None = None,
    max_runs: int | None = None,
) -> list[float]:
    """Time `session.run` until min_runs and min_seconds are both reached (the target's unless given).

    No warm-up: the caller warms the session first.
    """
    min_runs = target.measuring.min_runs if min_runs is None else min_runs
    min_seconds = target.measuring.min_seconds if min_seconds is None else min_seconds
    max_runs = target.measuring.max_runs if max_runs is None else max_runs
    times: list[float] = []
    total = 0.0
    clock = time.perf_counter
    while len(times) < max_runs and (len(times) < min_runs or total < min_seconds):
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
    return measure_many([onnx], target)[0]


def measure_many(models: list[bytes], target: Target) -> list[Measurement]:
    """Measure several ONNX models on `target`, interleaved; one `Measurement` each, in order.

    Up to `MAX_INTERLEAVED` sessions are open at once. Each is warmed up,
    then the timed runs go in `target.measuring.windows` rounds; a round times every
    session in turn for its share of `min_runs` and `min_seconds`, after a
    couple of untimed runs that bring its weights back into cache. A burst
    of load therefore spoils one round of every model rather than all of
    one model's runs, and models measured together are compared under the
    same conditions.
    """
    target.require_provider_here()
    rounds = min(target.measuring.windows, target.measuring.max_runs)  # every round times at least one run
    per_round = {
        "min_runs": -(-target.measuring.min_runs // rounds),
        "min_seconds": target.measuring.min_seconds / rounds,
        "max_runs": target.measuring.max_runs // rounds,  # the rounds together stay within max_runs
    }
    rewarm = min(2, target.measuring.warmup_runs)
    results: list[Measurement] = []
    fingerprint = target.fingerprint()
    for first in range(0, len(models), MAX_INTERLEAVED):
        with scheduling_priority(target.measuring.priority):
            sessions = []
            for model in models[first : first + MAX_INTERLEAVED]:
                session = ort.InferenceSession(model, sess_options=target.session_options(), providers=[target.provider])
                feeds = _input_for(session, target.input_shape)
                for _ in range(target.measuring.warmup_runs):
                    session.run(None, feeds)
                sessions.append((session, feeds))
            timed: list[list[list[float]]] = [[] for _ in sessions]
            for _ in range(rounds):
                for index, (session, feeds) in enumerate(sessions):
                    if len(sessions) > 1:
                        for _ in range(rewarm):
                            session.run(None, feeds)
                    timed[index].append(time_session(session, feeds, target, **per_round))
            del sessions
        results.extend(summarize_rounds(r, fingerprint, target.statistic) for r in timed)
    return results


@runtime_checkable
class Measurer(Protocol):
    """Something that measures ONNX models on one target: local or a remote device.

    Optional: `statistic` (which figure `latency_ms` holds; lookup tables sum
    the same one) and `measure_many(models)` (several models, interleaved).
    """

    def fingerprint(self) -> dict[str, Any]: ...

    def measure(self, onnx_bytes: bytes) -> Measurement: ...


def measure_all(measurer: Measurer, models: list[bytes]) -> list[Measurement]:
    """Measure several models with `measurer`: interleaved where it can (`measure_many`), else one by one."""
    many = getattr(measurer, "measure_many", None)
    if many is not None:
        return list(many(models))
    return [measurer.measure(model) for model in models]


class LocalMeasurer:
    """Measures in this process with onnxruntime."""

    def __init__(self, target: Target) -> None:
        target.require_provider_here()  # fail when the search starts, not at its first measurement
        self.target = target

    def fingerprint(self) -> dict[str, Any]:
        return self.target.fingerprint()

    @property
    def statistic(self) -> str:
        """The figure a `Measurement`'s `latency_ms` holds; lookup tables sum the same one."""
        return self.target.statistic

    def measure(self, onnx_bytes: bytes) -> Measurement:
        return measure(onnx_bytes, self.target)

    def measure_many(self, models: list[bytes]) -> list[Measurement]:
        return measure_many(models, self.target)

    def __repr__(self) -> str:
        return f"LocalMeasurer({self.target!r})"


def measure_spec(spec: NetSpec, measurer: Measurer, input_shape: tuple[int, int, int, int]) -> Measurement:
    """Build a freshly initialised model from `spec`, export it and measure it.

    Latency does not depend on the weights, so no checkpoint is needed.
    """
    if input_shape[1] != spec.in_channels:
        raise ConfigError(f"input shape {input_shape} has {input_shape[1]} channels but the spec expects {spec.in_channels}")
    return measurer.measure(_spec_onnx(spec, input_shape))


def measure_spec_ms(spec: NetSpec, measurer: Measurer, input_shape: tuple[int, int, int, int]) -> float:
    """The latency (ms, the target's statistic) of `spec`, measured whole; see `measure_spec`."""
    return measure_spec(spec, measurer, input_shape).latency_ms


def measure_passes(
    specs: list[NetSpec], measurer: Measurer, input_shape: tuple[int, int, int, int], passes: int = 1
) -> list[list[Measurement]]:
    """Measure each spec whole in `passes` passes over all of them; one list of measurements per pass.

    Each spec is exported once; see `measure_onnx_passes` for the passes.
    """
    return measure_onnx_passes([_spec_onnx(spec, input_shape) for spec in specs], measurer, passes)


def _spec_onnx(spec: NetSpec, input_shape: tuple[int, int, int, int]) -> bytes:
    # Imported here, not at the top: the device server and its measuring child
    # import this module to measure ONNX bytes, and must start without torch.
    from mobilenetv3 import build
    from netadapt.onnx_export import onnx_bytes

    return onnx_bytes(build(spec), input_shape)


def measure_onnx_passes(
    models: list[bytes],
    measurer: Measurer,
    passes: int = 1,
    measure_batch: Callable[[list[bytes]], list[Measurement]] | None = None,
) -> list[list[Measurement]]:
    """Measure ONNX models side by side in `passes` passes over all of them; one list per pass, in `models` order.

    Each pass measures all of them together (`measure_all`). Passes spread a
    model's measurements further over time, so one long burst of load from
    another job cannot spoil all of them. Each pass goes through the models in
    its own random order (seeded, so reruns repeat it): the machine drifts over
    the minutes a pass takes, and in list order that drift would follow the
    models' positions, a trend rather than noise that passes cannot average out.
    `best_of` keeps each model's fastest pass. `measure_batch` measures one
    pass's models together (default: `measure_all` on `measurer`); a latency
    table passes its gauged measurement.
    """
    measure_batch = measure_batch or (lambda batch: measure_all(measurer, batch))
    order_rng = random.Random(0)
    passes_measured = []
    for _ in range(max(1, passes)):
        order = list(range(len(models)))
        order_rng.shuffle(order)
        by_index = dict(zip(order, measure_batch([models[index] for index in order])))
        passes_measured.append([by_index[index] for index in range(len(models))])
    return passes_measured


def best_of(passes: list[list[Measurement]]) -> list[Measurement]:
    """Each model's lowest-latency measurement over the passes of `measure_passes` or `measure_onnx_passes`."""
    return [min(measured, key=lambda one: one.latency_ms) for measured in zip(*passes)]


def measure_best_of(
    specs: list[NetSpec], measurer: Measurer, input_shape: tuple[int, int, int, int], passes: int = 1
) -> list[Measurement]:
    """Each spec's lowest-latency measurement over `passes` passes (see `measure_passes`)."""
    return best_of(measure_passes(specs, measurer, input_shape, passes))
