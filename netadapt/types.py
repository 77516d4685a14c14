"""The enumerations that the config, the measuring code and the CLI share.

Each is a tuple of the accepted names, owned here: the config's `Literal`
fields, the CLI's `choices` and the library's checks all read it, so a new
choice is added in one place. Imports nothing heavy, so the CLI parser can be
built without torch or onnxruntime.
"""

from __future__ import annotations

from mobilenetv3.presets import PRESETS as _PRESET_BUILDERS

__all__ = [
    "CHANNEL_COUNTS",
    "DATA_CACHES",
    "DATASETS",
    "DATASET_CLASSES",
    "DRIFT_CHECKS",
    "EXECUTOR_KINDS",
    "ISOLATIONS",
    "OPTIMIZATION_LEVELS",
    "PRECISIONS",
    "PRESETS",
    "PRIORITIES",
    "SCORES",
    "SELECTION_RULES",
    "STATISTICS",
]

PRESETS = tuple(_PRESET_BUILDERS)  # MobileNetV3 variants: "large", "small"; the generator owns them

DATASETS = ("embedded", "fashion-mnist", "cifar10", "folder")  # data.dataset
# Classes of the datasets that have a fixed number; a folder dataset has as many as it has sub-folders.
DATASET_CLASSES = {"embedded": 10, "fashion-mnist": 10, "cifar10": 10}
CHANNEL_COUNTS = (1, 3)  # data.channels: grayscale or RGB
DATA_CACHES = ("auto", "memory", "stream")  # data.cache: decoded in memory, or read from disk per batch

PRECISIONS = ("fp32", "bf16", "fp16")  # train.precision: float32, or autocast to bfloat16 / float16

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")  # onnxruntime's graph optimisation levels
PRIORITIES = ("normal", "high", "realtime")  # scheduling of the measuring thread
STATISTICS = ("quiet", "median", "p10", "min")  # which figure of a Measurement the project uses
ISOLATIONS = ("process", "none")  # where a search measures on a local target

DRIFT_CHECKS = ("remeasure", "refuse", "off")  # what a table that no longer fits its machine gets

SELECTION_RULES = ("accuracy", "accuracy_per_latency")  # how an iteration picks its winner
SCORES = ("accuracy", "loss")  # what ranks candidates on the holdout

EXECUTOR_KINDS = ("local", "ray")  # where candidates fine-tune
