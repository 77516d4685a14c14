"""The schedule of a NetAdapt search: each iteration's reduction and target, and each group's width.

The width choice compares table predictions with a target derived from the
table's prediction of the current network, so both sides carry the same
model error.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

from mobilenetv3 import NetSpec
from netadapt.config import Config
from netadapt.groups import (
    ChannelGroup,
    candidate_widths,
    lower_bound_spec,
    removable_blocks,
    with_width,
    without_block,
)

__all__ = [
    "IterationPlan",
    "allowed_widths",
    "choose_width",
    "latency_reduction",
    "plan_iteration",
    "search_floor",
]


def latency_reduction(base_ms: float, initial_reduction: float, decay: float, iteration: int) -> float:
    """dR_i of iteration i (1-based): initial_reduction * base * decay**(i-1).

    NetAdapt's official defaults are 0.025 of the base latency and 0.96 decay.
    """
    if iteration < 1:
        raise ValueError(f"iterations count from 1, got {iteration}")
    return initial_reduction * base_ms * decay ** (iteration - 1)


def choose_width(
    spec: NetSpec,
    group: ChannelGroup,
    target_ms: float,
    predict_ms: Callable[[NetSpec], float],
    fill: Callable[[list[NetSpec]], object] | None = None,
    window: int = 3,
    max_cut_fraction: float = 1.0,
) -> tuple[int, float] | None:
    """The largest width of `group` whose predicted latency meets `target_ms`.

    Widths are scanned from the largest down and not bisected: latency is not
    monotonic in channels (x86 kernels block by 8/16), so the first width that
    meets the target is the largest one. Returns (width, predicted ms), or None
    when even the group's minimum misses the target.

    `fill(specs)`, if given, is called with the cuts of each next `window`
    widths before the scan reaches them (e.g. `LatencyTable.fill`), so the
    entries a scan lacks are measured together, in one interleaved batch,
    rather than one by one at different moments.

    `max_cut_fraction` caps the share of the group's channels one cut may
    remove (one granularity step is always allowed): without it a late
    iteration, where one group alone can meet the target, guts that group
    (a search here cut `expanded[10]` from 576 to 16 channels at once).
    """
    widths = allowed_widths(group, max_cut_fraction)
    cuts = [with_width(spec, group, width) for width in widths]
    for index, (width, cut) in enumerate(zip(widths, cuts)):
        if fill is not None and index % max(1, window) == 0:
            fill(cuts[index : index + max(1, window)])
        predicted = predict_ms(cut)
        if predicted <= target_ms:
            return width, predicted
    return None


def allowed_widths(group: ChannelGroup, max_cut_fraction: float = 1.0) -> list[int]:
    """`candidate_widths(group)` that keep at least (1 - max_cut_fraction) of its channels; at least the first."""
    widths = candidate_widths(group)
    kept = [width for width in widths if width >= group.width * (1.0 - max_cut_fraction) - 1e-9]
    return kept or widths[:1]


@dataclass(frozen=True)
class IterationPlan:
    """One iteration's target and each group's proposed cut (None: it cannot meet the target)."""

    reduction_ms: float  # the reduction finally asked for (after any halvings)
    target_ms: float
    halvings: int
    clamped: bool  # the target was set to the budget floor (the last iteration's clamp)
    choices: list[tuple[ChannelGroup, tuple[int, float] | None]]
    predict_s: dict[str, float]  # per group, over all tries: predicting, without measuring
    measure_s: dict[str, float]  # per group, over all tries: measuring missing table entries
    # Depth proposals that meet the target: (block index, predicted ms of the network without it).
    removals: list[tuple[int, float]] = field(default_factory=list)

    @property
    def proposals(self) -> int:
        return sum(choice is not None for _, choice in self.choices) + len(self.removals)

    @property
    def counted_proposals(self) -> int:
        """Proposals that leave their group above its minimum: a group cut to its floor is a last
        resort, not a choice, so it does not count towards `search.min_proposals`."""
        cuts = sum(choice is not None and choice[0] > candidate_widths(group)[-1] for group, choice in self.choices)
        return cuts + len(self.removals)


def plan_iteration(
    spec: NetSpec,
    groups: list[ChannelGroup],
    current_ms: float,
    reduction_ms: float,
    predict_ms: Callable[[NetSpec], float],
    min_proposals: int,
    max_halvings: int,
    measure_seconds: Callable[[], float] = lambda: 0.0,
    floor_ms: float = -math.inf,
    clamp_from_ms: float | None = None,
    fill: Callable[[list[NetSpec]], object] | None = None,
    window: int = 3,
    max_cut_fraction: float = 1.0,
    removable: list[int] | None = None,
) -> IterationPlan:
    """Size one cut per group to meet `current_ms - reduction_ms`, halving the reduction if too few can.

    NetAdapt's schedule asks every iteration for a reduction that is a fixed
    share of the base latency. Late in a search, where latency is mostly
    per-layer overhead, one group alone often cannot save that much without
    being cut to its minimum: the iteration then has one or two proposals,
    and the winner is whichever group can be gutted, not the most accurate
    cut (a headline run here cut the last conv from 392 to 8 channels and
    lost 78 points of holdout accuracy). So when fewer than `min_proposals`
    groups (or all that can still shrink, if fewer) meet the target, the
    reduction is halved and the widths chosen again, up to `max_halvings`
    times; 0 keeps the paper's fixed schedule. A proposal that cuts its group
    to its minimum does not count. If the halvings run out, the proposals of
    the last try are used as they are.

    `measure_seconds` is a running total of the time spent measuring missing
    table entries (`LatencyTable.measure_seconds`), kept out of `predict_s`.

    `floor_ms` clamps the target from below: a search aims no lower than
    just under its budget, so the last iteration lands there instead of a
    full reduction below it. A schedule target under `clamp_from_ms` (default
    `floor_ms`) is set to `floor_ms` too: one that would land a network within
    noise of its budget is aimed just under it instead, so the stop test is not
    a coin toss. `fill`, `window` and `max_cut_fraction` go to `choose_width`.

    `removable` lists blocks that may be removed whole (depth proposals,
    `groups.removable_blocks`); each whose removal meets the target is a
    proposal beside the channel cuts.
    """
    removable = list(removable or [])
    removal_ms = {index: predict_ms(without_block(spec, index)) for index in removable}
    # Groups that can take a cut above their minimum: asking for more proposals than that is futile.
    shrinkable = sum(len(candidate_widths(group)) > 1 for group in groups) + len(removable)
    wanted = min(min_proposals, shrinkable)
    predict_s = {group.name: 0.0 for group in groups}
    measure_s = dict(predict_s)
    halvings = 0
    clamp_from_ms = floor_ms if clamp_from_ms is None else max(clamp_from_ms, floor_ms)
    while True:
        clamped = current_ms - reduction_ms < clamp_from_ms
        target_ms = floor_ms if clamped else current_ms - reduction_ms
        choices = []
        for group in groups:
            start, measured_before = time.perf_counter(), measure_seconds()
            choices.append((group, choose_width(spec, group, target_ms, predict_ms, fill, window, max_cut_fraction)))
            measured = measure_seconds() - measured_before
            measure_s[group.name] += measured
            predict_s[group.name] += time.perf_counter() - start - measured
        removals = [(index, ms) for index, ms in removal_ms.items() if ms <= target_ms]
        plan = IterationPlan(reduction_ms, target_ms, halvings, clamped, choices, predict_s, measure_s, removals)
        if plan.counted_proposals >= wanted or halvings >= max_halvings:
            return plan
        reduction_ms /= 2
        halvings += 1


def search_floor(spec: NetSpec, config: Config) -> NetSpec:
    """The smallest network the search can reach from `spec`: every removable block gone (with
    depth proposals), then every group at its minimum."""
    smallest = spec
    while config.search.depth_proposals and removable_blocks(smallest):
        smallest = without_block(smallest, removable_blocks(smallest)[-1])
    return lower_bound_spec(smallest, config.lut.min_channels, config.lut.granularity)
