"""The headline comparison (issue 6): NetAdapt's family against width multipliers.

The NetAdapt paper reports up to 1.7x lower measured latency than MobileNet
width multipliers at equal or higher accuracy. This script repeats that
comparison on the configured data (default: the embedded Fashion-MNIST
subset, MobileNetV3-Small 1.0 at 28x28) and the configured target (default:
this CPU), in one run:

1. budget: the multiplier networks are measured first (latency needs no
   trained weights) and the search's budget is set to `--budget-margin`
   (0.9) times the lowest of them, normally the smallest width's, so the
   family spans the whole multiplier curve. It is never set below 1.1x the
   measured latency of the search space's smallest network, which the search
   could not reach. A budget given in the config (search.budget_ms or
   search.budget_ratio) is used as it is.
2. base, search: the cached base network (`obtain_base_model`), then
   `run_search`; an existing `--run` is resumed or, when finished, reused.
3. multipliers: the base architecture at each `--widths` multiplier, trained
   from scratch with the base's recipe (`train` section) for as many steps as
   the search's final network has had: base steps + short-term fine-tunes
   along its lineage (iterations x search.finetune_steps) + the search's
   long fine-tune + `--long-finetune`. Checkpoints are kept in RUN/baseline/.
4. family: the run's Pareto members, exported to RUN/family with
   `export_family` (fine-tuned `--long-finetune` steps first when given),
   which also evaluates their test accuracy.
5. measure: every multiplier and every member, measured whole in the same
   `--passes` interleaved passes on the same target, keeping each network's
   best (`measure_best_of`). On a shared VM one network's figure moves by
   +-30% between moments, so figures from different moments (search time,
   export time) are never compared here.
6. write: OUT/headline.csv (one row per network), OUT/comparison.csv (one row
   per multiplier: NetAdapt's speed-up at matched accuracy, its accuracy gain
   at matched latency, whether a member dominates), OUT/headline.md (both
   tables, the summary, the machine and the command), OUT/pareto.png (the
   figures of step 5) and RUN/baseline.csv, then `netadapt report RUN`
   (RUN/pareto.png, which plots the family at its search-time latencies).

    python benchmarks/headline.py                          # defaults; meant to take under 60 min on 2 cores
    python benchmarks/headline.py --run runs/search-<time> # reuse a `netadapt search` run as it is
    NETADAPT_CACHE=/tmp/hl-cache python benchmarks/headline.py --out /tmp/hl --run /tmp/hl/run \\
        --set train.steps=30 --set search.finetune_steps=2 --set search.max_iterations=2 \\
        --widths 1.0 0.35 --passes 2                       # smoke test, a few minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pandas as pd
import torch

from mobilenetv3 import NetSpec, build, count, preset
from mobilenetv3.fileio import atomic_write_text
from netadapt.base import obtain_base_model
from netadapt.benchmark import cpu_model, measure_best_of
from netadapt.cli.common import add_config_arguments
from netadapt.config import Config, load_config, to_dict
from netadapt.data import Dataset, load_dataset
from netadapt.errors import ConfigError, NetadaptError
from netadapt.family import export_family
from netadapt.groups import lower_bound_spec
from netadapt.measurers import make_measurer
from netadapt.report import BASELINE_FILE, compare_to_baseline, plot_pareto, report
from netadapt.rundir import RunDir
from netadapt.search import run_search
from netadapt.train import evaluate, load_checkpoint, save_checkpoint, train

NETWORK_COLUMNS = ["name", "kind", "width", "iteration", "measured_ms", "test_acc", "holdout_acc", "params", "macs",
                   "train_steps"]
# Budget keys are chosen by this script for a new run, so a run differs from the requested config in them.
BUDGET_KEYS = {"search.budget_ms", "search.budget_ratio"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--out", default="benchmarks/results/headline", metavar="DIR",
                        help="where the tables and the plot go (default: %(default)s)")
    parser.add_argument("--run", default="runs/headline", metavar="DIR",
                        help="the search's run directory: created, resumed or reused (default: %(default)s)")
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.35], metavar="W",
                        help="width multipliers of the baseline (default: %(default)s)")
    # NetAdapt Alg. 1 ends with a long-term fine-tune; the multipliers get the same steps on top.
    parser.add_argument("--long-finetune", type=int, default=200, metavar="STEPS",
                        help="fine-tune each family member this many steps; the multipliers train as many more "
                             "(default %(default)s)")
    parser.add_argument("--passes", type=int, default=10,
                        help="interleaved measuring passes over all networks; each keeps its best (default 10)")
    parser.add_argument("--budget-margin", type=float, default=0.9,
                        help="search budget as a fraction of the fastest multiplier's latency (default 0.9)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args()
    try:
        return headline(args)
    except NetadaptError as error:
        print(f"headline: error: {error}", file=sys.stderr)
        return 2


def headline(args: argparse.Namespace) -> int:
    if args.long_finetune < 0 or args.passes < 1 or min(args.widths) <= 0 or not 0 < args.budget_margin <= 1:
        raise ConfigError("need --long-finetune >= 0, --passes >= 1, --widths > 0 and 0 < --budget-margin <= 1")
    progress = not args.no_progress
    command = shlex.join(["python", *sys.argv])
    machine = (f"{platform.platform()}; {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, "
               f"onnxruntime {ort.__version__}")
    print(f"command: {command}\nmachine: {machine}")
    phases: dict[str, float] = {}
    clock = time.perf_counter()

    def phase_done(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = now - clock
        clock = now
        print(f"[{name}: {phases[name]:.1f} s]")

    run = RunDir(args.run)
    config = run_config(args, run)
    if config.model.spec is not None:
        raise ConfigError("model.spec: width multipliers need a preset base (model.preset), not a spec file")
    dataset = load_dataset(config.data)
    shape = (config.target.batch, dataset.in_channels, config.data.resolution, config.data.resolution)
    measurer = make_measurer(config.target, config.measure, shape)
    multipliers = [(width, preset(config.model.preset, width=width, num_classes=dataset.num_classes,
                                  in_channels=dataset.in_channels)) for width in args.widths]
    names = [f"{config.model.preset}-{width:.2f}" for width, _ in multipliers]

    new_run = run.read_state() is None and not run.config_path.is_file()
    if new_run and config.search.budget_ms is None and config.search.budget_ratio is None:
        budget_ms = choose_budget(config, dataset, [spec for _, spec in multipliers], names, measurer, shape,
                                  args.passes, args.budget_margin)
        config = dataclasses.replace(config, search=dataclasses.replace(config.search, budget_ms=budget_ms))
    phase_done("setup and budget")

    if run.read_state() is None:  # a new run, or one killed before its base was committed
        obtain_base_model(config, dataset, progress=progress)
        phase_done("base network")
    if new_run:
        result = run_search(config, out=run.path, dataset=dataset, progress=progress)
    else:
        print(f"reusing the search run {run.path}: its config.yaml decides every setting")
        result = run_search(resume=run.path, dataset=dataset, progress=progress)
    phase_done("search")

    state = run.read_state()
    lineage_steps = config.train.steps + state.iteration * config.search.finetune_steps
    steps = lineage_steps + config.search.long_finetune_steps + args.long_finetune
    baseline = train_multipliers(config, dataset, run, multipliers, names, steps, progress)
    phase_done("multipliers")

    suffix = f"-long{args.long_finetune}" if args.long_finetune else ""
    exported = export_family(run.path, run.path / f"family{suffix}", args.long_finetune, dataset=dataset,
                             progress=progress)
    family = pd.DataFrame({
        "name": [f"netadapt-{int(i):02d}" for i in exported["iteration"]],
        "kind": "netadapt",
        "width": math.nan,
        "iteration": exported["iteration"].astype(int),
        "test_acc": exported["test_acc"],
        "holdout_acc": exported["holdout_acc"],
        "params": exported["params"],
        "macs": exported["macs"],
        "train_steps": config.train.steps + exported["iteration"] * config.search.finetune_steps + args.long_finetune,
    })
    family_specs = [NetSpec.load(run.path / f"family{suffix}" / name / "spec.yaml") for name in exported["name"]]
    phase_done("family")

    specs = [spec for _, spec in multipliers] + family_specs
    print(f"measuring {len(specs)} networks together, {args.passes} interleaved passes ...")
    figures = [m.latency_ms for m in measure_best_of(specs, measurer, shape, args.passes)]
    baseline["measured_ms"] = figures[: len(multipliers)]
    family["measured_ms"] = figures[len(multipliers):]
    phase_done("measure")

    networks = pd.concat([baseline, family], ignore_index=True)[NETWORK_COLUMNS]
    comparison = compare_to_baseline(family, baseline)
    summary = summary_lines(comparison, family, result.budget_ms, result.stop_reason)
    out = Path(args.out)
    write_csv(out / "headline.csv", networks)
    write_csv(out / "comparison.csv", comparison)
    write_csv(run.path / BASELINE_FILE, baseline[["name", "measured_ms", "test_acc"]])
    plotted = plot_pareto(family.assign(pareto=True), baseline, out / "pareto.png", iterations=False)
    text, run_plot = report(run.path)
    phase_done("write")

    networks_text = networks_table(networks)
    comparison_text = comparison_table(comparison)
    phase_lines = [f"- {name}: {seconds:.1f} s" for name, seconds in phases.items()]
    total = sum(phases.values())
    atomic_write_text(out / "headline.md", "\n".join([
        "# NetAdapt's family against width multipliers",
        "",
        f"Measured latency: `{config.measure.statistic}` figure of each network's best of {args.passes} interleaved "
        f"passes, all networks in the same run; {config.data.dataset} data at {shape}; search run `{run.path}`.",
        "",
        networks_text,
        "",
        comparison_text,
        "",
        *summary,
        "",
        f"- command: `{command}`",
        f"- machine: {machine}",
        f"- wall time: {total:.0f} s in all",
        *phase_lines,
        "",
    ]))
    print(f"\n{text}\n\n{networks_text}\n\n{comparison_text}\n")
    print("\n".join(summary))
    print("\nwall time per phase:\n" + "\n".join(phase_lines) + f"\n- total: {total:.1f} s")
    print(f"wrote {out / 'headline.csv'}, {out / 'comparison.csv'}, {out / 'headline.md'}"
          + (f", {out / 'pareto.png'}, {run_plot}" if plotted else " (no plots: pip install 'netadapt[plot]')"))
    return 0


# ------------------------------------------------------------------ the steps
def run_config(args: argparse.Namespace, run: RunDir) -> Config:
    """The requested config for a new run; the run's own for an existing one.

    An existing run is refused when `--config`/`--set` ask for other settings
    than it has, so a changed config never silently reuses an old search.
    """
    requested = load_config(args.config, args.overrides)
    if not run.config_path.is_file():
        return requested
    config = load_config(run.config_path)
    if args.config or args.overrides:
        theirs, ours = flatten(to_dict(config)), flatten(to_dict(requested))
        differing = sorted(key for key in theirs.keys() | ours.keys()
                           if key not in BUDGET_KEYS and theirs.get(key) != ours.get(key))
        if differing:
            raise ConfigError(f"{run.config_path}: the existing run differs from --config/--set in {differing}; "
                              "choose another --run, or drop --config/--set to reuse the run as it is")
    return config


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def choose_budget(config: Config, dataset: Dataset, specs: list[NetSpec], names: list[str], measurer, shape,
                  passes: int, margin: float) -> float:
    """`margin` x the fastest multiplier, but above the smallest network the search space holds."""
    base = preset(config.model.preset, width=config.model.width, num_classes=dataset.num_classes,
                  in_channels=dataset.in_channels)
    smallest = lower_bound_spec(base, config.lut.min_channels, config.lut.granularity)
    figures = [m.latency_ms for m in measure_best_of([*specs, smallest], measurer, shape, passes)]
    for name, figure in zip([*names, "search-space minimum"], figures):
        print(f"  {name}: {figure:.3f} ms")
    floor = 1.1 * figures[-1]
    budget = max(margin * min(figures[:-1]), floor)
    print(f"search budget: {budget:.3f} ms ({margin:g} x the fastest multiplier"
          + (f", raised to 1.1 x the search space's minimum {figures[-1]:.3f} ms)" if budget == floor else ")"))
    return budget


def train_multipliers(config: Config, dataset: Dataset, run: RunDir, multipliers: list[tuple[float, NetSpec]],
                      names: list[str], steps: int, progress: bool) -> pd.DataFrame:
    """Train each multiplier from scratch with the base's recipe (kept in RUN/baseline/), and evaluate it."""
    rows = []
    for (width, spec), name in zip(multipliers, names):
        path = run.path / "baseline" / f"{name}-{steps}steps.pt"
        if path.is_file():
            model = load_checkpoint(path)
            print(f"{name}: trained {steps} steps before, {path}")
        else:
            model = build(spec)
            stats = train(model, dataset.train, config.train, steps, config.seed, progress=progress)
            save_checkpoint(path, model)
            print(f"{name}: trained {steps} steps in {stats.seconds:.0f} s ({stats.images_per_second:.0f} images/s)")
        units = count(spec, config.data.resolution)
        rows.append({"name": name, "kind": "multiplier", "width": width, "iteration": pd.NA,
                     "test_acc": evaluate(model, dataset.test, config.train.eval_batch_size),
                     "holdout_acc": evaluate(model, dataset.holdout, config.train.eval_batch_size),
                     "params": sum(u.params for u in units), "macs": sum(u.macs for u in units),
                     "train_steps": steps})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ reporting
def summary_lines(comparison: pd.DataFrame, family: pd.DataFrame, budget_ms: float,
                  stop_reason: str | None) -> list[str]:
    """One line on how many multiplier points the family dominates, then one per point it does not, with why."""
    missed = comparison[~comparison["dominated"]]
    lines = [f"The NetAdapt family ({len(family)} member{'s' if len(family) != 1 else ''}) dominates "
             f"{len(comparison) - len(missed)} of {len(comparison)} multiplier points (a member with lower-or-equal "
             "latency and higher-or-equal test accuracy)."]
    if comparison["speedup"].notna().any():
        best = comparison.loc[comparison["speedup"].idxmax()]
        lines.append(f"- best speed-up at matched accuracy: {best['speedup']:.2f}x over {best['name']}")
    if comparison["acc_gain"].notna().any():
        best = comparison.loc[comparison["acc_gain"].idxmax()]
        lines.append(f"- best accuracy gain at matched latency: {100 * best['acc_gain']:+.2f} points "
                     f"over {best['name']}")
    for row in missed.itertuples():
        if math.isnan(row.acc_gain):
            why = (f"no member is as fast (the fastest measured {family['measured_ms'].min():.3f} ms; "
                   f"the search's budget was {budget_ms:.3f} ms and it stopped: {stop_reason})")
        else:
            why = (f"the most accurate member at most as slow, {row.matched_ms_member}, has {row.matched_ms_acc:.2%} "
                   f"({100 * row.acc_gain:+.2f} points)")
        lines.append(f"- not dominated: {row.name} ({row.measured_ms:.3f} ms, {row.test_acc:.2%}): {why}")
    return lines


def networks_table(networks: pd.DataFrame) -> str:
    lines = ["| network | kind | width / iteration | measured ms | test acc | holdout acc | params | MACs | "
             "training steps |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in networks.itertuples():
        where = f"x{row.width:.2f}" if row.kind == "multiplier" else f"iteration {row.iteration}"
        lines.append(f"| {row.name} | {row.kind} | {where} | {row.measured_ms:.3f} | {row.test_acc:.2%} | "
                     f"{row.holdout_acc:.2%} | {int(row.params):,} | {int(row.macs):,} | {int(row.train_steps)} |")
    return "\n".join(lines)


def comparison_table(comparison: pd.DataFrame) -> str:
    def figure(value: float, text: str) -> str:
        return "n/a" if math.isnan(value) else text

    lines = ["| multiplier | measured ms | test acc | NetAdapt at matched accuracy | speed-up | "
             "NetAdapt at matched latency | accuracy gain | dominated |", "|---|---:|---:|---|---:|---|---:|---|"]
    for row in comparison.itertuples():
        lines.append(
            f"| {row.name} | {row.measured_ms:.3f} | {row.test_acc:.2%} | "
            f"{figure(row.speedup, f'{row.matched_acc_member} ({row.matched_acc_ms:.3f} ms)')} | "
            f"{figure(row.speedup, f'{row.speedup:.2f}x')} | "
            f"{figure(row.acc_gain, f'{row.matched_ms_member} ({row.matched_ms_acc:.2%})')} | "
            f"{figure(row.acc_gain, f'{100 * row.acc_gain:+.2f} pts')} | {'yes' if row.dominated else 'no'} |")
    return "\n".join(lines)


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    atomic_write_text(path, buffer.getvalue())


if __name__ == "__main__":
    sys.exit(main())
