"""The NetAdapt loop end to end on a tiny network, the embedded data and real
onnxruntime measurements."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from netadapt.errors import ConfigError, SearchError
from netadapt.executor import CandidateResult, CandidateTask, LocalExecutor, evaluate_candidate
from netadapt.groups import (
    ChannelGroup,
    candidate_widths,
    lower_bound_spec,
    prunable_groups,
    removable_blocks,
    without_block,
)
from netadapt.rundir import RunDir
from netadapt.search import (
    allowed_widths,
    choose_width,
    latency_reduction,
    plan_iteration,
    prescreen_top,
    run_search,
    select_proposal,
)
from netadapt.checkpoint import load_checkpoint

LIGHT_MEASURE = ["measure.warmup_runs=2", "measure.min_runs=5", "measure.min_seconds=0.01"]


# --------------------------------------------------------------- pure parts
def test_schedule_is_geometric_from_the_base_latency():
    assert latency_reduction(10.0, 0.025, 0.96, 1) == pytest.approx(0.25)
    assert latency_reduction(10.0, 0.025, 0.96, 3) == pytest.approx(0.25 * 0.96**2)
    with pytest.raises(ValueError):
        latency_reduction(10.0, 0.025, 0.96, 0)


def test_choose_width_takes_the_largest_width_that_meets_the_target(tiny_spec):
    group = next(g for g in prunable_groups(tiny_spec) if g.name == "expanded[2]")  # 48 wide
    # A latency model with a cliff: 40 channels cost more than 32 (as NCHWc blocking can).
    cost = {40: 9.0, 32: 5.0, 24: 4.0, 16: 3.0, 8: 2.0}

    def predict(spec):
        return cost[spec.blocks[2].expanded]

    assert choose_width(tiny_spec, group, 5.0, predict) == (32, 5.0)
    assert choose_width(tiny_spec, group, 4.5, predict) == (24, 4.0)
    assert choose_width(tiny_spec, group, 1.0, predict) is None


def test_plan_halves_the_reduction_until_enough_groups_can_meet_it(tiny_spec):
    # A linear latency model where the last conv is expensive and the rest is
    # cheap, like per-layer overhead: only the last conv can save a lot.
    slope = {"last_conv": 0.1, "expanded[1]": 0.01, "bottleneck[1,2]": 0.01, "expanded[2]": 0.01, "head": 0.01}

    def predict(spec):
        return 1.0 + sum(g.width * slope.get(g.name, 0.0) for g in prunable_groups(spec))

    groups = prunable_groups(tiny_spec)
    current = predict(tiny_spec)
    # The paper's fixed schedule: a 3 ms reduction, which only the last conv
    # can give, and only by going down to 32 of its 64 channels.
    fixed = plan_iteration(tiny_spec, groups, current, 3.0, predict, min_proposals=3, max_halvings=0)
    assert fixed.halvings == 0 and fixed.target_ms == pytest.approx(current - 3.0)
    assert [(g.name, c[0]) for g, c in fixed.choices if c] == [("last_conv", 32)]

    # Halving: at 1.5 and 0.75 ms still only the last conv; at 0.375 ms
    # expanded[2] cut to 8 channels (0.40 ms) joins it; at 0.1875 ms expanded[1]
    # and the head would go to their minimum (8), which does not count as a
    # proposal, so only expanded[2] (24) and the last conv count; at 0.09375 ms
    # expanded[1] and the head to 16 and expanded[2] to 32 (0.16 ms each) meet
    # it above their minimum, and so does the last conv: four proposals.
    plan = plan_iteration(tiny_spec, groups, current, 3.0, predict, min_proposals=3, max_halvings=6)
    assert plan.halvings == 5 and plan.reduction_ms == pytest.approx(3.0 / 32)
    assert plan.target_ms == pytest.approx(current - 3.0 / 32)
    proposed = {g.name: c for g, c in plan.choices if c}
    assert {name: width for name, (width, _) in proposed.items()} == {"expanded[1]": 16, "expanded[2]": 32,
                                                                       "head": 16, "last_conv": 56}
    assert all(predicted <= plan.target_ms for _, predicted in proposed.values())
    assert plan.proposals == plan.counted_proposals == 4 and set(plan.predict_s) == {g.name for g in groups}
    gutting = plan_iteration(tiny_spec, groups, current, 3.0, predict, min_proposals=3, max_halvings=4)
    assert gutting.proposals == 4 and gutting.counted_proposals == 2  # expanded[1] and the head at 8

    # Out of halvings: the last try is used as it is.
    short = plan_iteration(tiny_spec, groups, current, 3.0, predict, min_proposals=3, max_halvings=2)
    assert short.halvings == 2 and short.proposals == 1
    # Asking for more proposals than groups that can shrink asks for all of them.
    everyone = plan_iteration(tiny_spec, groups, current, 3.0, predict, min_proposals=50, max_halvings=10)
    assert everyone.counted_proposals == sum(len(candidate_widths(g)) > 1 for g in groups)


def test_one_cut_removes_at_most_max_cut_fraction_of_a_group(tiny_spec):
    groups = {g.name: g for g in prunable_groups(tiny_spec)}
    cost = {40: 9.0, 32: 5.0, 24: 4.0, 16: 3.0, 8: 2.0}

    def predict(spec):
        return cost[spec.blocks[2].expanded]

    group = groups["expanded[2]"]  # 48 wide
    assert choose_width(tiny_spec, group, 3.0, predict) == (16, 3.0)  # uncapped: two thirds of the group
    assert choose_width(tiny_spec, group, 3.0, predict, max_cut_fraction=0.5) is None  # 24 is the least allowed
    assert choose_width(tiny_spec, group, 4.0, predict, max_cut_fraction=0.5) == (24, 4.0)
    # One granularity step is always allowed, even where it is more than the cap.
    assert allowed_widths(groups["bottleneck[1,2]"], 0.25) == [8]  # 16 wide
    assert allowed_widths(groups["last_conv"], 0.25) == [56, 48]  # 64 wide

    slope = {"last_conv": 0.1, "expanded[1]": 0.01, "bottleneck[1,2]": 0.01, "expanded[2]": 0.01, "head": 0.01}

    def linear(spec):
        return 1.0 + sum(g.width * slope.get(g.name, 0.0) for g in prunable_groups(spec))

    plan = plan_iteration(tiny_spec, list(groups.values()), linear(tiny_spec), 3.0, linear, min_proposals=3,
                          max_halvings=6, max_cut_fraction=0.25)
    for group, choice in plan.choices:
        if choice:
            assert choice[0] >= 0.75 * group.width or choice[0] == candidate_widths(group)[0], group.name


def test_the_last_target_is_clamped_to_just_under_the_budget(tiny_spec):
    slope = {"last_conv": 0.1, "expanded[1]": 0.01, "bottleneck[1,2]": 0.01, "expanded[2]": 0.01, "head": 0.01}

    def predict(spec):
        return 1.0 + sum(g.width * slope.get(g.name, 0.0) for g in prunable_groups(spec))

    groups = prunable_groups(tiny_spec)
    current = predict(tiny_spec)
    free = plan_iteration(tiny_spec, groups, current, 3.0, predict, min_proposals=1, max_halvings=0,
                          floor_ms=current - 5.0)
    assert not free.clamped and free.target_ms == pytest.approx(current - 3.0)
    clamped = plan_iteration(tiny_spec, groups, current, 3.0, predict, min_proposals=1, max_halvings=0,
                             floor_ms=current - 0.75)
    assert clamped.clamped and clamped.target_ms == pytest.approx(current - 0.75)
    # The clamp asks for less, so each group keeps at least as many channels, and every cut still meets it.
    widths = {g.name: c[0] for g, c in free.choices if c}
    for group, choice in clamped.choices:
        if choice:
            assert choice[1] <= clamped.target_ms + 1e-12
            assert group.name not in widths or choice[0] >= widths[group.name]
    assert dict((g.name, c[0]) for g, c in clamped.choices if c)["last_conv"] == 56  # one 8-channel step saves 0.8 ms
    # A schedule target above the floor but under `clamp_from_ms` (within noise of the budget) is set to
    # the floor too; one above it is left as the schedule asked.
    snapped = plan_iteration(tiny_spec, groups, current, 3.0, predict, min_proposals=1, max_halvings=0,
                             floor_ms=current - 3.5, clamp_from_ms=current - 2.5)
    assert snapped.clamped and snapped.target_ms == pytest.approx(current - 3.5)
    kept = plan_iteration(tiny_spec, groups, current, 3.0, predict, min_proposals=1, max_halvings=0,
                          floor_ms=current - 3.5, clamp_from_ms=current - 3.2)
    assert not kept.clamped and kept.target_ms == pytest.approx(current - 3.0)


def test_landings_clamp_each_target_to_just_under_the_next_budget_not_yet_met():
    from netadapt.config import load_config
    from netadapt.rundir import SearchState
    from netadapt.search.loop import _floor_ms

    # The table predicts the base at 2.0 ms; the machine runs 1.5x that (factor 1.5): base 3.0 ms.
    state = SearchState(iteration=0, base_ms=3.0, base_predicted_ms=2.0, budget_ms=1.05, measured_ms=3.0,
                        predicted_ms=3.0, holdout_acc=0.9)
    config = load_config(None, ["search.budget_ratio=0.35", "search.landings=[0.75, 0.5]"])
    keep = 1 - config.search.budget_margin
    # Above 0.75 of the base: aim no lower than just under 0.75 (on the table's scale, converted).
    assert _floor_ms(config, state, 1.5, current_ms=2.7) == pytest.approx(0.75 * 3.0 * keep)
    # Under 0.75, above 0.5: the next landing.
    assert _floor_ms(config, state, 1.5, current_ms=2.2) == pytest.approx(0.5 * 3.0 * keep)
    # Under every landing, and even under the budget by prediction: the final budget's floor.
    for current in (1.2, 0.9):
        assert _floor_ms(config, state, 1.5, current_ms=current) == pytest.approx(0.35 * 3.0 * keep)
    # Without landings, the final budget's floor from the start.
    plain = load_config(None, ["search.budget_ratio=0.35"])
    assert _floor_ms(plain, state, 1.5, current_ms=2.7) == pytest.approx(0.35 * 3.0 * keep)
    # An absolute budget's landings are milliseconds, as they stand.
    absolute = load_config(None, ["search.budget_ms=1.05", "search.landings=[2.0]"])
    assert _floor_ms(absolute, state, 1.5, current_ms=2.7) == pytest.approx(2.0 * keep)
    assert _floor_ms(absolute, state, 1.5, current_ms=1.9) == pytest.approx(1.05 * keep)


def test_a_target_within_the_margin_over_the_budget_aims_at_the_margin_under_it():
    from netadapt.config import load_config
    from netadapt.rundir import SearchState
    from netadapt.search.loop import _clamp_from_ms, _floor_ms

    state = SearchState(iteration=0, base_ms=3.0, base_predicted_ms=2.0, budget_ms=1.05, measured_ms=3.0,
                        predicted_ms=3.0, holdout_acc=0.9, base_figures=(3.0,))
    config = load_config(None, ["search.budget_ratio=0.35", "search.landings=[0.75]"])
    keep = 1 - config.search.budget_margin
    # The band is symmetric about the next budget: from its margin under it to as far over it.
    for current, level in ((2.7, 0.75 * 3.0), (2.0, 0.35 * 3.0)):
        assert _floor_ms(config, state, 1.5, current) == pytest.approx(level * keep)
        assert _clamp_from_ms(config, state, 1.5, current) == pytest.approx(level / keep)
    absolute = load_config(None, ["search.budget_ms=1.05"])
    assert _clamp_from_ms(absolute, state, 1.5, 2.0) == pytest.approx(1.05 / keep)
    # The creep floor (the table says under the budget, the measurement over) has no band above it.
    plain = load_config(None, ["search.budget_ratio=0.35"])
    creeping = 1.02  # under the table's level (0.35 * 2.0 * 1.5 = 1.05), at 0.364 of the base measured at 2.8
    state = SearchState(iteration=3, base_ms=2.8, base_predicted_ms=2.0, budget_ms=0.98, measured_ms=creeping,
                        predicted_ms=creeping, holdout_acc=0.9, base_figures=(2.8,))
    assert creeping < 1.05 and _floor_ms(plain, state, 1.5, creeping) < creeping
    assert _clamp_from_ms(plain, state, 1.5, creeping) == _floor_ms(plain, state, 1.5, creeping)


def test_a_network_the_table_puts_under_a_ratio_budget_but_the_measurement_over_it_aims_lower_in_whole_steps():
    from dataclasses import replace

    from netadapt.config import load_config
    from netadapt.rundir import SearchState
    from netadapt.search.loop import CREEP_STEP, _creep_steps, _floor_ms

    config = load_config(None, ["search.budget_ratio=0.35"])
    aim = 0.35 * (1 - config.search.budget_margin)
    # The table predicts the base at 2.0 ms, 3.0 ms at factor 1.5, so the table's clamp is 1.05 * keep;
    # the base measured steady at 2.8 ms, so a network calibrated at 1.04 ms measures 0.371 of it.
    state = SearchState(iteration=3, base_ms=2.8, base_predicted_ms=2.0, budget_ms=0.98, measured_ms=1.04,
                        predicted_ms=1.04, holdout_acc=0.9, base_figures=(2.8, 2.7, 2.9))
    steps = math.ceil((1.04 / 2.8 / aim - 1) / CREEP_STEP)
    assert _creep_steps(config, state, 1.5, 1.04) == steps == 5
    floor = _floor_ms(config, state, 1.5, current_ms=1.04)
    assert floor == pytest.approx(1.04 / (1 + steps * CREEP_STEP))
    assert floor / 2.8 <= aim < floor * (1 + CREEP_STEP) / 2.8  # lands within one step under the aim
    # Two runs whose measured shares differ by less than a step, inside one, aim at the same share of the
    # current network, so the same table chooses the same cut.
    other = replace(state, base_figures=(2.78, 2.7, 2.9))
    assert _creep_steps(config, other, 1.5, 1.04) == steps
    assert _floor_ms(config, other, 1.5, 1.04) / 1.04 == pytest.approx(floor / 1.04)
    # Just over the budget by the measurement: the margin and the excess, in whole steps.
    assert _creep_steps(config, state, 1.5, 0.351 * 2.8) == math.ceil((0.351 / aim - 1) / CREEP_STEP) == 2
    # Where the table and the measurement agree, or the network is over the budget by the table too,
    # or the budget is absolute, the clamp is the table's as before.
    keep = 1 - config.search.budget_margin
    assert _creep_steps(config, state, 1.5, 0.34 * 2.8) == 0
    assert _floor_ms(config, state, 1.5, current_ms=0.34 * 2.8) == pytest.approx(1.05 * keep)
    assert _creep_steps(config, state, 1.5, 1.2) == 0 and _floor_ms(config, state, 1.5, 1.2) == pytest.approx(1.05 * keep)
    absolute = load_config(None, ["search.budget_ms=0.98"])
    assert _creep_steps(absolute, state, 1.5, 1.04) == 0


@pytest.mark.parametrize("overrides, message", [
    (["search.budget_ratio=0.5", "search.landings=[0.75, 0.4]"], r"search.landings\[1\] must be above the budget ratio \(0.5\)"),
    (["search.budget_ratio=0.5", "search.landings=[1.2]"], r"search.landings\[0\] must be a share of the base below 1"),
    (["search.budget_ms=2", "search.landings=[1.5]"], r"search.landings\[0\] must be above the budget \(2\)"),
    (["search.budget_ms=2", "search.landings=[-1]"], r"search.landings\[0\] must be a finite number > 0"),
])
def test_landings_that_are_not_on_the_way_to_the_budget_are_refused(overrides, message):
    from netadapt.config import load_config
    from netadapt.search import validate_search_config

    with pytest.raises(ConfigError, match=message):
        validate_search_config(load_config(None, overrides))


def test_budget_test_compares_with_the_base_measured_beside_it():
    from netadapt.config import load_config
    from netadapt.search import WholeFigures, budget_test

    # The machine got 2% slower since the base was first measured (1.00 ms): the network
    # measures 0.71 ms, over 0.7 of the old base, but 0.696 of the base measured beside it;
    # in the third pass a slow moment hit both, and their ratio stays.
    figures = WholeFigures(network_passes=(0.71, 0.72, 0.92), base_passes=(1.02, 1.03, 1.32), measure_s=1.0)
    by_ratio = budget_test(load_config(None, ["search.budget_ratio=0.7"]), figures, budget_ms=0.70)
    ratio = sorted([0.71 / 1.02, 0.72 / 1.03, 0.92 / 1.32])[1]
    assert figures.ratio == pytest.approx(ratio) and ratio < 0.7
    assert by_ratio.met and by_ratio.margin_pct == pytest.approx(100 * (0.7 - ratio) / 0.7)
    assert f"{ratio:.4f} of the base measured beside it" in by_ratio.text
    assert f"spread {100 * (0.92 - 0.71) / 0.71:.1f}%" in by_ratio.text
    by_ms = budget_test(load_config(None, ["search.budget_ms=0.70"]), figures, budget_ms=0.70)
    assert not by_ms.met and by_ms.margin_pct == pytest.approx(-100 * 0.01 / 0.70)
    assert "margin -1.43%" in by_ms.text


def test_whole_figures_keep_each_networks_best_pass():
    from netadapt.benchmark import summarize
    from netadapt.search import WholeFigures, measure_whole

    class Scripted:
        """Each model's figures, pass by pass, whatever order a pass measures them in."""

        def __init__(self):
            self.figures = {b"network": iter([3.0, 2.0, 2.5]), b"base": iter([1.0, 1.1, 0.9])}

        def fingerprint(self):
            return {}

        def measure(self, onnx_bytes):
            return summarize([next(self.figures[onnx_bytes])])

    figures = measure_whole(Scripted(), b"network", b"base", passes=3)
    assert figures.network_passes == (3.0, 2.0, 2.5) and figures.base_passes == (1.0, 1.1, 0.9)
    assert (figures.network_ms, figures.base_ms, figures.passes) == (2.0, 0.9, 3)
    # The ratio pairs each pass's figures: 3.0, 1.82 and 2.78; their median.
    assert figures.spread_pct == pytest.approx(50.0) and figures.ratio == pytest.approx(2.5 / 0.9)
    alone = measure_whole(Scripted(), b"base", None, passes=3)
    assert alone.network_ms == alone.base_ms == 0.9 and alone.ratio == 1.0
    both = figures.merged(WholeFigures((1.5, 1.6), (1.0, 1.0), measure_s=1.0))
    assert (both.network_ms, both.base_ms, both.passes) == (1.5, 0.9, 5)
    assert both.spread_pct == pytest.approx(100 * (3.0 - 1.5) / 1.5)  # slowest pass of either: 3.0 ms


def _result(group: str, accuracy: float | None, predicted: float, status: str = "ok",
            loss: float | None = None) -> CandidateResult:
    task = CandidateTask(1, ChannelGroup(group, "head", (), 64), 32, predicted, 0)
    return CandidateResult(task, status, holdout_acc=accuracy, holdout_loss=loss)


def test_selection_rules():
    results = [_result("a", 0.80, 9.0), _result("b", 0.79, 7.0), _result("c", 0.95, 8.0, status="failed")]
    # NetAdapt: the most accurate; the failed one never wins.
    assert select_proposal(results, "accuracy", 0.82, 10.0).task.group.name == "a"
    # MobileNetV3 §4.2: accuracy lost per ms saved: a loses 0.02/1 ms, b 0.03/3 ms.
    assert select_proposal(results, "accuracy_per_latency", 0.82, 10.0).task.group.name == "b"
    assert select_proposal([results[2]], "accuracy", 0.82, 10.0) is None
    with pytest.raises(ConfigError, match="search.selection"):
        select_proposal(results, "flops", 0.82, 10.0)


def test_selection_by_loss_and_against_a_control_reference():
    results = [_result("a", 0.80, 9.0, loss=0.60), _result("b", 0.81, 7.0, loss=0.70), _result("c", 0.78, 8.0, loss=0.50)]
    # The loss ranks by confidence, not by flipped images: c has the lowest cross-entropy.
    assert select_proposal(results, "accuracy", 0.0, 10.0, score="loss").task.name == "c"
    assert select_proposal(results, "accuracy", 0.0, 10.0).task.name == "b"
    # Per ms saved against the control arm's score: with a control at 0.82 accuracy, a loses
    # 0.02 over 1 ms, b 0.01 over 3 ms, c 0.04 over 2 ms: b. With a control at 0.79, a
    # gains 0.01/ms, b 0.0067/ms: a. The reference decides, so it must be a fair one.
    assert select_proposal(results, "accuracy_per_latency", 0.82, 10.0).task.name == "b"
    assert select_proposal(results, "accuracy_per_latency", 0.79, 10.0).task.name == "a"
    # With the loss: against -0.55, a's -0.05 over 1 ms loses to c's +0.05 over 2 ms.
    assert select_proposal(results, "accuracy_per_latency", -0.55, 10.0, score="loss").task.name == "c"
    with pytest.raises(ConfigError, match="search.score"):
        select_proposal(results, "accuracy", 0.0, 10.0, score="f1")


def test_prescreen_keeps_the_best_scores():
    results = [_result("a", 0.80, 9.0, loss=0.6), _result("b", 0.85, 7.0, loss=0.7), _result("c", 0.80, 8.0, loss=0.5),
               _result("d", 0.99, 6.0, status="failed")]
    assert prescreen_top(results, 2) == ["b", "c"]  # a and c tie on accuracy: the lower prediction first
    assert prescreen_top(results, 2, "loss") == ["c", "a"]
    assert prescreen_top(results, 10) == ["b", "c", "a"]  # a failed result is never kept


def test_selection_is_order_independent():
    results = [_result("a", 0.8, 9.0), _result("b", 0.8, 8.0), _result("c", 0.8, 8.0)]
    winners = {select_proposal(order, "accuracy", 0.9, 10.0).task.group.name
               for order in (results, results[::-1], results[1:] + results[:1])}
    assert winners == {"c"}  # tie on accuracy and latency: the group name decides, not arrival order


def test_lower_bound_spec_puts_every_group_at_its_minimum(tiny_spec):
    smallest = lower_bound_spec(tiny_spec, 8, 8)
    assert all(g.width == 8 for g in prunable_groups(smallest))


# ------------------------------------------------------------ real searches
def test_tiny_search_end_to_end(prepared, tmp_path):
    budget = prepared.unreachable_budget()
    config = prepared.config(budget)
    messages = []
    result = run_search(config, out=tmp_path / "run", dataset=prepared.dataset, progress=False,
                        echo=messages.append)
    run = RunDir(result.run_dir)
    history = run.read_history()
    assert result.iterations == 3 and "max_iterations" in result.stop_reason
    assert (run.path / "config.yaml").is_file() and run.lut_path.is_file() and run.log_path.stat().st_size > 0
    for iteration in range(4):
        assert run.checkpoint_path(iteration).is_file() and run.spec_path(iteration).is_file()
    iterations = history[history["kind"] == "iteration"]
    assert list(iterations["iteration"]) == [1, 2, 3]
    candidates = history[history["kind"] == "candidate"]
    chosen = candidates[candidates["status"] == "chosen"]
    assert list(chosen["group"]) == list(iterations["group"])
    for row in candidates[candidates["status"].isin(["ok", "chosen"])].itertuples():
        assert row.width_after % 8 == 0 and row.width_after < row.width_before
        assert row.predicted_ms <= row.target_ms + 1e-9
        assert row.finetune_s > 0 and row.eval_s > 0 and 0 <= row.holdout_acc <= 1
    # each iteration's chosen candidate is the most accurate (the default rule)
    for iteration, rows in candidates[candidates["status"].isin(["ok", "chosen"])].groupby("iteration"):
        assert rows.loc[rows["status"] == "chosen", "holdout_acc"].iloc[0] == rows["holdout_acc"].max()
    final = load_checkpoint(run.checkpoint_path(3))
    assert final.spec == result.final_spec
    assert sum(1 for m in messages if re.match(r"iteration \d+: [\d.]+ ms measured", m)) == 3
    # the measured latency of every winner is recorded next to its prediction
    assert iterations["measured_ms"].notna().all() and iterations["predicted_ms"].notna().all()
    # Online calibration: each network's recorded prediction is the table's, times the
    # steady-to-table ratio of the network before it (the base's is the table's own);
    # a steady figure is the network's ratio to the base beside it times the base's median figure.
    path = history[history["kind"].isin(["base", "iteration"])]
    ratios, base_figures = [], []
    for row in path.itertuples():
        expected = row.table_predicted_ms * (ratios[-1] if ratios else 1.0)
        assert row.predicted_ms == pytest.approx(expected, rel=1e-9)
        base_figures.append(row.base_measured_ms)
        assert row.steady_ms == pytest.approx(row.ratio_to_base * np.median(base_figures), rel=1e-9)
        assert row.measured_spread_pct >= 0
        ratios.append(row.steady_ms / row.table_predicted_ms)
    assert iterations["budget_margin_pct"].lt(0).all()  # never met: the budget is unreachable
    stop_tests = [m for m in messages if m.startswith("stop test after iteration")]
    assert len(stop_tests) == 3 and all("not met" in m for m in stop_tests), messages
    assert len(run.read_state().calibration) == 4  # the base and each iteration's winner


def test_lut_validate_run_re_measures_a_finished_run(prepared, tmp_path, capsys):
    from netadapt.cli.main import main

    config = prepared.config(prepared.unreachable_budget(), "search.max_iterations=2")
    result = run_search(config, out=tmp_path / "run", dataset=prepared.dataset, progress=False, echo=lambda m: None)
    rows = tmp_path / "check.csv"
    assert main(["lut", "validate", "--run", str(result.run_dir), "--passes", "2", "--out", str(rows)]) == 0
    out = capsys.readouterr().out
    assert "3 networks (base and iterations)" in out and "predictions the run used: median |error|" in out
    import pandas as pd

    frame = pd.read_csv(rows)
    history = RunDir(result.run_dir).read_history()
    recorded = history[history["kind"].isin(["base", "iteration"])]
    assert list(frame["iteration"]) == [0, 1, 2]
    assert list(frame["predicted_ms"]) == pytest.approx(list(recorded["predicted_ms"]))
    # The cuts here are 2%, inside the noise of a shared machine: the ratios are checked for what
    # they are (the base's own is 1, each a positive figure, the last one reported), not for order.
    assert frame["ratio_to_base"].iloc[0] == 1.0 and (frame["ratio_to_base"] > 0).all()
    assert f"final network at {frame['ratio_to_base'].iloc[-1]:.3f} of the base" in out
    expected = 100 * (frame["predicted_ms"] - frame["remeasured_ms"]) / frame["remeasured_ms"]
    assert list(frame["error_pct"]) == pytest.approx(list(expected))

    assert main(["lut", "validate", "--run", str(tmp_path)]) == 2
    assert f"{tmp_path}: not a run directory" in capsys.readouterr().err


def test_base_that_meets_the_budget_is_the_only_member(prepared, tmp_path, capsys):
    from netadapt.cli.main import main

    code = main(["search", "--config", str(prepared.config_path), "--set",
                 f"model.checkpoint={prepared.checkpoint}", "--budget-ms", "1000", "--out",
                 str(tmp_path / "run"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "already meets the budget" in out and "<= 1000.000 ms" in out
    run = RunDir(tmp_path / "run")
    assert run.read_state().finished and run.read_state().iteration == 0
    assert list(run.read_history()["kind"]) == ["base"]
    # The user learns what would bite here: the span of the search space and a budget inside it.
    span = re.search(r"spans ([\d.]+) ms \(the base, measured\) down to about ([\d.]+) ms \(its smallest network, "
                     r"predicted\); a budget between them bites, e.g. --budget-ms ([\d.e-]+) or --budget-ratio ([\d.]+)", out)
    assert span, out
    base, floor, suggested, ratio = (float(group) for group in span.groups())
    assert base == pytest.approx(run.read_state().base_ms, abs=5e-4)
    assert floor < suggested < base and ratio == pytest.approx(suggested / base, abs=0.01)


def test_the_suggested_budget_is_70_percent_of_the_base_where_the_floor_allows():
    from netadapt.search.budget import met_by_the_base

    assert "--budget-ms 0.21 or --budget-ratio 0.70" in met_by_the_base(0.3, 15.0, floor_ms=0.1)
    assert "--budget-ms 0.275 or --budget-ratio 0.92" in met_by_the_base(0.3, 15.0, floor_ms=0.25)  # halfway down


def test_budget_below_the_search_space_is_refused_up_front(prepared, tmp_path):
    config = prepared.config("search.budget_ms=0.000001")
    with pytest.raises(SearchError, match=r"below anything this search space can reach.*measured latency is \d"):
        run_search(config, out=tmp_path / "run", dataset=prepared.dataset, progress=False, echo=lambda m: None)
    assert not (tmp_path / "run").exists(), "a refused search must not leave a run behind"


def test_a_floor_predicted_out_of_reach_is_measured_before_a_refusal(prepared, tmp_path, monkeypatch):
    # The floor's prediction extrapolates; here it says even the floor is slower
    # than the base. Measured, the floor is far under the budget: no refusal.
    from netadapt.latency import LatencyTable
    from netadapt.search.schedule import search_floor

    config = prepared.config("search.budget_ratio=0.9", "search.max_iterations=1")
    floor = search_floor(load_checkpoint(prepared.checkpoint).spec, config)
    real_predict = LatencyTable.predict_ms

    def predicted_out_of_reach(table, spec, statistic=None):
        return 10 * real_predict(table, spec, statistic) if spec == floor else real_predict(table, spec, statistic)

    monkeypatch.setattr(LatencyTable, "predict_ms", predicted_out_of_reach)
    result = run_search(config, out=tmp_path / "run", dataset=prepared.dataset, progress=False, echo=lambda m: None)
    assert result.iterations == 1


@pytest.mark.parametrize(
    "override, message",
    [
        ("search.budget_msec=3", "unknown key 'search.budget_msec'"),
        ("search.finetune_steps=ten", "search.finetune_steps must be an integer"),
        ("model.checkpoint=/no/such/base.pt", "model.checkpoint: file /no/such/base.pt not found"),
    ],
)
def test_bad_config_fails_before_any_work(prepared, tmp_path, capsys, override, message):
    from netadapt.cli.main import main

    code = main(["search", "--config", str(prepared.config_path), "--budget-ms", "1", "--set", override,
                 "--out", str(tmp_path / "run")])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_missing_budget_is_a_config_error(prepared, tmp_path):
    with pytest.raises(ConfigError, match="exactly one of search.budget_ms"):
        run_search(prepared.config(), out=tmp_path / "run", progress=False)


def diverge_on_head(context, task):
    """A candidate function whose `expanded[2]` proposal blows up for real (a huge learning rate)."""
    if task.group.name == "expanded[2]":
        # An infinite step makes the weights inf/NaN, so the next step's loss is NaN
        # for certain (a merely huge one can be tamed by BatchNorm). Set on a copy after
        # construction: the config refuses the value itself.
        train_config = copy.copy(context.train_config)
        train_config.finetune_lr = float("inf")
        context = dataclasses.replace(context, train_config=train_config)
    return evaluate_candidate(context, task)


def test_a_diverging_candidate_is_recorded_and_skipped(prepared, tmp_path):
    budget = prepared.unreachable_budget()
    config = prepared.config(budget, "search.max_iterations=1")
    result = run_search(config, out=tmp_path / "run", dataset=prepared.dataset,
                        executor=LocalExecutor(diverge_on_head), progress=False, echo=lambda m: None)
    history = RunDir(result.run_dir).read_history()
    head = history[(history["kind"] == "candidate") & (history["group"] == "expanded[2]")].iloc[0]
    assert head["status"] == "failed" and "diverged" in head["reason"]
    assert result.iterations == 1  # the search went on with the other candidates


def test_candidates_of_one_iteration_fine_tune_on_the_same_batches(prepared, tmp_path, monkeypatch):
    import netadapt.train as train_module

    real_batches = train_module._batches
    streams = []  # one per fine-tune: the batches it drew, augmentation applied

    def recording(*args, **kwargs):
        stream = []
        streams.append(stream)
        for images, labels in real_batches(*args, **kwargs):
            stream.append((images.clone(), labels.clone()))
            yield images, labels

    monkeypatch.setattr(train_module, "_batches", recording)
    config = prepared.config(prepared.unreachable_budget(), "search.max_iterations=1", "search.finetune_steps=3")
    result = run_search(config, out=tmp_path / "run", dataset=prepared.dataset, progress=False, echo=lambda m: None)
    candidates = RunDir(result.run_dir).read_history().query("kind == 'candidate' and status != 'skipped'")
    assert len(streams) == len(candidates) >= 3 and candidates["seed"].nunique() == 1
    for stream in streams[1:]:
        assert len(stream) == len(streams[0]) == 3
        for (images, labels), (first_images, first_labels) in zip(stream, streams[0]):
            assert torch.equal(images, first_images) and torch.equal(labels, first_labels)
    # Off (the ablation's control): each candidate draws batches of its own.
    streams.clear()
    config = prepared.config(prepared.unreachable_budget(), "search.max_iterations=1", "search.finetune_steps=3",
                             "search.common_batches=false")
    result = run_search(config, out=tmp_path / "own", dataset=prepared.dataset, progress=False, echo=lambda m: None)
    candidates = RunDir(result.run_dir).read_history().query("kind == 'candidate' and status != 'skipped'")
    assert len(streams) == len(candidates) >= 3 and candidates["seed"].nunique() == len(candidates)
    assert not torch.equal(streams[1][0][1], streams[0][0][1])


def test_prescreen_control_arm_and_distillation_in_a_search(prepared, tmp_path):
    config = prepared.config(prepared.unreachable_budget(), "search.max_iterations=1", "search.finetune_top=2",
                             "search.selection=accuracy_per_latency", "search.score=loss", "train.distill_alpha=0.5")
    result = run_search(config, out=tmp_path / "run", dataset=prepared.dataset, progress=False, echo=lambda m: None)
    history = RunDir(result.run_dir).read_history()
    arms = history[history["kind"].isin(["candidate", "control"])]
    assert sorted(arms["iteration"].unique()) == [1]
    for _, rows in arms.groupby("iteration"):
        proposals = rows[(rows["kind"] == "candidate") & (rows["status"] != "skipped")]
        assert len(proposals) >= 3 and proposals["prescreen_loss"].notna().all()  # every proposal prescreened
        tuned = proposals[proposals["status"].isin(["ok", "chosen"])]
        assert len(tuned) == 2 and (proposals["status"] == "screened_out").sum() == len(proposals) - 2
        assert proposals.loc[proposals["status"] == "screened_out", "holdout_loss"].isna().all()
        # The fine-tuned two are the prescreen's best (lowest loss).
        assert tuned["prescreen_loss"].max() <= proposals.loc[proposals["status"] == "screened_out",
                                                               "prescreen_loss"].min()
        (control,) = rows[rows["kind"] == "control"].itertuples()
        assert control.status == "ok" and control.group == "control" and control.seed == tuned["seed"].iloc[0]
        # The winner gains the most score (minus loss) per ms saved, against the control arm.
        gain = (control.holdout_loss - tuned["holdout_loss"]) / (control.predicted_ms - tuned["predicted_ms"])
        assert tuned.loc[gain.idxmax(), "status"] == "chosen"


def removal_wins(context, task):
    """A candidate function under which a depth proposal always scores best, to follow one through a search."""
    result = evaluate_candidate(context, task)
    if task.removed_block is not None and result.status == "ok":
        result.holdout_acc = 1.0
    return result


def test_a_depth_proposal_is_proposed_fine_tuned_and_committed(prepared, tmp_path):
    config = prepared.config(prepared.unreachable_budget(), "search.max_iterations=2", "search.depth_proposals=true")
    result = run_search(config, out=tmp_path / "run", dataset=prepared.dataset, executor=LocalExecutor(removal_wins),
                        progress=False, echo=lambda m: None)
    run = RunDir(result.run_dir)
    history = run.read_history()
    first = history[(history["iteration"] == 1) & (history["kind"] == "candidate")]
    removals = first[first["group"].str.startswith("remove[")]
    assert "remove[2]" in set(removals["group"]) and removals["width_after"].isna().all()
    (winner,) = history[(history["iteration"] == 1) & (history["kind"] == "iteration")].itertuples()
    assert winner.group.startswith("remove[")
    index = int(winner.group[len("remove["):-1])
    base = load_checkpoint(run.checkpoint_path(0))
    after = load_checkpoint(run.checkpoint_path(1))
    assert after.spec == without_block(base.spec, index).replace(name=after.spec.name)
    # The next iteration starts from the shallower network: its proposals name its own blocks.
    second = history[(history["iteration"] == 2) & (history["kind"] == "candidate")]
    assert not set(second["group"]) & {f"expanded[{len(base.spec.blocks) - 1}]"}
    assert result.iterations == 2


def test_depth_proposals_join_the_plan_when_their_removal_meets_the_target(tiny_spec):
    def predict(spec):  # per-layer overhead: 1 ms a block, channels nearly free
        return float(len(spec.blocks)) + 0.001 * sum(g.width for g in prunable_groups(spec))

    groups = prunable_groups(tiny_spec)
    current = predict(tiny_spec)
    plan = plan_iteration(tiny_spec, groups, current, 0.5, predict, min_proposals=1, max_halvings=0,
                          removable=removable_blocks(tiny_spec))
    assert [index for index, _ in plan.removals] == [0, 2]
    assert all(ms == pytest.approx(predict(without_block(tiny_spec, i))) for i, ms in plan.removals)
    assert not any(choice for _, choice in plan.choices)  # no channel cut saves 0.5 ms
    assert plan.proposals == plan.counted_proposals == 2
    assert plan_iteration(tiny_spec, groups, current, 0.5, predict, min_proposals=1, max_halvings=0).proposals == 0


def test_a_candidate_trains_on_the_contexts_thread_count(prepared, monkeypatch):
    import netadapt.executor as executor_module
    from netadapt.config import TrainConfig
    from netadapt.executor import IterationContext

    model = load_checkpoint(prepared.checkpoint)
    group = prunable_groups(model.spec, 8, 8)[0]
    context = IterationContext(model.spec, model.state_dict(), prepared.dataset.train.subset(64),
                               prepared.dataset.holdout.subset(64), TrainConfig(batch_size=16, threads=0),
                               finetune_steps=1, eval_batch_size=64, threads=1)
    task = CandidateTask(1, group, candidate_widths(group)[0], 1.0, seed=0)
    seen = []

    def finetune_spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_finetune(*args, **kwargs)

    real_finetune = executor_module.finetune
    monkeypatch.setattr(executor_module, "finetune", finetune_spy)
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        result = evaluate_candidate(context, task)
        assert result.status == "ok" and seen == [1]  # the context's count, not the caller's 3
        assert torch.get_num_threads() == 3  # and restored afterwards
    finally:
        torch.set_num_threads(previous)


def test_a_run_killed_after_meeting_the_budget_finishes_on_resume(prepared, tmp_path, monkeypatch):
    import netadapt.search as search_module

    class Killed(Exception):
        """Stands in for a kill between the budget-meeting commit and the record of the run's end."""

    def killed_before_the_end(*args, **kwargs):
        raise Killed

    real_finish = search_module.SearchLoop.finish
    monkeypatch.setattr(search_module.SearchLoop, "finish", killed_before_the_end)
    # A 10% margin under the budget: the last target is clamped to budget x (1 - margin), and with
    # the default 2% a loaded machine's noise could keep every measured network above the budget.
    config = prepared.config("search.budget_ratio=0.97", "search.initial_reduction=0.1", "search.max_iterations=4",
                             "search.budget_margin=0.1")
    with pytest.raises(Killed):
        run_search(config, out=tmp_path / "run", dataset=prepared.dataset, progress=False, echo=lambda m: None)
    run = RunDir(tmp_path / "run")
    at_kill = run.read_state()
    assert not at_kill.finished and "meets the budget" in at_kill.budget_met
    monkeypatch.setattr(search_module.SearchLoop, "finish", real_finish)
    resumed = run_search(resume=run.path, dataset=prepared.dataset, progress=False, echo=lambda m: None)
    # Finished without another cut: the network that met the budget is the result.
    assert resumed.iterations == at_kill.iteration and "meets the budget" in resumed.stop_reason
    assert run.read_state().finished and run.read_history()["iteration"].max() == at_kill.iteration
    assert resumed.final_spec == load_checkpoint(run.checkpoint_path(at_kill.iteration)).spec


def test_kill_9_mid_iteration_then_resume_gives_the_same_network(prepared, tmp_path):
    budget = prepared.unreachable_budget()
    overrides = [budget]
    reference = run_search(prepared.config(*overrides), out=tmp_path / "reference", dataset=prepared.dataset,
                           progress=False, echo=lambda m: None)
    config_path = tmp_path / "killed.yaml"
    config_path.write_text(prepared.config(*overrides).to_yaml())
    run = RunDir(tmp_path / "killed")
    process = subprocess.Popen(
        [sys.executable, "-m", "netadapt.cli.main", "search", "--config", str(config_path), "--out", str(run.path),
         "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            state = run.read_state() if run.state_path.exists() else None
            if state and state.iteration >= 1:
                break
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.3)  # into iteration 2's candidates
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    killed_at = run.read_state().iteration
    assert killed_at < 3, "the kill came too late to test a resume"
    resumed = run_search(resume=run.path, dataset=prepared.dataset, progress=False, echo=lambda m: None)
    assert resumed.iterations == 3 and resumed.final_spec == reference.final_spec
    expected = torch.load(RunDir(reference.run_dir).checkpoint_path(3), weights_only=True)["state_dict"]
    actual = torch.load(run.checkpoint_path(3), weights_only=True)["state_dict"]
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    columns = ["iteration", "kind", "group", "width_after", "holdout_acc"]
    reference_rows = RunDir(reference.run_dir).read_history()[columns]
    resumed_rows = run.read_history()[columns]
    assert reference_rows.equals(resumed_rows), "history must hold each iteration exactly once"



def test_a_search_runs_on_a_folder_streamed_from_disk(prepared, tmp_path):
    """The same search on image files decoded per batch by a worker process, not tensors in memory."""
    from netadapt.data import EMBEDDED_PATH

    root = tmp_path / "images"
    with np.load(EMBEDDED_PATH) as archive:
        for split, per_split in (("train", 1200), ("test", 300)):
            for i, (image, label) in enumerate(zip(archive[f"{split}_images"][:per_split],
                                                   archive[f"{split}_labels"][:per_split])):
                folder = root / split / f"class-{label}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{i}.pgm").write_bytes(b"P5 28 28 255\n" + image.tobytes())
    config = prepared.config(prepared.unreachable_budget(), "search.max_iterations=1", "data.dataset=folder",
                             f"data.path={root}", "data.cache=stream", "data.workers=1", *LIGHT_MEASURE)
    messages = []
    result = run_search(config, out=tmp_path / "run", progress=False, echo=messages.append)
    history = RunDir(result.run_dir).read_history()
    assert result.iterations == 1
    tuned = history[(history["kind"] == "candidate") & history["status"].isin(["ok", "chosen"])]
    assert len(tuned) >= 2 and (tuned["finetune_s"] > 0).all() and tuned["holdout_acc"].between(0, 1).all()
    assert any("streamed from disk (1 decoding workers)" in message for message in messages), messages
