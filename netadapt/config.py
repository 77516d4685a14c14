"""Configuration: YAML plus `--set key=value`, validated into dataclasses.

Every command reads the same `Config`. Loading is strict: an unknown key, a
value of the wrong type or out of its section's `RANGES`, or an unreadable
file raises `ConfigError` naming the file and the dotted key, before any
work starts. A run directory keeps the resolved config (`to_yaml`) so it can
be resumed from that file alone.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from netadapt.io import InputError, load_yaml, read_text
from netadapt.errors import ConfigError, quote
from netadapt.types import (
    CHANNEL_COUNTS,
    DATA_CACHES,
    DATASETS,
    DRIFT_CHECKS,
    EXECUTOR_KINDS,
    ISOLATIONS,
    OPTIMIZATION_LEVELS,
    PRECISIONS,
    PRESETS,
    PRIORITIES,
    SCORES,
    SELECTION_RULES,
    STATISTICS,
)

__all__ = [
    "Config",
    "DataConfig",
    "ExecutorConfig",
    "LutConfig",
    "MeasureConfig",
    "ModelConfig",
    "SearchConfig",
    "TargetConfig",
    "TrainConfig",
    "apply_overrides",
    "check_ranges",
    "from_dict",
    "literal_choices",
    "load_config",
    "to_dict",
]


# numpy's legacy generators take seeds below 2**32; the seeds here feed numpy, torch and `random`.
SEED_RANGE = "[0, 4294967295]"


class Section:
    """Base of the config sections: each checks its own values whenever it is made.

    `from_dict` (loading a file) and `dataclasses.replace` (a changed copy in
    Python) both end in `__post_init__`, so no section exists with a value out
    of its `RANGES` or a `Literal` field outside its choices. A field set by
    assignment afterwards is caught by `check_ranges`.
    """

    SECTION: ClassVar[str] = ""  # the section's key in a config file; "" for the top level
    # Each numeric field's allowed values (each item of a list field), as an interval.
    RANGES: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_section_ranges(self, self.SECTION, source=None)


@dataclass
class ModelConfig(Section):
    # The MobileNetV3 variant. Small at 28x28 trains at ~450 images/s on 2 cores, so
    # the embedded demo fits in minutes; Large trains ~2.5x slower.
    preset: Literal[PRESETS] = "small"
    width: float = 1.0  # torchvision-style width multiplier applied to the preset
    spec: str | None = None  # a spec YAML file; overrides preset and width
    checkpoint: str | None = None  # trained base weights; None: train on first use and cache

    SECTION: ClassVar[str] = "model"
    RANGES: ClassVar[dict[str, str]] = {"width": "(0, inf)"}


@dataclass
class DataConfig(Section):
    # "embedded": the Fashion-MNIST subset shipped in the package (no download).
    dataset: Literal[DATASETS] = "embedded"
    path: str | None = None  # folder holding the dataset files (not for "embedded")
    # Images are resized to resolution x resolution. 28 is Fashion-MNIST's own size:
    # no resampling, and MobileNetV3's five stride-2 stages still end at 1x1.
    resolution: int = 28
    channels: Literal[CHANNEL_COUNTS] = 1  # 1: grayscale, 3: RGB; the model's in_channels follows
    mean: list[float] = field(default_factory=lambda: [0.5])  # per channel, after scaling to [0, 1]
    std: list[float] = field(default_factory=lambda: [0.5])  # per channel, divides after the mean is taken off
    # Images carved from the training set for NetAdapt's decisions. None: a
    # twelfth of the training set, at least 1,000 and at most 5,000 (1,000 on
    # the embedded subset, 5,000 on full Fashion-MNIST): a bigger holdout tells
    # candidates apart where the data allows it.
    holdout: int | None = None
    split_seed: int = 0  # fixes the holdout split independently of the training seed
    # How a folder data set is held: "memory" decodes every image once into float32
    # tensors; "stream" keeps only the file list and decodes each batch in `workers`
    # processes; "auto" streams when the decoded splits would pass `memory_budget_gb`.
    # The other data sets are already in memory as bytes, and stay there.
    cache: Literal[DATA_CACHES] = "auto"
    workers: int = 4  # decoding processes of a streamed data set (0: in the training process)
    memory_budget_gb: float = 4.0  # (see cache)

    SECTION: ClassVar[str] = "data"
    RANGES: ClassVar[dict[str, str]] = {
        "resolution": "[8, 4096]",  # pixels; 4096 is far past any latency target's input
        "mean": "(-inf, inf)",  # each value; finite
        "std": "(0, inf)",
        "holdout": "[1, inf)",  # NetAdapt decides on it; null: automatic
        "split_seed": SEED_RANGE,
        "workers": "[0, 256]",
        "memory_budget_gb": "(0, inf)",
    }


@dataclass
class TargetConfig(Section):
    # "local" measures in this process; "remote://HOST:PORT" on a device server.
    device: str = "local"
    provider: str = "CPUExecutionProvider"  # the onnxruntime execution provider that runs the measured model
    threads: int = 1  # intra-op threads; 1 is the usual mobile-like setting
    inter_op_threads: int = 1  # threads running independent nodes at once; 0: onnxruntime's default
    optimization_level: Literal[OPTIMIZATION_LEVELS] = "all"  # onnxruntime graph optimisations, as deployment would use them
    batch: int = 1  # batch size of the measured input
    # onnxruntime's default; spinning workers cut wake-up latency when threads > 1
    allow_spinning: bool = True
    # With threads > 1: false stops the workers spinning when a run returns
    # (onnxruntime's session.force_spinning_stop), so each inference starts with
    # its pool asleep, as a request-driven app's does. Otherwise the idle pools of
    # the sessions measured side by side spin on and slow the one being timed: on
    # 2 threads that put whole networks 25-55% above the sum of their units
    # (benchmarks/interleaved_spinning.py). true: a tight inference loop's figure.
    spin_between_runs: bool = False
    # Remote devices only. The token file (or NETADAPT_DEVICE_TOKEN) holds the
    # server's bearer token; never put the token itself in a config or argument.
    token_file: str | None = None
    retries: int = 5  # reconnects after a lost connection, with doubling backoff from 0.5 s
    timeout_s: float = 600.0  # longest wait for one answer, measuring included

    SECTION: ClassVar[str] = "target"
    RANGES: ClassVar[dict[str, str]] = {
        "threads": "[0, inf)", "inter_op_threads": "[0, inf)", "batch": "[1, inf)", "retries": "[0, inf)",
        "timeout_s": "(0, inf)",
    }


@dataclass
class MeasureConfig(Section):
    warmup_runs: int = 10  # untimed runs first, so allocation and caches settle
    min_runs: int = 30  # time at least this many runs ...
    min_seconds: float = 0.2  # ... and for at least this long
    max_runs: int = 10_000  # upper bound for very fast models
    # Whole-network measurements in the search keep the lowest figure of this many
    # sessions: other load only ever slows a run, so the minimum is the least disturbed.
    # 8 x min_seconds spans 1.6 s, enough to catch a quiet phase on this project's VM.
    repeats: int = 8
    # Scheduling of the measuring thread: "realtime" (SCHED_FIFO, needs root) keeps
    # other jobs on a shared machine from inflating the figures; "high" is nice -10.
    priority: Literal[PRIORITIES] = "normal"
    # The figure every part uses: "min" is the fastest run, the steadiest figure on a
    # shared or virtual machine, where interference only adds time; "quiet" is the
    # lowest median over `windows` rounds; "median" of all runs suits a dedicated
    # device; "p10" is also offered (see netadapt/benchmark.py).
    statistic: Literal[STATISTICS] = "min"
    windows: int = 10  # rounds the timed runs are split into (see netadapt/benchmark.py)
    # Where a search measures on a local target: "process" measures in a separate
    # process that waits for the trainer to go idle first (fine-tuning in the same
    # process inflated figures by a median 11%); "none" measures in the trainer.
    isolation: Literal[ISOLATIONS] = "process"

    SECTION: ClassVar[str] = "measure"
    RANGES: ClassVar[dict[str, str]] = {
        "warmup_runs": "[0, inf)", "min_runs": "[1, inf)", "min_seconds": "[0, inf)", "max_runs": "[1, inf)",
        "repeats": "[1, inf)", "windows": "[1, inf)",
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_runs < self.min_runs:
            raise ConfigError(f"measure.max_runs must be an integer >= measure.min_runs ({self.min_runs}), got {quote(self.max_runs)}")


@dataclass
class LutConfig(Section):
    table: str | None = None  # table file; default: one per target fingerprint under ~/.cache/netadapt/luts/
    granularity: int = 8  # channel counts stay multiples of this (x86 NCHWc blocking)
    min_channels: int = 8  # no prunable group goes below this
    # Whole networks measured to fit the table's sum-to-network correction
    # (an isolated unit carries its own session overhead, so a raw sum overshoots).
    correction_samples: int = 12
    # `lut build` / `lut validate` measure each new entry in `entry_passes` passes
    # (at different moments, each keeping the best) and each whole network in
    # `network_passes` passes, half before the entries are measured and half after;
    # the search fits its correction with network_passes too. A whole Large at 224 px
    # runs up to 23% apart from one session to the next: two best-of-4 figures differ
    # by 3.5% at the 90th percentile, two best-of-8 by 2.1%.
    entry_passes: int = 2
    network_passes: int = 8  # (see entry_passes)
    # Each search iteration first measures, together, the units of every group's
    # next `prefetch_widths` widths (most choices need only those); a width scan
    # that goes further measures its next `prefetch_widths` widths together again.
    prefetch_widths: int = 3
    seed: int = 0  # draws the random sub-networks of the correction fit and of `lut validate`
    # Units measured in every batch to gauge the machine's state; entries are stored
    # relative to it, so entries measured under different load do not mix.
    reference_units: int = 3
    # Before a filled table is used, `drift_sample` entries are re-measured; if they
    # differ from the stored ones by a median of more than `drift_tolerance_pct`,
    # the table is re-measured whole ("remeasure"), refused ("refuse"), or, with
    # "off", not checked.
    drift_check: Literal[DRIFT_CHECKS] = "remeasure"
    drift_sample: int = 8  # (see drift_check)
    drift_tolerance_pct: float = 5.0  # (see drift_check)

    SECTION: ClassVar[str] = "lut"
    RANGES: ClassVar[dict[str, str]] = {
        "granularity": "[1, inf)", "min_channels": "[1, inf)", "correction_samples": "[1, inf)",
        "entry_passes": "[1, inf)", "network_passes": "[1, inf)", "prefetch_widths": "[0, inf)", "seed": SEED_RANGE,
        "reference_units": "[0, inf)", "drift_sample": "[1, inf)", "drift_tolerance_pct": "(0, inf)",
    }


@dataclass
class TrainConfig(Section):
    # Optimiser steps for the base network: 1000 x 128 images = ~18 epochs of the
    # embedded subset, ~5 min for small-1.0 on 2 cores.
    steps: int = 1000
    batch_size: int = 128  # images per step, for training and fine-tunes
    lr: float = 0.2  # peak learning rate (SGD with Nesterov momentum, cosine decay)
    momentum: float = 0.9  # SGD Nesterov momentum
    weight_decay: float = 4e-5  # L2 on the weights, as MobileNetV3's paper trains with
    label_smoothing: float = 0.1  # of the base network's cross-entropy
    warmup: float = 0.05  # fraction of `steps` with a linear LR warmup before the cosine decay
    crop_padding: int = 2  # random crop after zero padding by this many pixels; 0 disables
    flip: bool = True  # random horizontal flips (fine for Fashion-MNIST and CIFAR-10; off for digits)
    finetune_lr: float = 0.01  # constant LR of NetAdapt's short-term fine-tunes
    # Fine-tunes (short and long) can learn from the base network's logits too:
    # loss = (1 - alpha) * cross-entropy + alpha * T^2 * KL(base || network at T).
    # 0 turns it off: the default, since on (alpha 0.5) it cost 0.2 points in the
    # headline's ablation (benchmarks/results/headline/).
    distill_alpha: float = 0.0
    distill_temperature: float = 4.0  # T above
    # After each train/finetune, recompute BN statistics on this many training
    # images (BN momentum 0.01 lags ~100 steps behind a short fine-tune); 0 disables.
    bn_recalibration: int = 1024
    eval_batch_size: int = 512  # images per forward pass when scoring; memory only, not the result
    threads: int = 0  # torch intra-op threads for training; 0: torch's default
    # Where training, fine-tunes, BN recalibration and scoring run: auto (CUDA when
    # present, else the CPU), cpu, cuda, cuda:N or mps. Ray candidates with
    # executor.gpus_per_candidate > 0 train on the GPU Ray assigns them instead.
    device: str = "auto"
    # bf16/fp16 autocast the forward and loss (fp16 with a loss scaler); weights stay float32.
    precision: Literal[PRECISIONS] = "fp32"
    # Deterministic kernels on CUDA (torch.use_deterministic_algorithms), at a speed
    # cost; the CPU is deterministic for a seed and thread count either way.
    deterministic: bool = False

    SECTION: ClassVar[str] = "train"
    RANGES: ClassVar[dict[str, str]] = {
        "steps": "[0, inf)", "batch_size": "[1, inf)", "lr": "(0, inf)", "momentum": "[0, 1)",
        "weight_decay": "[0, inf)", "label_smoothing": "[0, 1)", "warmup": "[0, 1]", "crop_padding": "[0, inf)",
        "finetune_lr": "(0, inf)", "distill_alpha": "[0, 1]", "distill_temperature": "(0, inf)",
        "bn_recalibration": "[0, inf)", "eval_batch_size": "[1, inf)", "threads": "[0, inf)",
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        from netadapt.devices import check_device_name  # the name only; the hardware is checked when training starts

        check_device_name(self.device, "train.device")


@dataclass
class SearchConfig(Section):
    budget_ms: float | None = None  # absolute latency budget
    budget_ratio: float | None = None  # or a fraction of the base network's latency
    # NetAdapt schedule: dR_i = initial_reduction * base_latency * decay**(i-1), on the
    # lookup table's scale. The official code uses 0.025; 0.05 halves the iterations
    # a demo needs, at some cost in how finely the search steps.
    initial_reduction: float = 0.05
    decay: float = 0.96  # (see initial_reduction)
    finetune_steps: int = 10  # short-term fine-tune per candidate (the paper: 500 on ImageNet)
    long_finetune_steps: int = 0  # after the search; 0 skips it
    # When fewer than min_proposals groups can meet an iteration's target, its
    # reduction is halved (up to max_reduction_halvings times; 0 keeps the
    # paper's fixed schedule): see search.plan_iteration.
    min_proposals: int = 3
    max_reduction_halvings: int = 4  # (see min_proposals)
    # The largest share of a group's channels one iteration may remove (one
    # granularity step is always allowed): no gutting a group in one cut.
    max_cut_fraction: float = 0.5
    # Depth proposals: "remove block i" beside the channel cuts, for every
    # residual block (`remove[i]` in history.csv). At small inputs latency is
    # mostly per-layer overhead, which only removing layers saves.
    depth_proposals: bool = True
    # Common random numbers: every candidate of an iteration fine-tunes on the same
    # batches and augmentation. Off gives each its own (only to measure what it buys).
    common_batches: bool = True
    # How an iteration picks its winner: the best score ("accuracy", NetAdapt's rule),
    # or the best score lost per millisecond saved ("accuracy_per_latency").
    selection: Literal[SELECTION_RULES] = "accuracy"
    # What ranks candidates on the holdout: top-1 "accuracy", or "loss" (mean
    # cross-entropy, smoother than top-1 on a small holdout). With
    # accuracy_per_latency the reference is a control arm: the current network
    # fine-tuned on the same batches as the proposals.
    score: Literal[SCORES] = "accuracy"
    # The prescreen: score every proposal right after surgery and BatchNorm
    # recalibration, and fine-tune only the best `finetune_top`; 0 fine-tunes all.
    finetune_top: int = 0
    max_iterations: int = 100  # the search stops here even if the budget is not met
    # The last iteration's target is clamped to the budget less this share, so the
    # final network lands just under the budget rather than far below it.
    budget_margin: float = 0.02
    # Budgets above the final one, in its unit (shares of the base with budget_ratio,
    # ms with budget_ms), that the search also lands just under: each clamps the
    # targets like the final budget until a network meets it, so one run hands over
    # a network just under every one of them, not a cut far below.
    landings: list[float] = field(default_factory=list)

    SECTION: ClassVar[str] = "search"
    RANGES: ClassVar[dict[str, str]] = {
        "budget_ms": "(0, inf)", "budget_ratio": "(0, 1)", "initial_reduction": "(0, 1)", "decay": "(0, 1]",
        "finetune_steps": "[0, inf)", "long_finetune_steps": "[0, inf)", "min_proposals": "[1, inf)",
        "max_reduction_halvings": "[0, inf)", "max_cut_fraction": "(0, 1]", "finetune_top": "[0, inf)",
        "max_iterations": "[1, inf)", "budget_margin": "[0, 0.5)", "landings": "(0, inf)",
    }


@dataclass
class ExecutorConfig(Section):
    kind: Literal[EXECUTOR_KINDS] = "local"  # where candidates fine-tune: in this process, or as Ray tasks
    ray_address: str | None = None  # None starts a local Ray cluster
    cpus_per_candidate: float = 1.0  # Ray resources each candidate's fine-tune asks for
    gpus_per_candidate: float = 0.0  # Ray GPUs per candidate; fractions share a GPU
    max_retries: int = 2  # a dead worker's candidate is retried this often, then recorded as failed

    SECTION: ClassVar[str] = "executor"
    RANGES: ClassVar[dict[str, str]] = {"cpus_per_candidate": "[0, inf)", "gpus_per_candidate": "[0, inf)",
                                        "max_retries": "[0, inf)"}


@dataclass
class Config(Section):
    seed: int = 0  # seeds training, fine-tunes and every random draw of a run
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    lut: LutConfig = field(default_factory=LutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    RANGES: ClassVar[dict[str, str]] = {"seed": SEED_RANGE}

    def input_shape(self) -> tuple[int, int, int, int]:
        """The input every network of a run is measured and exported at: (target.batch, data.channels,
        data.resolution, data.resolution); the data's images are what the network will see."""
        return (self.target.batch, self.data.channels, self.data.resolution, self.data.resolution)

    def to_yaml(self) -> str:
        return yaml.safe_dump(to_dict(self), sort_keys=False)


# --------------------------------------------------------------------- loading
def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _interval(text: str) -> tuple[float, float, bool, bool]:
    """Parse an interval such as "(0, 1]" into (low, high, low excluded?, high excluded?)."""
    low, high = (float(part) for part in text[1:-1].split(","))
    return low, high, text[0] == "(", text[-1] == ")"


def _describe_interval(text: str, integer: bool) -> str:
    low, high = (part.strip() for part in text[1:-1].split(","))
    kind = "an integer" if integer else "a finite number"
    if high == "inf" and low != "-inf":
        return f"{kind} {'>' if text[0] == '(' else '>='} {low}"
    return kind if low == "-inf" and high == "inf" else f"{kind} in {text}"


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def literal_choices(hint: Any) -> tuple[Any, ...] | None:
    """The choices of a `Literal` field type, or of a Literal inside an Optional; None for any other type."""
    literal = next((arg for arg in (hint, *typing.get_args(hint)) if typing.get_origin(arg) is Literal), None)
    return None if literal is None else typing.get_args(literal)


def _check_choices(section: Any) -> None:
    """Each `Literal` field of `section` (or Optional Literal) holds one of its choices."""
    for name, hint in _hints(type(section)).items():
        choices = literal_choices(hint)
        value = getattr(section, name)
        if choices is not None and value is not None and value not in choices:
            key = f"{section.SECTION}.{name}" if section.SECTION else name
            raise ConfigError(f"{key} must be one of {list(choices)}, got {quote(value)}")


def _check_section_ranges(section: Any, where: str, source: str | None) -> None:
    """Check each of `section`'s RANGES (each item of a list field); messages name `source` (if any) and the dotted key."""
    ranges: dict[str, str] = getattr(type(section), "RANGES", {})
    hints = _hints(type(section)) if ranges else {}
    for name, interval in ranges.items():
        key = f"{where}.{name}" if where else name
        kinds = (hints[name], *typing.get_args(hints[name]))
        item_kinds = [arg for kind in kinds for arg in (kind, *typing.get_args(kind))]  # list[float] -> float
        integer = int in item_kinds and float not in item_kinds
        low, high, low_open, high_open = _interval(interval)
        values = getattr(section, name)
        items = list(enumerate(values)) if isinstance(values, list) else [(None, values)]
        for index, value in items:
            if value is None:
                continue  # an optional value left unset
            item_key = key if index is None else f"{key}[{index}]"
            number = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
            if not number or not _finite(value) or value < low or value > high \
                    or (low_open and value == low) or (high_open and value == high):
                prefix = f"{source}: " if source else ""
                raise ConfigError(f"{prefix}{item_key} must be {_describe_interval(interval, integer)}, "
                                  f"got {quote(value)}")


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def check_ranges(config: Config, source: str = "config") -> None:
    """Check every numeric field of `config` against its section's RANGES.

    `load_config` already does this; a config built or changed in Python
    (`dataclasses.replace`) is checked here before a run relies on it.

    Raises:
        ConfigError: the first value out of range, named by its dotted key.
    """
    _check_section_ranges(config, "", source)
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if dataclasses.is_dataclass(value):
            _check_section_ranges(value, section.name, source)


def from_dict(cls: type, data: Any, where: str = "", source: str = "config") -> Any:
    """Build dataclass `cls` from a mapping, checking every key, type and range.

    Args:
        cls: the dataclass type.
        data: the mapping (e.g. parsed YAML).
        where: dotted prefix of `data` inside the whole config, for messages.
        source: the file (or "--set") the data came from, for messages.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where or 'top level'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)  # YAML keys need not be text, nor comparable
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"{source}: unknown key {quote(key)}; valid keys here are {sorted(fields)}")
    values = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        values[name] = _coerce(hints[name], value, key, source)
    try:
        return cls(**values)
    except ConfigError as error:  # the section's own checks (`Section.__post_init__`)
        raise ConfigError(f"{source}: {error}") from None


def _coerce(annotation: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, key, source)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, key, source)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{source}: {key}: {quote(value)} matches none of {args}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {key} must be one of {list(args)}, got {quote(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list, got {quote(value)}")
        return [_coerce(args[0], item, f"{key}[{i}]", source) for i, item in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {quote(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {quote(value)}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {quote(value)}")
        if isinstance(value, int) and not _finite(value):  # NaN and infinity are left to the section's range check
            raise ConfigError(f"{source}: {key} must be a finite number, got {quote(value)}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {quote(value)}")
        return value
    raise TypeError(f"config type {annotation!r} of {key} is not supported")  # a bug, not user error


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` strings to a nested mapping; values are parsed as YAML scalars."""
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"--set {quote(override)}: expected key=value, e.g. --set train.steps=200")
        dotted, raw = override.split("=", 1)
        try:
            value = load_yaml(raw, f"--set {quote(dotted.strip())}") if raw.strip() else None
        except InputError as error:
            raise ConfigError(str(error)) from None
        _set_dotted(data, dotted.strip(), value, f"--set {quote(override)}")
    return data


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"{where}: empty key")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {quote(part)} is not a section")
        node = child
    node[parts[-1]] = value


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; errors name the file.

    Raises:
        ConfigError: the file is missing, unreadable, not UTF-8, not YAML within
            `netadapt.io.load_yaml`'s bounds, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = load_yaml(read_text(path), str(path))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except InputError as error:
        raise ConfigError(str(error)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                values: dict[str, Any] | None = None) -> Config:
    """Load a `Config` from an optional YAML file, `--set` overrides and typed values.

    Keys not given keep their defaults. Overrides are applied on top of the
    file, then `values` (dotted key -> value, e.g. a command's own flags) on
    top of both, and all are validated together.

    Raises:
        ConfigError: see `read_yaml_mapping` and `from_dict`; the message names
            the file (or --set, or the flags) and the dotted key.
    """
    data = read_yaml_mapping(path) if path is not None else {}
    layers = []  # what was laid over the file, for messages: "--set", "flags"
    if overrides:
        data = apply_overrides(data, overrides)
        layers.append("--set")
    if values:
        for dotted, value in values.items():
            _set_dotted(data, dotted, value, dotted)
        layers.append("flags")
    if path is None:
        source = " and ".join(layers) or "config"
    else:
        source = f"{path} with {' and '.join(layers)}" if layers else str(path)
    return from_dict(Config, data, source=source)
