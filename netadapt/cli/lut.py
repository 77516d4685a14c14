"""`netadapt lut build|validate|predict`: latency lookup tables.

The base network and target come from `--config FILE` (+ `--set`) or the
flags shared with `netadapt bench`; the table file from `--table FILE`
(default: the config's `lut.table`, else one file per target fingerprint
under the cache folder, where `netadapt search` looks too).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from pathlib import Path

from mobilenetv3 import NetSpec
from netadapt.benchmark import Measurement, measure_best_of
from netadapt.measurers import make_measurer
from netadapt.cli.bench import Resolved, add_target_arguments, resolve
from netadapt.errors import ConfigError
from netadapt.lut import (
    Correction,
    calibration_specs,
    LatencyTable,
    first_iteration_specs,
    network_key,
    random_subnetwork,
    summarize_validation,
    table_filename,
    validate,
)

__all__ = ["default_table_path", "register"]


def default_table_path(fingerprint: dict) -> Path:
    """<cache>/luts/lut-v<format>-<short hash of the fingerprint>.csv: one file per target, shared with `search`."""
    try:
        from netadapt.base import cache_dir
    except ImportError:  # the base-network cache arrives with the search; until then, a local folder
        return Path("runs") / "luts" / table_filename(fingerprint)
    return cache_dir() / "luts" / table_filename(fingerprint)


def _common(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser)
    parser.add_argument("--table", metavar="FILE", help="table file (default: lut.table, else ~/.cache/netadapt/luts/lut-v<format>-<fingerprint>.csv)")
    parser.add_argument("--granularity", type=int, help="channel granularity (default: lut.granularity, 8)")
    parser.add_argument("--min-channels", type=int, help="smallest group width (default: lut.min_channels, 8)")
    parser.add_argument("--seed", type=int, help="seed of the random sub-networks (default: lut.seed)")
    parser.add_argument(
        "--passes", type=int, default=1,
        help="measure each new entry / whole network in this many passes, keeping the best (default 1)",
    )
    parser.add_argument(
        "--network-seconds", type=float, metavar="S",
        help="measure each whole network (correction, validation) for at least S seconds (default: "
             "measure.min_seconds); a 7 ms network needs a few hundred runs for the fastest one to settle",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("lut", help="build, validate and query latency lookup tables")
    commands = parser.add_subparsers(dest="lut_command", metavar="SUBCOMMAND", required=True)

    build = commands.add_parser("build", help="measure the entries NetAdapt's first iteration needs")
    _common(build)
    build.add_argument(
        "--fit-samples", type=int, help="whole networks measured for the correction (default: lut.correction_samples)"
    )
    build.set_defaults(handler=build_command)

    check = commands.add_parser("validate", help="predicted vs measured latency of random sub-networks")
    _common(check)
    check.add_argument("--samples", type=int, default=20, help="random sub-networks to measure (default 20)")
    check.add_argument("--out", metavar="FILE.csv", help="write one row per sub-network")
    check.set_defaults(handler=validate_command)

    predict = commands.add_parser("predict", help="predict a spec's latency from the table")
    _common(predict)
    predict.add_argument("--spec", metavar="FILE", help="a spec YAML file (default: the base network)")
    predict.set_defaults(handler=predict_command)


def _open(args: argparse.Namespace) -> tuple[Resolved, LatencyTable, int, int, int]:
    resolved = resolve(args)
    lut = resolved.config.lut
    granularity = args.granularity if args.granularity is not None else lut.granularity
    min_channels = args.min_channels if args.min_channels is not None else lut.min_channels
    seed = args.seed if args.seed is not None else lut.seed
    if args.passes < 1:
        raise ConfigError(f"--passes must be >= 1, got {args.passes}")
    if granularity < 1 or min_channels < 1:
        raise ConfigError(f"--granularity and --min-channels must be >= 1, got {granularity}, {min_channels}")
    measurer = make_measurer(resolved.config.target, resolved.config.measure, resolved.input_shape)
    path = Path(args.table or lut.table or default_table_path(measurer.fingerprint()))
    table = LatencyTable.open(path, measurer, resolved.input_shape)
    return resolved, table, granularity, min_channels, seed


def _measure_whole(args: argparse.Namespace, resolved: Resolved, table: LatencyTable, specs: list[NetSpec]) -> list[Measurement]:
    """The specs measured whole, in `--passes` passes (best kept), for `--network-seconds` each.

    Only the measuring time differs from the table's measurer, so the
    fingerprint (and thus the table) is the same.
    """
    measurer = table.measurer
    if args.network_seconds is not None:
        if args.network_seconds < 0:
            raise ConfigError(f"--network-seconds must be >= 0, got {args.network_seconds}")
        measure_cfg = dataclasses.replace(resolved.config.measure, min_seconds=args.network_seconds)
        measurer = make_measurer(resolved.config.target, measure_cfg, resolved.input_shape)
    return measure_best_of(specs, measurer, resolved.input_shape, args.passes)


def _fit(args: argparse.Namespace, resolved: Resolved, table: LatencyTable, specs: list[NetSpec]) -> Correction:
    table.fill(specs, progress=True, passes=args.passes)  # entries first, so no measurement overlaps them
    return table.fit_correction(specs, measured=_measure_whole(args, resolved, table, specs))


def build_command(args: argparse.Namespace) -> int:
    resolved, table, granularity, min_channels, seed = _open(args)
    base = resolved.spec
    specs = first_iteration_specs(base, granularity, min_channels)
    before = len(table)
    print(f"table {table.path}: {before} entries; base {base.name or 'spec'} at {'x'.join(map(str, resolved.input_shape))}, "
          f"{len(specs) - 1} single-group cuts at granularity {granularity}")
    start = time.perf_counter()
    measured = table.fill(specs, progress=True, passes=args.passes)
    elapsed = time.perf_counter() - start
    rate = measured / elapsed if elapsed > 0 and measured else 0.0
    print(f"measured {measured} entries in {elapsed:.1f} s ({rate:.2f} entries/s); table now holds {len(table)}")
    samples = args.fit_samples if args.fit_samples is not None else resolved.config.lut.correction_samples
    if samples > 0:
        correction = _fit(args, resolved, table, calibration_specs(base, samples, granularity, min_channels, seed))
        print(f"correction for {network_key(base, resolved.input_shape)} ({correction.form}): {correction.describe()}")
    print(f"base predicted {table.predict_ms(base):.3f} ms")
    return 0


def validate_command(args: argparse.Namespace) -> int:
    resolved, table, granularity, min_channels, seed = _open(args)
    if args.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {args.samples}")
    base = resolved.spec
    if table.correction_for(base) is None:
        samples = resolved.config.lut.correction_samples
        print(f"no correction for {network_key(base, resolved.input_shape)} yet: fitting it on {samples} whole networks")
        _fit(args, resolved, table, calibration_specs(base, samples, granularity, min_channels, seed))
    rng = random.Random(f"validate-{seed}")  # never the correction's draws
    specs = [random_subnetwork(base, rng, granularity, min_channels) for _ in range(args.samples)]
    table.fill(specs, progress=True, passes=args.passes)
    frame = validate(table, specs, measured=_measure_whole(args, resolved, table, specs))
    if args.out:
        from mobilenetv3.fileio import atomic_write_text

        atomic_write_text(Path(args.out), frame.to_csv(index=False))
    print(f"{'#':>3} {'predicted':>10} {'measured':>10} {'error':>8}")
    for row in frame.itertuples():
        print(f"{row.index:>3} {row.predicted_ms:>10.3f} {row.measured_ms:>10.3f} {row.error_pct:>7.2f}%")
    s = summarize_validation(frame)
    print(
        f"{s['samples']} sub-networks: median |error| {s['median_abs_error_pct']:.2f}%, "
        f"within 5%: {100 * s['within_5_pct']:.0f}%, within 10%: {100 * s['within_10_pct']:.0f}%, "
        f"max |error| {s['max_abs_error_pct']:.2f}%, Spearman {s['spearman']:.3f}"
    )
    if args.out:
        print(f"wrote {args.out}")
    return 0


def predict_command(args: argparse.Namespace) -> int:
    resolved, table, *_ = _open(args)
    spec = resolved.spec
    if args.spec:
        try:
            spec = NetSpec.load(args.spec)
        except FileNotFoundError:
            raise ConfigError(f"--spec {args.spec}: file not found") from None
        except ValueError as error:
            raise ConfigError(str(error)) from None
    before = len(table)
    predicted = table.predict_ms(spec)
    correction = table.correction_for(spec)
    note = f"correction {correction.form}: {correction.describe()}" if correction else "no correction fitted: raw sum, overshoots"
    print(f"{spec.name or 'spec'}: predicted {predicted:.3f} ms ({note}); {len(table) - before} entries measured on demand")
    return 0
