"""Which networks a table is fitted and checked on, and the check itself.

Four kinds of network: every single-group cut (NetAdapt's first
iteration, what `lut build` fills), random channel cuts, trajectories
(sequences of successive single-group cuts down to the search space's
floor, the networks a search visits) and networks with blocks removed (a
search's depth proposals). `validate` compares predictions with whole
measurements of the same networks.
"""

from __future__ import annotations

import json
import random
import time

import pandas as pd

from mobilenetv3 import NetSpec
import math

import numpy as np

from netadapt.benchmark import Measurement, Measurer, best_of, measure_passes
from netadapt.errors import LatencyTableError
from netadapt.groups import candidate_widths, lower_bound_spec, prunable_groups, removable_blocks, with_width, without_block
from netadapt.latency.table import LatencyTable

__all__ = [
    "RUN_COLUMNS",
    "calibration_specs",
    "summarize_run",
    "first_iteration_specs",
    "random_subnetwork",
    "removal_specs",
    "summarize_validation",
    "trajectory",
    "trajectory_specs",
    "validate",
    "validate_run",
]


def first_iteration_specs(spec: NetSpec, granularity: int = 8, min_channels: int = 8) -> list[NetSpec]:
    """Every single-group cut of `spec`: the proposals of NetAdapt's first iteration.

    NetAdapt Alg. 1 tries, for each prunable group, the widths below the
    current one; a table holding all their units answers the first
    iteration without measuring on demand.
    """
    specs = [spec]
    for group in prunable_groups(spec, min_channels, granularity):
        specs.extend(with_width(spec, group, width) for width in candidate_widths(group))
    return specs


def random_subnetwork(
    spec: NetSpec, rng: random.Random, granularity: int = 8, min_channels: int = 8, min_fraction: float = 0.25
) -> NetSpec:
    """A random channel cut of `spec`: each prunable group, in turn, keeps its width or
    is cut to a random grid width of at least `min_fraction` of it."""
    for group in prunable_groups(spec, min_channels, granularity):
        options = [group.width] + [w for w in candidate_widths(group) if w >= min_fraction * group.width]
        width = rng.choice(options)
        if width != group.width:
            spec = with_width(spec, group, width)
    return spec


def trajectory(
    spec: NetSpec, rng: random.Random, granularity: int = 8, min_channels: int = 8,
    cut_fraction: tuple[float, float] = (0.05, 0.4),
) -> list[NetSpec]:
    """A path of successive single-group cuts from `spec` down to the search space's floor.

    Each step, as a NetAdapt iteration does, cuts one prunable group (chosen
    at random among those that can still shrink) by a random share of its
    width in `cut_fraction`, at least one grid step. The path starts with
    `spec` and ends where every group is at its minimum.
    """
    path = [spec]
    while True:
        groups = [g for g in prunable_groups(spec, min_channels, granularity) if candidate_widths(g)]
        if not groups:
            return path
        group = rng.choice(groups)
        widths = candidate_widths(group)
        wanted = group.width * (1 - rng.uniform(*cut_fraction))
        width = next((w for w in widths if w <= wanted), widths[-1])
        spec = with_width(spec, group, width)
        path.append(spec)


def trajectory_specs(
    base: NetSpec, count: int, rng: random.Random, granularity: int = 8, min_channels: int = 8, per_path: int = 8
) -> list[NetSpec]:
    """`count` networks from random trajectories of `base` (see `trajectory`), without the base itself.

    Each path gives up to `per_path` networks evenly spaced along it, its
    floor included, so the sample spans a search's whole range, from the
    first cuts down to the smallest network.
    """
    specs: list[NetSpec] = []
    seen = {base}
    fruitless = 0  # paths in a row that added nothing: a small search space is exhausted
    while len(specs) < count and fruitless < 20:
        path = trajectory(base, rng, granularity, min_channels)[1:]
        if not path:
            break  # nothing can be cut
        fresh = [spec for spec in dict.fromkeys(path) if spec not in seen]  # the floor repeats in every path
        take = min(per_path, count - len(specs), len(fresh))
        for index in sorted({round((i + 1) * len(fresh) / take) - 1 for i in range(take)}):
            specs.append(fresh[index])
            seen.add(fresh[index])
        fruitless = fruitless + 1 if take == 0 else 0
    return specs


def removal_specs(
    base: NetSpec, count: int, rng: random.Random, granularity: int = 8, min_channels: int = 8
) -> list[NetSpec]:
    """`count` networks with blocks removed, as a search with depth proposals visits them.

    Each is the base or a random channel cut of it (half each), with one to
    three of its residual blocks (chosen at random) removed. Their predictions
    borrow the full-depth family's correction (`LatencyTable.correction_for`),
    so they check that the loan holds.
    """
    specs: list[NetSpec] = []
    if not removable_blocks(base):
        return specs
    while len(specs) < count:
        spec = base if rng.random() < 0.5 else random_subnetwork(base, rng, granularity, min_channels)
        for _ in range(rng.randint(1, min(3, len(removable_blocks(base))))):
            if removable_blocks(spec):
                spec = without_block(spec, rng.choice(removable_blocks(spec)))
        specs.append(spec)
    return specs


def calibration_specs(base: NetSpec, count: int, granularity: int = 8, min_channels: int = 8, seed: int = 0) -> list[NetSpec]:
    """Whole networks to fit a correction on: `base`, then distinct random cuts and
    trajectory networks of it (about half each), drawn as `lut validate` draws the
    networks it checks (with their own seed), so the fit spans the sizes and shapes
    a search visits, down to the search space's floor.

    The base stays because a search starts from it and predicts cuts close
    to it first (docs/latency-model.md, "Calibration networks").
    """
    rng = random.Random(f"correction-{seed}")
    # The floor itself sits off the trend of the networks a search visits and
    # biased fits towards it (docs/latency-model.md), so it stays out.
    floor = lower_bound_spec(base, min_channels, granularity)
    specs, seen = [base], {base, floor}
    trajectories = trajectory_specs(base, max(0, (count - 1) // 2), random.Random(f"correction-path-{seed}"),
                                    granularity, min_channels)
    for spec in trajectories:
        if spec not in seen and len(specs) < count:
            specs.append(spec)
            seen.add(spec)
    for _ in range(100 * count):  # a repeated network adds nothing to the fit
        if len(specs) >= count:
            break
        cut = random_subnetwork(base, rng, granularity, min_channels)
        if cut not in seen:
            specs.append(cut)
            seen.add(cut)
    return specs


# --------------------------------------------------------------- validation
def validate(
    table: LatencyTable,
    specs: list[NetSpec],
    progress: bool = True,
    passes: int = 1,
    measured: list[Measurement] | None = None,
) -> pd.DataFrame:
    """Predict and measure each spec whole; one row per spec.

    Missing entries are filled first (and saved), so the timing of a
    prediction never includes a measurement.

    Args:
        table: the table under test; its corrections should be fitted on other specs.
        specs: the networks to compare on.
        progress: show progress bars.
        passes: whole-network measurements per spec, in separate passes, half
            before the fill and half after; the best is used (gauged:
            `LatencyTable.measure_networks_around`).
        measured: the specs' whole-network measurements, if the caller already
            has them (e.g. taken with longer measuring settings than the
            entries'); then nothing is measured whole here.

    Returns:
        Columns `index, predicted_ms, measured_ms, error_pct, raw_sum_ms,
        boundary_millions, weights_millions, measured_cv, predict_us`
        (boundary_millions, weights_millions: the correction's boundary size
        and parameter count; predict_us: time of the prediction alone),
        the same for the 10th percentile (`predicted_p10_ms, measured_p10_ms,
        error_p10_pct`) and the spec as JSON.
    """
    if measured is not None and len(measured) != len(specs):
        raise LatencyTableError(f"validate: {len(measured)} measurements for {len(specs)} specs")
    if measured is None:
        measured_all = best_of(table.measure_networks_around(specs, passes, lambda: table.fill(specs, progress=progress)))
    else:
        table.fill(specs, progress=progress)
        measured_all = measured
    rows = []
    for index, (spec, measured) in enumerate(zip(specs, measured_all)):
        start = time.perf_counter()
        predicted = table.predict_ms(spec)
        predict_us = (time.perf_counter() - start) * 1e6
        actual = measured.statistic_ms(table.statistic)
        predicted_p10 = table.predict_ms(spec, "p10")
        rows.append(
            {
                "index": index,
                "predicted_ms": predicted,
                "measured_ms": actual,
                "error_pct": 100.0 * (predicted - actual) / actual,
                "raw_sum_ms": table.raw_sum_ms(spec),
                "boundary_millions": table.boundary_millions(spec),
                "weights_millions": table.weights_millions(spec),
                "measured_cv": measured.cv,
                "predict_us": predict_us,
                # The same comparison on the 10th percentile, which load on a shared machine disturbs less.
                "predicted_p10_ms": predicted_p10,
                "measured_p10_ms": measured.p10_ms,
                "error_p10_pct": 100.0 * (predicted_p10 - measured.p10_ms) / measured.p10_ms,
                "spec": json.dumps(spec.to_dict(), separators=(",", ":")),
            }
        )
    return pd.DataFrame(rows)


def summarize_validation(frame: pd.DataFrame) -> dict[str, float]:
    """The accuracy figures of a `validate` frame."""
    errors = frame["error_pct"].abs()
    return {
        "samples": int(len(frame)),
        "median_abs_error_pct": float(errors.median()),
        "max_abs_error_pct": float(errors.max()),
        "within_5_pct": float((errors <= 5.0).mean()),
        "within_10_pct": float((errors <= 10.0).mean()),
        # Spearman = Pearson on ranks (pandas' method="spearman" would need scipy)
        "spearman": float(frame["predicted_ms"].rank().corr(frame["measured_ms"].rank())) if len(frame) > 1 else float("nan"),
        "mean_bias_pct": float(frame["error_pct"].mean()),
    }


# -------------------------------------------------------------- a run's path
RUN_COLUMNS = [
    "iteration", "predicted_ms", "table_predicted_ms", "in_search_ms", "steady_ms", "remeasured_ms", "error_pct",
    "table_error_pct", "in_search_error_pct", "steady_error_pct", "ratio_to_base", "remeasured_spread_pct",
]


def validate_run(networks: list, measurer: Measurer, input_shape: tuple[int, int, int, int], passes: int = 4) -> pd.DataFrame:
    """Re-measure a finished run's networks whole, interleaved, against what the run recorded; one row each.

    Args:
        networks: `RunDir.iteration_networks()`, the base first.
        measurer: the run's target (a quiet process: nothing else runs here).
        input_shape: (N, C, H, W) the run measured at.
        passes: passes over all the networks, each in its own random order; the best is kept.

    Returns:
        Columns RUN_COLUMNS: the run's calibrated and table predictions, its
        own (in-search) figure, the re-measured figure, each one's error
        against the re-measurement, the network's share of the base (both
        re-measured: the median over the passes of network / base, as the
        search's budget test takes it) and how much the passes disagreed.
    """
    passes_measured = measure_passes([n.spec for n in networks], measurer, input_shape, passes)
    best = [m.latency_ms for m in best_of(passes_measured)]
    rows = []
    for index, network in enumerate(networks):
        figures = [one[index].latency_ms for one in passes_measured]
        remeasured = best[index]

        def error(value: float) -> float:
            return 100.0 * (value - remeasured) / remeasured if math.isfinite(value) else math.nan

        rows.append({
            "iteration": network.iteration,
            "predicted_ms": network.predicted_ms,
            "table_predicted_ms": network.table_predicted_ms,
            "in_search_ms": network.measured_ms,
            "steady_ms": network.steady_ms,
            "remeasured_ms": remeasured,
            "error_pct": error(network.predicted_ms),
            "table_error_pct": error(network.table_predicted_ms),
            "in_search_error_pct": error(network.measured_ms),
            "steady_error_pct": error(network.steady_ms),
            # As the search's budget test takes it: the median over the passes of network / base.
            "ratio_to_base": float(np.median([one[index].latency_ms / one[0].latency_ms for one in passes_measured])),
            "remeasured_spread_pct": 100.0 * (max(figures) - min(figures)) / min(figures),
        })
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def summarize_run(frame: pd.DataFrame) -> dict[str, float]:
    """The figures of a `validate_run` frame: prediction and in-search errors, and where the run landed."""
    errors = frame["error_pct"].abs()
    in_search = frame["in_search_error_pct"].abs()
    return {
        "networks": int(len(frame)),
        "median_abs_error_pct": float(errors.median()),
        "max_abs_error_pct": float(errors.max()),
        "within_5_pct": float((errors <= 5.0).mean()),
        "median_abs_table_error_pct": float(frame["table_error_pct"].abs().median()),
        "max_abs_table_error_pct": float(frame["table_error_pct"].abs().max()),
        "median_abs_in_search_error_pct": float(in_search.median()),
        "max_abs_in_search_error_pct": float(in_search.max()),
        "median_abs_steady_error_pct": float(frame["steady_error_pct"].abs().median()),
        "max_abs_steady_error_pct": float(frame["steady_error_pct"].abs().max()),
        "final_ratio_to_base": float(frame["ratio_to_base"].iloc[-1]),
    }
