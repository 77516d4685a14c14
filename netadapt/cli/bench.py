"""`netadapt bench`: measure an ONNX file or a preset on a target.

The target flags here (`--preset`, `--width`, `--input`, `--threads`,
`--provider`, ...) are shared with the `lut` commands; each one, when given,
overrides the value from `--config FILE`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from netadapt.cli.common import add_config_arguments, parse_input_shape
from netadapt.config import Config, load_config
from netadapt.errors import ConfigError
from netadapt.types import DATASET_CLASSES, OPTIMIZATION_LEVELS, PRESETS, PRIORITIES, STATISTICS

if TYPE_CHECKING:
    from mobilenetv3 import NetSpec
    from netadapt.benchmark import Measurement, Target

__all__ = ["Resolved", "add_target_arguments", "format_measurement", "register", "resolve"]

def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """Network and target flags shared by `bench` and `lut`; None means "from the config"."""
    add_config_arguments(parser)
    parser.add_argument("--preset", choices=PRESETS, help="MobileNetV3 variant (default: config's model.preset)")
    parser.add_argument("--width", type=float, help="width multiplier (default: config's model.width)")
    parser.add_argument("--classes", type=int, help="number of classes (default: the config's dataset; 1000 for a preset without --config)")
    parser.add_argument(
        "--input", metavar="NxCxHxW", help="input shape (default: the config's data, or 1x3x224x224 without --config)"
    )
    parser.add_argument("--threads", type=int, help="intra-op threads (default: target.threads, 1)")
    parser.add_argument("--inter-op-threads", type=int, help="inter-op threads (default: target.inter_op_threads)")
    parser.add_argument("--provider", help="onnxruntime execution provider (default CPUExecutionProvider)")
    parser.add_argument("--target", metavar="DEVICE", help="'local' or remote://HOST:PORT (default: target.device)")
    parser.add_argument(
        "--optimization-level", choices=OPTIMIZATION_LEVELS, help="graph optimisation level"
    )
    parser.add_argument("--warmup", type=int, help="warm-up runs (default: measure.warmup_runs)")
    parser.add_argument("--min-runs", type=int, help="time at least this many runs (default: measure.min_runs)")
    parser.add_argument("--min-seconds", type=float, help="... and for at least this long (default: measure.min_seconds)")
    parser.add_argument(
        "--priority", choices=PRIORITIES, help="scheduling of the measuring thread (default: measure.priority)"
    )
    parser.add_argument(
        "--statistic", choices=STATISTICS,
        help="the figure used: quiet = lowest round median, min = fastest run (default: measure.statistic)",
    )


@dataclass(frozen=True)
class Resolved:
    """What a command measures: the config after flags, the base spec, the input and the target."""

    config: Config
    spec: NetSpec
    input_shape: tuple[int, int, int, int]
    target: Target


def resolve(args: argparse.Namespace) -> Resolved:
    """Merge `--config`/`--set` with the shared flags; flags win where given."""
    from netadapt.benchmark import Target
    from netadapt.train import model_spec

    flags = {
        "target.threads": args.threads,
        "target.inter_op_threads": args.inter_op_threads,
        "target.provider": args.provider,
        "target.device": args.target,
        "target.optimization_level": args.optimization_level,
        "measure.warmup_runs": args.warmup,
        "measure.min_runs": args.min_runs,
        "measure.min_seconds": args.min_seconds,
        "measure.priority": args.priority,
        "measure.statistic": args.statistic,
        "model.preset": args.preset,
        "model.width": args.width,
    }
    values = {key: value for key, value in flags.items() if value is not None}
    if args.preset is not None or args.width is not None:
        values["model.spec"] = None  # an explicit preset on the command line replaces a spec file
    shape = parse_input_shape(args.input) if args.input is not None else None
    if shape is not None:
        values["target.batch"] = shape[0]
    # Through the typed loader, so a flag's value is checked like the config key it sets.
    config = load_config(args.config, args.overrides, values)
    if shape is None:
        shape = config.input_shape() if args.config is not None else (config.target.batch, 3, 224, 224)
    if args.classes is not None:
        if args.classes < 1:
            raise ConfigError(f"--classes must be >= 1, got {args.classes}")
        classes = args.classes
    elif args.config is not None:
        classes = DATASET_CLASSES.get(config.data.dataset)  # a folder dataset: the spec's own (or 1000)
    else:
        classes = None  # the spec file's own, or ImageNet's 1000 for a preset
    # The same spec the search would adapt: the input's channels, the data's classes.
    spec = model_spec(config.model, shape[1], classes)
    target = Target.from_config(config.target, config.measure, shape)
    return Resolved(config, spec, target.input_shape, target)


def format_measurement(label: str, m: Measurement) -> str:
    """Human-readable lines for one measurement."""
    fp = m.fingerprint
    return "\n".join(
        [
            label,
            f"  latency {m.latency_ms:.3f} ms   quiet {m.quiet_ms:.3f} (lowest round median)   "
            f"median {m.median_ms:.3f}   p10 {m.p10_ms:.3f}   min {m.min_ms:.3f}   p90 {m.p90_ms:.3f}   mean {m.mean_ms:.3f}   "
            f"cv {100 * m.cv:.1f}%   runs {m.runs}",
            f"  target: {fp.get('cpu')} ({fp.get('cores')} cores), onnxruntime {fp.get('onnxruntime')}, "
            f"{fp.get('provider')}, {fp.get('threads')} thread(s), optimisation {fp.get('optimization_level')}",
        ]
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="measure the latency of an ONNX model or a preset")
    parser.add_argument("model", nargs="?", metavar="MODEL.onnx", help="an ONNX file (default: the preset)")
    add_target_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(handler=bench_command)


def bench_command(args: argparse.Namespace) -> int:
    from netadapt.benchmark import measure_spec
    from netadapt.measurers import make_measurer

    resolved = resolve(args)
    measurer = make_measurer(resolved.config.target, resolved.config.measure, resolved.input_shape)
    if args.model:
        path = Path(args.model)
        if not path.is_file():
            raise ConfigError(f"{path}: ONNX file not found")
        measurement = measurer.measure(path.read_bytes())
        label = str(path)
    else:
        measurement = measure_spec(resolved.spec, measurer, resolved.input_shape)
        label = f"{resolved.spec.name or 'spec'} at {'x'.join(map(str, resolved.input_shape))}"
    if args.json:
        # An ONNX file carries its own input shape; --input only fills dynamic dimensions.
        shape = list(resolved.input_shape) if not args.model or args.input else None
        print(json.dumps({"model": label, "input_shape": shape, **measurement.to_dict()}))
    else:
        print(format_measurement(label, measurement))
    return 0
