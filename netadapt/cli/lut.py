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
from typing import TYPE_CHECKING, Callable

from netadapt.cli.bench import Resolved, add_target_arguments, resolve
from netadapt.config import load_config
from netadapt.errors import ConfigError

if TYPE_CHECKING:
    from mobilenetv3 import NetSpec
    from netadapt.benchmark import Measurement
    from netadapt.latency import Correction, LatencyTable

__all__ = ["register"]


def _common(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser)
    parser.add_argument("--table", metavar="FILE", help="table file (default: lut.table, else ~/.cache/netadapt/luts/lut-v<format>-<fingerprint>.csv)")
    parser.add_argument("--granularity", type=int, help="channel granularity (default: lut.granularity, 8)")
    parser.add_argument("--min-channels", type=int, help="smallest group width (default: lut.min_channels, 8)")
    parser.add_argument("--seed", type=int, help="seed of the random sub-networks (default: lut.seed)")
    parser.add_argument(
        "--passes", type=int,
        help="measure each new entry / whole network in this many passes, keeping the best "
             "(default: lut.entry_passes, 2, for entries and lut.network_passes, 8, for whole networks)",
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
    build.add_argument("--rebuild", action="store_true",
                       help="measure every entry of an existing table again, under new reference units")
    build.set_defaults(handler=build_command)

    check = commands.add_parser(
        "validate", help="predicted vs measured latency of random cuts and search-like trajectories, or of a finished run"
    )
    _common(check)
    check.add_argument("--samples", type=int, default=20, help="random sub-networks to measure (default 20)")
    check.add_argument("--trajectory", type=int, default=20, metavar="N",
                       help="networks from search-like paths of successive cuts down to the floor (default 20)")
    check.add_argument("--removals", type=int, default=0, metavar="N",
                       help="networks with one to three residual blocks removed, as depth proposals make (default 0)")
    check.add_argument("--run", metavar="RUN",
                       help="instead: re-measure a finished search's networks against the predictions it recorded")
    check.add_argument("--out", metavar="FILE.csv", help="write one row per network")
    check.set_defaults(handler=validate_command)

    predict = commands.add_parser("predict", help="predict a spec's latency from the table")
    _common(predict)
    predict.add_argument("--spec", metavar="FILE", help="a spec YAML file (default: the base network)")
    predict.set_defaults(handler=predict_command)


def _open(args: argparse.Namespace) -> tuple[Resolved, LatencyTable, int, int, int]:
    from netadapt.latency import LatencyTable, table_path
    from netadapt.measurers import make_measurer

    resolved = resolve(args)
    lut = resolved.config.lut
    granularity = args.granularity if args.granularity is not None else lut.granularity
    min_channels = args.min_channels if args.min_channels is not None else lut.min_channels
    seed = args.seed if args.seed is not None else lut.seed
    if args.passes is not None and args.passes < 1:
        raise ConfigError(f"--passes must be >= 1, got {args.passes}")
    if granularity < 1 or min_channels < 1:
        raise ConfigError(f"--granularity and --min-channels must be >= 1, got {granularity}, {min_channels}")
    measurer = make_measurer(resolved.config.target, resolved.config.measure, resolved.input_shape)
    path = table_path(args.table or lut.table, measurer.fingerprint())
    table = LatencyTable.open(path, measurer, resolved.input_shape, reference_units=lut.reference_units)
    if not getattr(args, "rebuild", False):
        table.ensure_consistent(lut.drift_check, lut.drift_sample, lut.drift_tolerance_pct)
    return resolved, table, granularity, min_channels, seed


def _entry_passes(args: argparse.Namespace, resolved: Resolved) -> int:
    return args.passes if args.passes is not None else resolved.config.lut.entry_passes


def _network_passes(args: argparse.Namespace, resolved: Resolved) -> int:
    return args.passes if args.passes is not None else resolved.config.lut.network_passes


def _measure_whole(args: argparse.Namespace, resolved: Resolved, table: LatencyTable, specs: list[NetSpec],
                   between: Callable[[], object]) -> list[Measurement]:
    """The specs measured whole and gauged, for `--network-seconds` each, in the network passes: half
    before `between()` (the entries' fill) and half after it (`LatencyTable.measure_networks_around`),
    each network's best kept.

    Only the measuring time differs from the table's measurer, so the
    fingerprint (and thus the table) is the same.
    """
    from netadapt.benchmark import best_of
    from netadapt.measurers import make_measurer

    measurer = table.measurer
    if args.network_seconds is not None:
        if args.network_seconds < 0:
            raise ConfigError(f"--network-seconds must be >= 0, got {args.network_seconds}")
        measure_cfg = dataclasses.replace(resolved.config.measure, min_seconds=args.network_seconds)
        measurer = make_measurer(resolved.config.target, measure_cfg, resolved.input_shape)
    return best_of(table.measure_networks_around(specs, _network_passes(args, resolved), between, measurer))


def _fit(args: argparse.Namespace, resolved: Resolved, table: LatencyTable, specs: list[NetSpec], floor: NetSpec,
         fill_first: Callable[[], object] = lambda: None) -> Correction:
    """Fit the correction on `specs`, measured whole around `fill_first()` and the fill of their own
    entries; `floor` (the search space's) must predict positive."""

    def fill() -> None:
        fill_first()
        table.fill(specs + [floor], progress=True, passes=_entry_passes(args, resolved))

    return table.fit_correction(specs, measured=_measure_whole(args, resolved, table, specs, fill), unfitted=[floor])


def build_command(args: argparse.Namespace) -> int:
    from netadapt.groups import lower_bound_spec
    from netadapt.latency import calibration_specs, first_iteration_specs, network_key

    resolved, table, granularity, min_channels, seed = _open(args)
    base = resolved.spec
    specs = first_iteration_specs(base, granularity, min_channels)
    before = len(table)
    print(f"table {table.path}: {before} entries; base {base.name or 'spec'} at {'x'.join(map(str, resolved.input_shape))}, "
          f"{len(specs) - 1} single-group cuts at granularity {granularity}")
    if args.rebuild:
        print(f"re-measuring all {len(table)} entries under new reference units")
        table.rebuild()

    def fill_first_iteration() -> None:
        start = time.perf_counter()
        measured = table.fill(specs, progress=True, passes=_entry_passes(args, resolved))
        elapsed = time.perf_counter() - start
        rate = measured / elapsed if elapsed > 0 and measured else 0.0
        print(f"measured {measured} entries in {elapsed:.1f} s ({rate:.2f} entries/s); table now holds {len(table)}")

    samples = args.fit_samples if args.fit_samples is not None else resolved.config.lut.correction_samples
    if samples > 0:
        # The correction's networks are measured whole before and after the long fill (see _measure_whole).
        correction = _fit(args, resolved, table, calibration_specs(base, samples, granularity, min_channels, seed),
                          lower_bound_spec(base, min_channels, granularity), fill_first_iteration)
        print(f"correction for {network_key(base, resolved.input_shape)} ({correction.form}): {correction.describe()}")
    else:
        fill_first_iteration()
    print(f"base predicted {table.predict_ms(base):.3f} ms")
    return 0


def validate_command(args: argparse.Namespace) -> int:
    from netadapt.groups import lower_bound_spec
    from netadapt.latency import (
        calibration_specs,
        network_key,
        random_subnetwork,
        summarize_validation,
        trajectory_specs,
        validate,
    )
    from netadapt.latency.validate import removal_specs

    if args.run:
        return _validate_run_command(args)
    resolved, table, granularity, min_channels, seed = _open(args)
    if min(args.samples, args.trajectory, args.removals) < 0 or args.samples + args.trajectory + args.removals < 1:
        raise ConfigError("--samples, --trajectory and --removals must be >= 0 and not all 0, got "
                          f"{args.samples}, {args.trajectory}, {args.removals}")
    base = resolved.spec
    if table.correction_specs(base) == 0:
        samples = resolved.config.lut.correction_samples
        print(f"no correction for {network_key(base, resolved.input_shape)} yet: fitting it on {samples} whole networks")
        _fit(args, resolved, table, calibration_specs(base, samples, granularity, min_channels, seed),
             lower_bound_spec(base, min_channels, granularity))
    rng = random.Random(f"validate-{seed}")  # never the correction's draws
    random_cuts = [random_subnetwork(base, rng, granularity, min_channels) for _ in range(args.samples)]
    path_cuts = trajectory_specs(base, args.trajectory, random.Random(f"validate-path-{seed}"), granularity, min_channels)
    removed = removal_specs(base, args.removals, random.Random(f"validate-removals-{seed}"), granularity, min_channels)
    specs = random_cuts + path_cuts + removed
    frame = validate(table, specs, measured=_measure_whole(
        args, resolved, table, specs, lambda: table.fill(specs, progress=True, passes=_entry_passes(args, resolved))))
    frame.insert(1, "kind", ["random"] * len(random_cuts) + ["trajectory"] * len(path_cuts) + ["removal"] * len(removed))
    if args.out:
        from netadapt.io import atomic_write_text

        atomic_write_text(Path(args.out), frame.to_csv(index=False))
    print(f"{'#':>3} {'kind':>10} {'predicted':>10} {'measured':>10} {'error':>8}")
    for row in frame.itertuples():
        print(f"{row.index:>3} {row.kind:>10} {row.predicted_ms:>10.3f} {row.measured_ms:>10.3f} {row.error_pct:>7.2f}%")
    for kind, part in [("random cuts", frame[frame["kind"] == "random"]), ("trajectory networks", frame[frame["kind"] == "trajectory"]),
                       ("networks with blocks removed", frame[frame["kind"] == "removal"]), ("all", frame)]:
        if len(part):
            s = summarize_validation(part)
            print(
                f"{s['samples']} {kind}: median |error| {s['median_abs_error_pct']:.2f}%, "
                f"within 5%: {100 * s['within_5_pct']:.0f}%, within 10%: {100 * s['within_10_pct']:.0f}%, "
                f"max |error| {s['max_abs_error_pct']:.2f}%, Spearman {s['spearman']:.3f}"
            )
    print(f"machine now at {table.last_gauge:.3f}x the table's reference state (figures above are on the table's scale)")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _validate_run_command(args: argparse.Namespace) -> int:
    """`lut validate --run RUN`: the run's networks re-measured whole, here and now, against its records."""
    from netadapt.latency.validate import summarize_run, validate_run
    from netadapt.measurers import make_measurer
    from netadapt.rundir import RunDir

    run = RunDir(args.run)
    networks = run.iteration_networks()  # refuses a directory that is not a run, naming it
    config = load_config(run.config_path, args.overrides)
    run.confirm_target(config.target.device, config.target.token_file, args.target)
    shape = config.input_shape()
    measurer = make_measurer(config.target, config.measure, shape)
    # As many passes as the search took of each network (measure.repeats), so the two figures are taken alike.
    passes = args.passes if args.passes is not None else config.measure.repeats
    print(f"run {run.path}: {len(networks)} networks (base and iterations), re-measured whole at "
          f"{'x'.join(map(str, shape))} in {passes} interleaved passes")
    frame = validate_run(networks, measurer, shape, passes)
    if args.out:
        from netadapt.io import atomic_write_text

        atomic_write_text(Path(args.out), frame.to_csv(index=False))
    print(f"{'iter':>4} {'predicted':>10} {'table':>10} {'in-search':>10} {'re-measured':>11} {'error':>8} "
          f"{'in-search':>9} {'of base':>8}")
    for row in frame.itertuples():
        print(f"{row.iteration:>4} {row.predicted_ms:>10.4f} {row.table_predicted_ms:>10.4f} {row.in_search_ms:>10.4f} "
              f"{row.remeasured_ms:>11.4f} {row.error_pct:>7.2f}% {row.in_search_error_pct:>8.2f}% {row.ratio_to_base:>8.3f}")
    s = summarize_run(frame)
    print(f"predictions the run used: median |error| {s['median_abs_error_pct']:.2f}%, within 5%: "
          f"{100 * s['within_5_pct']:.0f}%, max {s['max_abs_error_pct']:.2f}% (the table's own: median "
          f"{s['median_abs_table_error_pct']:.2f}%)")
    print(f"the run's own figures against these: best pass median |difference| {s['median_abs_in_search_error_pct']:.2f}%, "
          f"max {s['max_abs_in_search_error_pct']:.2f}%; steady figure median {s['median_abs_steady_error_pct']:.2f}%, "
          f"max {s['max_abs_steady_error_pct']:.2f}%; final network at {s['final_ratio_to_base']:.3f} of the base")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def predict_command(args: argparse.Namespace) -> int:
    from netadapt.io import load_spec

    resolved, table, *_ = _open(args)
    spec = resolved.spec
    if args.spec:
        spec = load_spec(args.spec, "--spec")
    before = len(table)
    predicted = table.predict_ms(spec)
    correction = table.correction_for(spec)
    note = f"correction {correction.form}: {correction.describe()}" if correction else "no correction fitted: raw sum, overshoots"
    print(f"{spec.name or 'spec'}: predicted {predicted:.3f} ms ({note}); {len(table) - before} entries measured on demand")
    return 0
