"""The NetAdapt loop: a run's set-up, resume and iterations (`run_search`), one step per method of `SearchLoop`."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from mobilenetv3 import MobileNetV3, NetSpec, build
from netadapt.base import obtain_base_model
from netadapt.benchmark import Measurer
from netadapt.config import Config, check_ranges, load_config
from netadapt.data import Dataset, load_dataset
from netadapt.errors import ConfigError, NetadaptError, SearchError
from netadapt.executor import (
    CONTROL,
    CandidateResult,
    CandidateTask,
    Executor,
    IterationContext,
    LocalExecutor,
    candidate_seed,
    describe,
)
from netadapt.groups import (
    ChannelGroup,
    candidate_widths,
    lower_bound_spec,
    prunable_groups,
    removal_name,
    removable_blocks,
    with_width,
    without_block,
)
from netadapt.latency import LatencyTable, OnlineCalibration, calibration_specs, table_path
from netadapt.measurers import make_measurer
from netadapt.onnx_export import onnx_bytes
from netadapt.rundir import HistoryRow, RunDir, SearchState
from netadapt.search.budget import (
    CLOSE_CALL_PCT,
    SURPRISE,
    BudgetTest,
    WholeFigures,
    budget_test,
    measure_whole,
    met_by_the_base,
    resolve_budget,
)
from netadapt.search.schedule import IterationPlan, latency_reduction, plan_iteration, search_floor
from netadapt.search.selection import candidate_score, prescreen_top, select_proposal
from netadapt.checkpoint import load_checkpoint, save_checkpoint
from netadapt.devices import resolve_device
from netadapt.train import evaluate, evaluate_scores, long_finetune

__all__ = [
    "SearchLoop",
    "SearchResult",
    "run_search",
    "validate_search_config",
]


@dataclass(frozen=True)
class SearchResult:
    run_dir: Path
    base_ms: float
    budget_ms: float
    final_ms: float
    final_holdout_acc: float
    iterations: int  # completed NetAdapt iterations (0: the base met the budget)
    stop_reason: str
    final_spec: NetSpec


def validate_search_config(config: Config) -> None:
    """Checks that need no data or measurement, so a bad config fails before any work."""
    search = config.search
    if (search.budget_ms is None) == (search.budget_ratio is None):
        raise ConfigError("give exactly one of search.budget_ms (--budget-ms) and search.budget_ratio (--budget-ratio)")
    check_ranges(config)  # each section's RANGES, for a config built or changed in Python too
    final = search.budget_ratio if search.budget_ratio is not None else search.budget_ms
    for index, landing in enumerate(search.landings):
        if landing <= final:
            unit = "the budget ratio" if search.budget_ratio is not None else "the budget"
            raise ConfigError(f"search.landings[{index}] must be above {unit} ({final:g}), got {landing:g}: "
                              f"landings are budgets met on the way to the final one")
        if search.budget_ratio is not None and landing >= 1:
            raise ConfigError(f"search.landings[{index}] must be a share of the base below 1 "
                              f"(the budget is a ratio), got {landing:g}")
    if config.model.checkpoint is not None and not Path(config.model.checkpoint).is_file():
        raise ConfigError(f"model.checkpoint: file {config.model.checkpoint} not found")
    if config.model.spec is not None and not Path(config.model.spec).is_file():
        raise ConfigError(f"model.spec: file {config.model.spec} not found")
    resolve_device(config.train.device)  # a GPU this machine lacks is refused before any work


def make_executor(config: Config) -> Executor:
    if config.executor.kind == "ray":
        from netadapt.ray_executor import RayExecutor

        return RayExecutor(config.executor.ray_address, config.executor.cpus_per_candidate,
                           config.executor.gpus_per_candidate, config.executor.max_retries)
    return LocalExecutor()


class _Search:
    """One search's state; `run_search` is the public entry point."""

    def __init__(self, config: Config, run: RunDir, measurer: Measurer, table: LatencyTable, progress: bool, echo,
                 base_onnx: bytes, calibration: OnlineCalibration):
        self.config = config
        self.run = run
        self.measurer = measurer
        self.table = table
        self.executor: Executor | None = None  # set when iterations start
        self.progress = progress
        self.echo = echo
        self.log = run.logger()
        self.threads = config.train.threads if config.train.threads > 0 else torch.get_num_threads()
        self.base_onnx = base_onnx  # measured beside every winner
        self.calibration = calibration
        self._teacher: MobileNetV3 | None = None

    def say(self, message: str) -> None:
        self.log.info(message)
        self.echo(message)

    def predict_ms(self, spec: NetSpec) -> float:
        """The calibrated prediction: the table's, times the online calibration's factor."""
        return self.calibration.apply(self.table.predict_ms(spec))

    def commit(self, iteration: int, model: MobileNetV3, rows: list[HistoryRow], state: SearchState) -> None:
        """Checkpoint, then history, then state: the state write is the commit point."""
        save_checkpoint(self.run.checkpoint_path(iteration), model)
        model.spec.save(self.run.spec_path(iteration))
        self.run.append_history(rows, keep_through_iteration=iteration - 1)
        self.table.save_copy(self.run.lut_path)
        self.run.write_state(replace(state, iteration=iteration, calibration=self.calibration_points()))

    def teacher(self) -> MobileNetV3:
        """The base network (the run's checkpoint 0), loaded once: what fine-tunes distil from."""
        if self._teacher is None:
            self._teacher = load_checkpoint(self.run.checkpoint_path(0)).eval()
        return self._teacher

    def calibration_points(self) -> tuple[tuple[float, float], ...]:
        """The online calibration's points as state.json keeps them, so a resumed run goes on from them."""
        return tuple((p.table_ms, p.measured_ms) for p in self.calibration.points)


def run_search(
    config: Config | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    executor: Executor | None = None,
    measurer: Measurer | None = None,
    dataset: Dataset | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    confirm_target: str | None = None,
) -> SearchResult:
    """Run (or resume) a NetAdapt search.

    Args:
        config: the resolved config (ignored when resuming: the run's own
            config.yaml is used).
        out: the run directory for a new run (default: runs/search-<time>).
        resume: a run directory to continue from its last completed iteration.
        executor: where candidates are evaluated (default: in this process).
        measurer: where latency is measured (default: from `config.target`,
            in a separate process when `measure.isolation` is "process").
        dataset: preloaded data (default: loaded from `config.data`).
        progress: show progress bars.
        echo: where one-line summaries go (besides the run's log).
        confirm_target: when resuming, the device the caller confirms; a run whose
            config.yaml measures on a remote device is refused without it
            (`RunDir.confirm_target`: the file must not choose where the token goes).
    """
    if resume is not None:
        run = RunDir(resume)
        run.require_existing()
        config = load_config(run.config_path)
        run.confirm_target(config.target.device, config.target.token_file, confirm_target)
    else:
        if config is None:
            raise ValueError("run_search needs a config for a new run")
        run = RunDir(out or Path("runs") / time.strftime("search-%Y%m%d-%H%M%S"))
    validate_search_config(config)
    torch.manual_seed(config.seed)
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)

    if dataset is None:
        load_start = time.perf_counter()
        dataset = load_dataset(config.data)
        echo(f"data: {dataset.summary()} (loaded in {time.perf_counter() - load_start:.1f} s)")
    shape = config.input_shape()
    owned = measurer is None
    measurer = measurer or make_measurer(config.target, config.measure, shape,
                                         isolated=config.measure.isolation == "process")
    try:
        return _run(config, run, resume, executor, measurer, dataset, shape, progress, echo)
    finally:
        if owned and hasattr(measurer, "close"):
            measurer.close()


def _run(config: Config, run: RunDir, resume, executor, measurer: Measurer, dataset: Dataset, shape, progress, echo):
    lut_path = table_path(config.lut.table, measurer.fingerprint())
    table = LatencyTable.open(lut_path, measurer, shape, reference_units=config.lut.reference_units)
    table.ensure_consistent(config.lut.drift_check, config.lut.drift_sample, config.lut.drift_tolerance_pct,
                            echo=echo, progress=progress)
    calibration = OnlineCalibration()

    state = run.read_state() if resume is not None else None
    if state is None:
        model, base_path = obtain_base_model(config, dataset, progress=progress, log=echo)
        model.eval()
        start = time.perf_counter()
        base_onnx = onnx_bytes(model, shape)
        export_s = time.perf_counter() - start
        # Twice the passes of a winner's: the base's figure anchors the first predictions and the budget.
        base = measure_whole(measurer, base_onnx, None, 2 * config.measure.repeats)
        base_ms = base.network_ms
        budget_ms = resolve_budget(config, base_ms)
        if table.correction_specs(model.spec) == 0:
            table.fit_correction(calibration_specs(model.spec, config.lut.correction_samples, config.lut.granularity,
                                                   config.lut.min_channels, config.lut.seed),
                                 repeats=config.lut.network_passes,
                                 unfitted=[lower_bound_spec(model.spec, config.lut.min_channels, config.lut.granularity)])
        table_base = table.predict_ms(model.spec)
        calibration.observe(table_base, base_ms)
        smallest = search_floor(model.spec, config)
        # Predicted and calibrated: the correction (fitted on the base and cuts
        # down to the floor) and the base's measurement put it on the measured scale.
        lower_bound = calibration.apply(table.predict_ms(smallest))
        floor_source = "predicted"
        if budget_ms < lower_bound and base_ms > budget_ms:
            # The floor's prediction extrapolates below every network the
            # correction was fitted on, so a refusal is first confirmed by
            # measuring the floor beside the base: a few seconds, against a
            # search wrongly refused.
            floor = measure_whole(measurer, onnx_bytes(build(smallest), shape), base_onnx, 2 * config.measure.repeats)
            lower_bound, floor_source = floor.ratio * base_ms, "measured"
        if budget_ms < lower_bound and base_ms > budget_ms:
            raise SearchError(
                f"budget {budget_ms:.3f} ms is below anything this search space can reach: with every group at "
                f"its minimum ({config.lut.min_channels} channels)"
                + (f" and {len(model.spec.blocks) - len(smallest.blocks)} residual blocks removed"
                   if config.search.depth_proposals else "")
                + f" the {floor_source} latency is {lower_bound:.3f} ms (base {base_ms:.3f} ms measured)"
            )
        if resume is None:
            run.create(config.to_yaml())
        search = _Search(config, run, measurer, table, progress, echo, base_onnx, calibration)
        base_scores = evaluate_scores(model, dataset.holdout, config.train.eval_batch_size, device=config.train.device,
                                      precision=config.train.precision)
        base_acc = base_scores.accuracy
        test_acc = evaluate(model, dataset.test, config.train.eval_batch_size, device=config.train.device,
                            precision=config.train.precision)
        search.say(f"base {model.spec.name}: {base_ms:.4f} ms measured (best of {base.passes} passes, spread "
                   f"{base.spread_pct:.1f}%; table predicted {table_base:.4f}), holdout {base_acc:.2%}, "
                   f"budget {budget_ms:.4f} ms, table {table.path}")
        finished = base_ms <= budget_ms
        stop_reason = met_by_the_base(base_ms, budget_ms, lower_bound) if finished else None
        row = HistoryRow(0, "base", group="", status="done", predicted_ms=table_base,
                         table_predicted_ms=table_base, measured_ms=base_ms, base_measured_ms=base_ms,
                         ratio_to_base=1.0, steady_ms=base_ms, measured_spread_pct=base.spread_pct,
                         holdout_acc=base_acc, holdout_loss=base_scores.loss, test_acc=test_acc,
                         export_s=export_s, measure_s=base.measure_s,
                         checkpoint=str(run.checkpoint_path(0).relative_to(run.path)),
                         reason=stop_reason or f"base from {base_path}")
        state = SearchState(iteration=0, base_ms=base_ms, base_predicted_ms=table_base, budget_ms=budget_ms,
                            measured_ms=base_ms, predicted_ms=table_base, holdout_acc=base_acc,
                            holdout_loss=base_scores.loss, finished=finished, stop_reason=stop_reason,
                            base_figures=(base_ms,))
        search.commit(0, model, [row], state)
        if finished:
            search.say(stop_reason)
    else:
        for table_ms, measured_ms in state.calibration:
            calibration.observe(table_ms, measured_ms)
        base_onnx = onnx_bytes(build(run.read_spec(0)), shape)  # latency does not depend on the weights
        search = _Search(config, run, measurer, table, progress, echo, base_onnx, calibration)
        model = load_checkpoint(run.checkpoint_path(state.iteration))
        search.say(f"resuming {run.path} after iteration {state.iteration}")
    if not state.finished:
        search.executor = executor or make_executor(config)
        try:
            state, model = SearchLoop(search, dataset, shape).run(state, model)
        finally:
            search.executor.close()
    return SearchResult(run.path, state.base_ms, state.budget_ms, state.measured_ms, state.holdout_acc,
                        state.iteration, state.stop_reason, model.spec)


def _prefetch(table: LatencyTable, spec: NetSpec, groups: list[ChannelGroup], widths: int) -> float:
    """Measure, together, the missing units of each group's next `widths` cuts; returns the seconds spent.

    `choose_width` scans widths from the largest down and usually stops
    within the first few; measuring those units in one interleaved batch
    compares them under the same machine conditions, where on-demand
    entries would each be measured alone at a different moment.
    """
    if widths < 1:
        return 0.0
    cuts = [with_width(spec, group, width) for group in groups for width in candidate_widths(group)[:widths]]
    before = table.measure_seconds
    table.fill(cuts, progress=False)
    return table.measure_seconds - before


def _run_candidates(search: "_Search", context: IterationContext, tasks: list[CandidateTask],
                    description: str) -> dict[str, CandidateResult]:
    """Every task through the search's executor, with a progress bar; results by task name."""
    results: dict[str, CandidateResult] = {}
    with tqdm(total=len(tasks), desc=description, unit="candidate", disable=not search.progress, leave=False) as bar:
        for result in search.executor.run(context, tasks):
            results[result.task.name] = result
            bar.update(1)
    return results


def _current_score(state: SearchState, score: str) -> float:
    """The current network's holdout score as the state recorded it (the reference when there is no control arm)."""
    if score == "loss":
        return -state.holdout_loss if state.holdout_loss is not None else -math.inf  # older runs did not record it
    return state.holdout_acc


def _base_typical_ms(state: SearchState) -> float:
    """The median of the base's figures so far (at the start and beside every winner): the base's steady scale."""
    return float(np.median(state.base_figures or (state.base_ms,)))  # older runs kept only the first


# The creep step: a network the table puts under a ratio budget but the measurement over it is
# aimed a whole number of these steps lower (see `_creep_steps`).
CREEP_STEP = 0.02


def _creep_steps(config: Config, state: SearchState, factor: float, current_ms: float) -> int:
    """How many `CREEP_STEP`s the next target goes under the current network when the table and the
    measurement disagree about a ratio budget; 0 when they agree.

    The ratio clamp below sits on the table's scale, so where the table reads the
    current network's share of the base low (it says under the budget, the stop
    test said over) each further iteration could only take the smallest cut left,
    and the search crept to the budget one granularity step per iteration (three
    extra iterations of the demo). The current network's calibrated figure is its
    measured share of the base times the base's steady figure, so its excess over
    the clamp is measured; rounded up to whole steps, two runs whose figures
    differ by less than a step mostly aim at the same target.
    """
    ratio = config.search.budget_ratio
    if ratio is None or current_ms > ratio * state.base_predicted_ms * factor:
        return 0  # an absolute budget is clamped on the measured scale already; or the table agrees
    measured_share = current_ms / _base_typical_ms(state)
    aim = ratio * (1 - config.search.budget_margin)
    if measured_share <= ratio:
        return 0
    return max(1, math.ceil((measured_share / aim - 1) / CREEP_STEP - 1e-9))


def _floor_ms(config: Config, state: SearchState, factor: float, current_ms: float) -> float:
    """The lowest target an iteration may aim at, on the calibrated scale: just under the next budget.

    The next budget is the highest of `search.landings` and the final budget
    that the current network (`current_ms`, its calibrated prediction) is not
    yet under; the final budget's floor holds once every landing is passed.
    A ratio budget is clamped on the table's scale (the budget ratio of the
    table's base prediction, converted at the current factor): the clamp then
    moves with the table alone, so the same seed and table land on the same
    final network however the measurements scatter. Once the table puts the
    current network under the budget and the measurement does not, the floor
    is the current network less the measured excess (`_creep_steps`). An
    absolute budget is a figure of the machine as it is, so it is clamped as
    it stands.
    """
    return _budget_floor(config, state, factor, current_ms)[0]


def _clamp_from_ms(config: Config, state: SearchState, factor: float, current_ms: float) -> float:
    """The schedule target under which an iteration aims at `_floor_ms` instead: as far above the
    budget as the floor is under it.

    A target just over the budget, or just under, lands a network whose stop
    test the measurement's noise decides: in the demo two runs of one seed and
    table took the same third cut, at 0.70 of the base, and one measured it at
    0.696 and stopped while the other measured 0.702 and took a fourth. Aimed
    at the floor, that iteration lands `search.budget_margin` under the budget
    in both. The creep floor already sits under a measured excess, so it has
    no band.
    """
    return _budget_floor(config, state, factor, current_ms)[1]


def _budget_floor(config: Config, state: SearchState, factor: float, current_ms: float) -> tuple[float, float]:
    """(`_floor_ms`, `_clamp_from_ms`): one computation, so the two cannot disagree about the budget."""
    ratio = config.search.budget_ratio

    def level_ms(value: float) -> float:
        return value * state.base_predicted_ms * factor if ratio is not None else value

    keep = 1 - config.search.budget_margin
    final = level_ms(ratio) if ratio is not None else state.budget_ms
    ahead = [level_ms(landing) for landing in config.search.landings if level_ms(landing) < current_ms]
    if not ahead:
        steps = _creep_steps(config, state, factor, current_ms)
        if steps:
            floor = current_ms / (1 + steps * CREEP_STEP)
            return floor, floor
    level = max([final, *ahead])
    return level * keep, level / keep


@dataclass
class _Proposals:
    """One iteration's plan and its proposals: each one's task (None: the group was skipped) and row so far."""

    iteration: int
    reduction_ms: float  # the schedule's dR_i on the calibrated scale, before any halving
    current_predicted_ms: float
    plan: IterationPlan
    entries: list[tuple[CandidateTask | None, HistoryRow]]

    @property
    def tasks(self) -> list[CandidateTask]:
        return [task for task, _ in self.entries if task is not None]


@dataclass
class _Pick:
    """The iteration's winner, exported and measured whole beside the base."""

    result: CandidateResult
    model: MobileNetV3
    onnx: bytes
    figures: WholeFigures
    export_s: float


class SearchLoop:
    """The loop's steps, one method each: propose, prescreen, fine-tune, pick and measure, record, finish."""

    def __init__(self, search: _Search, dataset: Dataset, shape: tuple[int, int, int, int]) -> None:
        self.search, self.config, self.table = search, search.config, search.table
        self.dataset, self.shape = dataset, shape

    def run(self, state: SearchState, model: MobileNetV3) -> tuple[SearchState, MobileNetV3]:
        """Iterate from `state` until the budget is met or the search cannot go on; returns the final state."""
        config = self.config
        while True:
            if state.budget_met:  # committed by an iteration whose run was killed before its end was recorded
                return self.finish(state, model, state.budget_met)
            iteration = state.iteration + 1
            if iteration > config.search.max_iterations:
                return self.finish(state, model, f"reached search.max_iterations ({config.search.max_iterations})")
            proposals = self.propose(state, model.spec, iteration)
            if not proposals.tasks:
                return self.finish(state, model, "no group can be cut to meet the next target",
                                   [row for _, row in proposals.entries])
            context = self.context(model)
            tasks, screened = self.prescreen(context, proposals.tasks, iteration)
            results, control = self.fine_tune(context, tasks, proposals)
            reference = _current_score(state, config.search.score)
            if control is not None and control.status == "ok":
                reference = candidate_score(control, config.search.score)
            pick = self.pick_and_measure([results[task.name] for task in tasks], reference, proposals, state)
            rows = self.candidate_rows(proposals, screened, results, control, pick)
            if pick is None:
                return self.finish(state, model, "every candidate of the iteration failed", rows)
            state, model, decision = self.record(state, proposals, pick, rows)
            if decision.met:
                return self.finish(state, model, f"measured {decision.text}: meets the budget")

    def propose(self, state: SearchState, spec: NetSpec, iteration: int) -> _Proposals:
        """NetAdapt's step 1: size one cut per group (and each depth proposal) to meet the iteration's target."""
        config, search, table = self.config, self.search, self.table
        # NetAdapt's dR_i, a share of the base on the table's scale, put on the
        # calibrated scale at the current factor: widths then meet
        # table(cut) <= table(current) - dR_i whatever the factor, so above the
        # budget's clamp the same seed and table choose the same cuts however
        # the whole-network measurements scatter.
        reduction = search.calibration.factor * latency_reduction(
            state.base_predicted_ms, config.search.initial_reduction, config.search.decay, iteration)
        groups = prunable_groups(spec, config.lut.min_channels, config.lut.granularity)
        prefetch_s = _prefetch(table, spec, groups, config.lut.prefetch_widths)
        current_predicted = search.predict_ms(spec)
        floor_ms, clamp_from_ms = _budget_floor(config, state, search.calibration.factor, current_predicted)
        plan = plan_iteration(spec, groups, current_predicted, reduction, search.predict_ms,
                              config.search.min_proposals, config.search.max_reduction_halvings,
                              measure_seconds=lambda: table.measure_seconds,
                              floor_ms=floor_ms, clamp_from_ms=clamp_from_ms,
                              fill=lambda specs: table.fill(specs, progress=False), window=config.lut.prefetch_widths,
                              max_cut_fraction=config.search.max_cut_fraction,
                              removable=removable_blocks(spec) if config.search.depth_proposals else None)
        # Common random numbers: every candidate of the iteration fine-tunes on the same batches and
        # augmentation, so their accuracies differ by their cuts, not by their batches' luck.
        def seed(name: str) -> int:
            return candidate_seed(config.seed, iteration, name, config.search.common_batches)
        entries: list[tuple[CandidateTask | None, HistoryRow]] = []
        for position, (group, choice) in enumerate(plan.choices):
            predict_s, lut_measure_s = plan.predict_s[group.name], plan.measure_s[group.name]
            if position == 0:
                lut_measure_s += prefetch_s  # the batch measured for all groups is booked once
            if choice is None:
                entries.append((None, HistoryRow(
                    iteration, "candidate", group=group.name, width_before=group.width, status="skipped",
                    target_ms=plan.target_ms, predict_s=predict_s, lut_measure_s=lut_measure_s,
                    reason="no width meets the target" if candidate_widths(group) else "at its minimum")))
                continue
            width, predicted = choice
            entries.append((CandidateTask(iteration, group, width, predicted, seed(group.name)), HistoryRow(
                iteration, "candidate", predict_s=predict_s, lut_measure_s=lut_measure_s,
                table_predicted_ms=table.predict_ms(with_width(spec, group, width)))))
        for index, predicted in plan.removals:
            entries.append((CandidateTask(iteration, None, 0, predicted, seed(removal_name(index)), removed_block=index), HistoryRow(
                iteration, "candidate", table_predicted_ms=table.predict_ms(without_block(spec, index)))))
        if plan.halvings:
            search.say(f"iteration {iteration}: fewer than {config.search.min_proposals} groups could save the "
                       f"schedule's {reduction:.4f} ms; halved it {plan.halvings} time(s) to "
                       f"{plan.reduction_ms:.4f} ms, which {plan.proposals} can")
        creep = _creep_steps(config, state, search.calibration.factor, current_predicted)
        if plan.clamped and creep:
            search.say(f"iteration {iteration}: the table puts the network under the budget, the measurement "
                       f"{100 * (current_predicted / _base_typical_ms(state) / config.search.budget_ratio - 1):.1f}% "
                       f"over it: target clamped to {plan.target_ms:.4f} ms, {creep} step(s) of "
                       f"{100 * CREEP_STEP:g}% under the current network")
        elif plan.clamped:
            search.say(f"iteration {iteration}: target clamped to {plan.target_ms:.4f} ms, "
                       f"{100 * config.search.budget_margin:g}% under the budget, so the search lands just under it")
        return _Proposals(iteration, reduction, current_predicted, plan, entries)

    def context(self, model: MobileNetV3) -> IterationContext:
        """What every candidate of the iteration shares: the current network, the data, the training settings."""
        config = self.config
        context = IterationContext(model.spec, {k: v.detach().clone() for k, v in model.state_dict().items()},
                                   self.dataset.train, self.dataset.holdout, config.train, config.search.finetune_steps,
                                   config.train.eval_batch_size, threads=self.search.threads)
        if config.train.distill_alpha > 0:
            teacher = self.search.teacher()
            context = replace(context, teacher_spec=teacher.spec, teacher_state_dict=teacher.state_dict())
        return context

    def prescreen(self, context: IterationContext, tasks: list[CandidateTask],
                  iteration: int) -> tuple[list[CandidateTask], dict[str, CandidateResult]]:
        """With `search.finetune_top`, score every proposal right after surgery and BatchNorm
        recalibration and keep the best; returns the tasks to fine-tune and the prescreen's results."""
        top = self.config.search.finetune_top
        if not 0 < top < len(tasks):
            return tasks, {}
        screened = _run_candidates(self.search, replace(context, finetune_steps=0, keep_weights=False), tasks,
                                   f"iteration {iteration} prescreen")
        kept = set(prescreen_top(list(screened.values()), top, self.config.search.score))
        return [task for task in tasks if task.name in kept], screened

    def fine_tune(self, context: IterationContext, tasks: list[CandidateTask],
                  proposals: _Proposals) -> tuple[dict[str, CandidateResult], CandidateResult | None]:
        """NetAdapt's step 2: cut, fine-tune and score each task; with the ratio rule, also the control arm
        (the current network fine-tuned on the same batches). Returns the results by name and the control's."""
        arms = list(tasks)
        if self.config.search.selection == "accuracy_per_latency":
            arms.append(CandidateTask(proposals.iteration, None, 0, proposals.current_predicted_ms,
                                      candidate_seed(self.config.seed, proposals.iteration, CONTROL,
                                                     self.config.search.common_batches)))
        results = _run_candidates(self.search, context, arms, f"iteration {proposals.iteration}")
        return results, results.pop(CONTROL, None)

    def pick_and_measure(self, results: list[CandidateResult], reference: float, proposals: _Proposals,
                         state: SearchState) -> _Pick | None:
        """NetAdapt's step 3: the best candidate by the selection rule, measured whole beside the base.
        A candidate whose measurement fails is marked failed and the next best is taken."""
        config, search = self.config, self.search
        remaining = list(results)
        while remaining:
            winner = select_proposal(remaining, config.search.selection, reference, proposals.current_predicted_ms,
                                     config.search.score)
            if winner is None:
                return None
            model = build(winner.spec)
            model.load_state_dict(winner.state_dict)
            model.eval()
            try:
                start = time.perf_counter()
                onnx = onnx_bytes(model, self.shape)
                export_s = time.perf_counter() - start
                figures = measure_whole(search.measurer, onnx, search.base_onnx, config.measure.repeats)
                off = figures.ratio * _base_typical_ms(state) / winner.task.predicted_ms - 1
                if abs(off) > SURPRISE:
                    # Far from its prediction: more passes before the figure steers the calibration and
                    # the stop test (a slow stretch can outlast one set of passes).
                    figures = figures.merged(measure_whole(search.measurer, onnx, search.base_onnx,
                                                           config.measure.repeats))
                    search.say(f"iteration {proposals.iteration}: the winner measured {100 * off:+.1f}% off its "
                               f"prediction; measured again, {figures.passes} passes in all: {figures.network_ms:.4f} ms")
                return _Pick(winner, model, onnx, figures, export_s)
            except NetadaptError as error:
                winner.status, winner.reason = "failed", f"measurement failed: {error}"
                remaining.remove(winner)
        return None

    def candidate_rows(self, proposals: _Proposals, screened: dict[str, CandidateResult],
                       results: dict[str, CandidateResult], control: CandidateResult | None,
                       pick: _Pick | None) -> list[HistoryRow]:
        """history.csv's rows for every proposal of the iteration (and its control arm)."""
        target_ms, top = proposals.plan.target_ms, self.config.search.finetune_top
        rows: list[HistoryRow] = []
        for task, row in proposals.entries:
            if task is None:
                rows.append(row)
                continue
            first_look = screened.get(task.name)
            prescreen = {} if first_look is None else {"prescreen_acc": first_look.holdout_acc,
                                                        "prescreen_loss": first_look.holdout_loss}
            if task.name not in results:  # screened out: its row is the prescreen's
                rows.append(replace(row, **{
                    **describe(first_look), **prescreen, "target_ms": target_ms, "holdout_acc": None,
                    "holdout_loss": None, "status": "screened_out",
                    "reason": first_look.reason or f"not among the prescreen's best {top}"}))
                continue
            result = results[task.name]
            entry = replace(row, **describe(result), **prescreen, target_ms=target_ms)
            if pick is not None and result is pick.result:
                entry = replace(entry, status="chosen", measured_ms=pick.figures.network_ms,
                                          export_s=pick.export_s, measure_s=pick.figures.measure_s)
            rows.append(entry)
        if control is not None:
            rows.append(HistoryRow(**{**describe(control), "kind": "control", "target_ms": target_ms,
                                      "reason": control.reason or "the current network, fine-tuned as the proposals"}))
        return rows

    def record(self, state: SearchState, proposals: _Proposals, pick: _Pick,
               rows: list[HistoryRow]) -> tuple[SearchState, MobileNetV3, BudgetTest]:
        """The stop test, the online calibration and the commit of the iteration; returns the new state."""
        config, search, run = self.config, self.search, self.search.run
        iteration, winner, figures = proposals.iteration, pick.result, pick.figures
        test_acc = evaluate(pick.model, self.dataset.test, config.train.eval_batch_size, device=config.train.device,
                            precision=config.train.precision)
        decision = budget_test(config, figures, state.budget_ms)
        if abs(decision.margin_pct) < CLOSE_CALL_PCT:
            # A close call: as many passes again before it is decided, so one slow stretch cannot.
            figures = figures.merged(measure_whole(search.measurer, pick.onnx, search.base_onnx,
                                                   config.measure.repeats))
            decision = budget_test(config, figures, state.budget_ms)
            search.say(f"iteration {iteration}: a close call, measured again: {figures.passes} passes in all")
        table_predicted = self.table.predict_ms(winner.spec)
        state = replace(state, base_figures=(*(state.base_figures or (state.base_ms,)), figures.base_ms))
        # The winner on the base's steady scale: its ratio to the base in the same passes (drift
        # cancels) times the base's median figure, steadier than any one pass of the winner alone.
        steady_ms = figures.ratio * _base_typical_ms(state)
        search.calibration.observe(table_predicted, steady_ms)
        state = replace(state, measured_ms=figures.network_ms, predicted_ms=winner.task.predicted_ms,
                                  holdout_acc=winner.holdout_acc, holdout_loss=winner.holdout_loss)
        reason = f"measured {decision.text}: meets the budget" if decision.met else ""
        cut = winner.task.group
        iteration_row = HistoryRow(
            iteration, "iteration", group=winner.task.name, width_before=cut.width if cut else None,
            width_after=winner.task.width if cut else None, status="done", target_ms=proposals.plan.target_ms,
            predicted_ms=winner.task.predicted_ms, table_predicted_ms=table_predicted, measured_ms=figures.network_ms,
            base_measured_ms=figures.base_ms, ratio_to_base=figures.ratio, steady_ms=steady_ms,
            measured_spread_pct=figures.spread_pct, budget_margin_pct=decision.margin_pct,
            holdout_acc=winner.holdout_acc, holdout_loss=winner.holdout_loss, test_acc=test_acc, seed=winner.task.seed,
            reason=reason, checkpoint=str(run.checkpoint_path(iteration).relative_to(run.path)))
        # A met budget is committed with the iteration, so a run killed before `finish` records
        # the end is finished on resume instead of cutting a network that already meets it.
        search.commit(iteration, pick.model, rows + [iteration_row],
                      replace(state, finished=False, stop_reason=None, budget_met=reason or None))
        state = replace(state, iteration=iteration)
        search.say(f"iteration {iteration}: {figures.network_ms:.4f} ms measured ({winner.task.predicted_ms:.4f} "
                   f"predicted, target {proposals.plan.target_ms:.4f}), holdout {winner.holdout_acc:.2%}, "
                   + (f"cut {cut.name} {cut.width}->{winner.task.width}" if cut else f"took {winner.task.name}"))
        search.say(f"stop test after iteration {iteration}: {decision.text}: {'met' if decision.met else 'not met, going on'}")
        return state, pick.model, decision

    def finish(self, state: SearchState, model: MobileNetV3, reason: str,
               rows: list[HistoryRow] | None = None) -> tuple[SearchState, MobileNetV3]:
        """Optional long-term fine-tune, then record the end of the run."""
        config, search, run, dataset = self.config, self.search, self.search.run, self.dataset
        iteration = state.iteration
        rows = list(rows or [])
        steps = config.search.long_finetune_steps
        if steps > 0:
            long_finetune(model, dataset.train, steps, config.train, config.seed + iteration + 1, progress=search.progress,
                          teacher=search.teacher() if config.train.distill_alpha > 0 else None)
            holdout = evaluate(model, dataset.holdout, config.train.eval_batch_size, device=config.train.device,
                               precision=config.train.precision)
            test = evaluate(model, dataset.test, config.train.eval_batch_size, device=config.train.device,
                            precision=config.train.precision)
            save_checkpoint(run.path / "checkpoints" / "final.pt", model)
            model.spec.save(run.path / "checkpoints" / "final.spec.yaml")
            rows.append(HistoryRow(iteration, "final", group="", status="done", measured_ms=state.measured_ms,
                                   holdout_acc=holdout, test_acc=test, reason=f"long-term fine-tune of {steps} steps",
                                   checkpoint="checkpoints/final.pt"))
            search.say(f"long-term fine-tune ({steps} steps): holdout {holdout:.2%}, test {test:.2%}")
        # drop_final: a "final" row left by a long fine-tune that was killed before its commit
        run.append_history(rows, keep_through_iteration=iteration, drop_final=True)
        state = replace(state, finished=True, stop_reason=reason, budget_met=None)
        run.write_state(replace(state, calibration=search.calibration_points()))
        search.say(f"stopped: {reason}; {state.measured_ms:.3f} ms measured (base {state.base_ms:.3f}), "
                   f"holdout {state.holdout_acc:.2%}")
        return state, model
