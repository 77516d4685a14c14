"""The NetAdapt search (Yang et al., ECCV 2018, Algorithm 1).

    while measured latency > budget:
        target = predicted(current) - dR_i             # dR_i: geometric schedule
        for each prunable group:
            width = largest width whose LUT prediction meets target (else skip)
            cut by filter L2 norm, short-term fine-tune, holdout accuracy
        keep the best proposal, measure its whole-model latency on the target
    optionally long-term fine-tune the final network

The width choice compares LUT predictions with a target derived from the
LUT prediction of the current network, so both sides carry the same model
error; the stop test uses the whole-model latency measured on the target.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from mobilenetv3 import MobileNetV3, NetSpec, build
from netadapt.base import cache_dir, obtain_base_model
from netadapt.benchmark import Measurer
from netadapt.config import Config, load_config
from netadapt.data import Dataset, load_dataset
from netadapt.errors import ConfigError, NetadaptError, SearchError
from netadapt.executor import (
    CandidateResult,
    CandidateTask,
    Executor,
    IterationContext,
    LocalExecutor,
    candidate_seed,
    describe,
)
from netadapt.groups import ChannelGroup, candidate_widths, lower_bound_spec, prunable_groups, with_width
from netadapt.lut import LatencyTable, calibration_specs, table_filename
from netadapt.measurers import make_measurer
from netadapt.onnx_export import onnx_bytes
from netadapt.rundir import RunDir
from netadapt.train import evaluate, load_checkpoint, save_checkpoint, train

__all__ = [
    "IterationPlan",
    "SearchResult",
    "choose_width",
    "latency_reduction",
    "plan_iteration",
    "resolve_budget",
    "run_search",
    "select_proposal",
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


# ------------------------------------------------------------------ the parts
def latency_reduction(base_ms: float, initial_reduction: float, decay: float, iteration: int) -> float:
    """dR_i of iteration i (1-based): initial_reduction * base * decay**(i-1).

    NetAdapt's official defaults are 0.025 of the base latency and 0.96 decay.
    """
    if iteration < 1:
        raise ValueError(f"iterations count from 1, got {iteration}")
    return initial_reduction * base_ms * decay ** (iteration - 1)


def choose_width(
    spec: NetSpec, group: ChannelGroup, target_ms: float, predict_ms: Callable[[NetSpec], float]
) -> tuple[int, float] | None:
    """The largest width of `group` whose predicted latency meets `target_ms`.

    Widths are scanned from the largest down and not bisected: latency is not
    monotonic in channels (x86 kernels block by 8/16), so the first width that
    meets the target is the largest one. Returns (width, predicted ms), or None
    when even the group's minimum misses the target.
    """
    for width in candidate_widths(group):
        predicted = predict_ms(with_width(spec, group, width))
        if predicted <= target_ms:
            return width, predicted
    return None


@dataclass(frozen=True)
class IterationPlan:
    """One iteration's target and each group's proposed cut (None: it cannot meet the target)."""

    reduction_ms: float  # the reduction finally asked for (after any halvings)
    target_ms: float
    halvings: int
    choices: list[tuple[ChannelGroup, tuple[int, float] | None]]
    predict_s: dict[str, float]  # per group, over all tries: predicting, without measuring
    measure_s: dict[str, float]  # per group, over all tries: measuring missing table entries

    @property
    def proposals(self) -> int:
        return sum(choice is not None for _, choice in self.choices)


def plan_iteration(
    spec: NetSpec,
    groups: list[ChannelGroup],
    current_ms: float,
    reduction_ms: float,
    predict_ms: Callable[[NetSpec], float],
    min_proposals: int,
    max_halvings: int,
    measure_seconds: Callable[[], float] = lambda: 0.0,
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
    times; 0 keeps the paper's fixed schedule. If the halvings run out, the
    proposals of the last try are used as they are.

    `measure_seconds` is a running total of the time spent measuring missing
    table entries (`LatencyTable.measure_seconds`), kept out of `predict_s`.
    """
    shrinkable = sum(bool(candidate_widths(group)) for group in groups)
    wanted = min(min_proposals, shrinkable)
    predict_s = {group.name: 0.0 for group in groups}
    measure_s = dict(predict_s)
    halvings = 0
    while True:
        target_ms = current_ms - reduction_ms
        choices = []
        for group in groups:
            start, measured_before = time.perf_counter(), measure_seconds()
            choices.append((group, choose_width(spec, group, target_ms, predict_ms)))
            measured = measure_seconds() - measured_before
            measure_s[group.name] += measured
            predict_s[group.name] += time.perf_counter() - start - measured
        plan = IterationPlan(reduction_ms, target_ms, halvings, choices, predict_s, measure_s)
        if plan.proposals >= wanted or halvings >= max_halvings:
            return plan
        reduction_ms /= 2
        halvings += 1


def select_proposal(
    results: list[CandidateResult], rule: str, current_acc: float, current_predicted_ms: float
) -> CandidateResult | None:
    """Pick the winner among successful candidates.

    "accuracy": highest holdout accuracy (NetAdapt Alg. 1).
    "accuracy_per_latency": largest dAcc / |dLatency| (MobileNetV3 §4.2), where
    dAcc is relative to the current network and dLatency is predicted.
    Ties go to the lower predicted latency, then the group name, so the choice
    never depends on the order in which results arrived.
    """
    ok = [r for r in results if r.status == "ok"]
    if not ok:
        return None
    if rule == "accuracy":
        def score(r: CandidateResult) -> float:
            return r.holdout_acc
    elif rule == "accuracy_per_latency":
        def score(r: CandidateResult) -> float:
            saved = max(current_predicted_ms - r.task.predicted_ms, 1e-9)
            return (r.holdout_acc - current_acc) / saved
    else:
        raise ConfigError(f"search.selection must be 'accuracy' or 'accuracy_per_latency', got {rule!r}")
    return max(ok, key=lambda r: (score(r), -r.task.predicted_ms, r.task.group.name))


def resolve_budget(config: Config, base_ms: float) -> float:
    budget_ms, ratio = config.search.budget_ms, config.search.budget_ratio
    if (budget_ms is None) == (ratio is None):
        raise ConfigError("give exactly one of search.budget_ms (--budget-ms) and search.budget_ratio (--budget-ratio)")
    if budget_ms is not None:
        if not budget_ms > 0:
            raise ConfigError(f"search.budget_ms must be > 0, got {budget_ms}")
        return budget_ms
    if not 0 < ratio < 1:
        raise ConfigError(f"search.budget_ratio must be in (0, 1), got {ratio}")
    return ratio * base_ms


def validate_search_config(config: Config) -> None:
    """Checks that need no data or measurement, so a bad config fails before any work."""
    search = config.search
    if (search.budget_ms is None) == (search.budget_ratio is None):
        raise ConfigError("give exactly one of search.budget_ms (--budget-ms) and search.budget_ratio (--budget-ratio)")
    for key, value, low in (
        ("search.finetune_steps", search.finetune_steps, 0),
        ("search.long_finetune_steps", search.long_finetune_steps, 0),
        ("search.max_iterations", search.max_iterations, 1),
        ("search.min_proposals", search.min_proposals, 1),
        ("search.max_reduction_halvings", search.max_reduction_halvings, 0),
        ("lut.granularity", config.lut.granularity, 1),
        ("lut.min_channels", config.lut.min_channels, 1),
        ("lut.prefetch_widths", config.lut.prefetch_widths, 0),
        ("measure.repeats", config.measure.repeats, 1),
    ):
        if value < low:
            raise ConfigError(f"{key} must be >= {low}, got {value}")
    if not 0 < search.initial_reduction < 1:
        raise ConfigError(f"search.initial_reduction must be in (0, 1), got {search.initial_reduction}")
    if not 0 < search.decay <= 1:
        raise ConfigError(f"search.decay must be in (0, 1], got {search.decay}")
    if config.model.checkpoint is not None and not Path(config.model.checkpoint).is_file():
        raise ConfigError(f"model.checkpoint: file {config.model.checkpoint} not found")
    if config.model.spec is not None and not Path(config.model.spec).is_file():
        raise ConfigError(f"model.spec: file {config.model.spec} not found")


def input_shape(config: Config, dataset: Dataset) -> tuple[int, int, int, int]:
    return (config.target.batch, dataset.in_channels, config.data.resolution, config.data.resolution)


def make_executor(config: Config) -> Executor:
    if config.executor.kind == "ray":
        from netadapt.ray_executor import RayExecutor

        return RayExecutor(config.executor.ray_address, config.executor.cpus_per_candidate,
                           config.executor.gpus_per_candidate, config.executor.max_retries)
    return LocalExecutor()


def default_table_path(measurer: Measurer) -> Path:
    return cache_dir() / "luts" / table_filename(measurer.fingerprint())


# ------------------------------------------------------------------ the loop
class _Search:
    """One search's state; `run_search` is the public entry point."""

    def __init__(self, config: Config, run: RunDir, measurer: Measurer, table: LatencyTable, progress: bool, echo):
        self.config = config
        self.run = run
        self.measurer = measurer
        self.table = table
        self.executor: Executor | None = None  # set when iterations start
        self.progress = progress
        self.echo = echo
        self.log = run.logger()
        self.threads = config.train.threads if config.train.threads > 0 else torch.get_num_threads()

    def say(self, message: str) -> None:
        self.log.info(message)
        self.echo(message)

    def commit(self, iteration: int, model: MobileNetV3, rows: list[dict[str, Any]], state: dict[str, Any]) -> None:
        """Checkpoint, then history, then state: the state write is the commit point."""
        save_checkpoint(self.run.checkpoint_path(iteration), model)
        model.spec.save(self.run.spec_path(iteration))
        self.run.append_history(rows, keep_through_iteration=iteration - 1)
        self.table.save_copy(self.run.lut_path)
        self.run.write_state({**state, "iteration": iteration})


def run_search(
    config: Config | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    executor: Executor | None = None,
    measurer: Measurer | None = None,
    dataset: Dataset | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> SearchResult:
    """Run (or resume) a NetAdapt search.

    Args:
        config: the resolved config (ignored when resuming: the run's own
            config.yaml is used).
        out: the run directory for a new run (default: runs/search-<time>).
        resume: a run directory to continue from its last completed iteration.
        executor: where candidates are evaluated (default: in this process).
        measurer: where latency is measured (default: from `config.target`).
        dataset: preloaded data (default: loaded from `config.data`).
        progress: show progress bars.
        echo: where one-line summaries go (besides the run's log).
    """
    if resume is not None:
        run = RunDir(resume)
        run.require_existing()
        config = load_config(run.config_path)
    else:
        if config is None:
            raise ValueError("run_search needs a config for a new run")
        run = RunDir(out or Path("runs") / time.strftime("search-%Y%m%d-%H%M%S"))
    validate_search_config(config)
    torch.manual_seed(config.seed)
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)

    dataset = dataset or load_dataset(config.data)
    shape = input_shape(config, dataset)
    measurer = measurer or make_measurer(config.target, config.measure, shape)
    table_path = Path(config.lut.table) if config.lut.table else default_table_path(measurer)
    table = LatencyTable.open(table_path, measurer, shape)

    state = run.read_state() if resume is not None else None
    if state is None:
        model, base_path = obtain_base_model(config, dataset, progress=progress, log=echo)
        model.eval()
        base_ms, export_s, measure_s = _measure(measurer, model, shape, config.measure.repeats)
        budget_ms = resolve_budget(config, base_ms)
        if table.correction_specs(model.spec) == 0:
            table.fit_correction(calibration_specs(model.spec, config.lut.correction_samples, config.lut.granularity,
                                                   config.lut.min_channels, config.lut.seed),
                                 repeats=config.measure.repeats)
        smallest = lower_bound_spec(model.spec, config.lut.min_channels, config.lut.granularity)
        # Predicted, as the issue asks: the correction fitted above (on the base
        # and random cuts) puts it on the measured scale.
        lower_bound = table.predict_ms(smallest)
        if budget_ms < lower_bound and base_ms > budget_ms:
            raise SearchError(
                f"budget {budget_ms:.3f} ms is below anything this search space can reach: with every group at "
                f"its minimum ({config.lut.min_channels} channels) the predicted latency is {lower_bound:.3f} ms "
                f"(base {base_ms:.3f} ms measured)"
            )
        if resume is None:
            run.create(config.to_yaml())
        search = _Search(config, run, measurer, table, progress, echo)
        base_acc = evaluate(model, dataset.holdout, config.train.eval_batch_size)
        test_acc = evaluate(model, dataset.test, config.train.eval_batch_size)
        predicted = table.predict_ms(model.spec)
        search.say(f"base {model.spec.name}: {base_ms:.3f} ms measured ({predicted:.3f} predicted), "
                   f"holdout {base_acc:.2%}, budget {budget_ms:.3f} ms, table {table_path}")
        finished = base_ms <= budget_ms
        stop_reason = f"the base network already meets the budget ({base_ms:.3f} ms <= {budget_ms:.3f} ms)" if finished else None
        row = {"iteration": 0, "kind": "base", "group": "", "status": "done", "predicted_ms": predicted,
               "measured_ms": base_ms, "holdout_acc": base_acc, "test_acc": test_acc, "export_s": export_s,
               "measure_s": measure_s, "checkpoint": str(run.checkpoint_path(0).relative_to(run.path)),
               "reason": stop_reason or f"base from {base_path}"}
        state = {"base_ms": base_ms, "base_predicted_ms": predicted, "budget_ms": budget_ms, "measured_ms": base_ms,
                 "predicted_ms": predicted,
                 "holdout_acc": base_acc, "finished": finished, "stop_reason": stop_reason}
        search.commit(0, model, [row], state)
        state = {**state, "iteration": 0}
        if finished:
            search.say(stop_reason)
    else:
        search = _Search(config, run, measurer, table, progress, echo)
        model = load_checkpoint(run.checkpoint_path(state["iteration"]))
        search.say(f"resuming {run.path} after iteration {state['iteration']}")
    if not state["finished"]:
        search.executor = executor or make_executor(config)
        try:
            state, model = _iterate(search, dataset, shape, state, model)
        finally:
            search.executor.close()
    return SearchResult(run.path, state["base_ms"], state["budget_ms"], state["measured_ms"], state["holdout_acc"],
                        state["iteration"], state["stop_reason"], model.spec)


def _measure(measurer: Measurer, model: MobileNetV3, shape, repeats: int) -> tuple[float, float, float]:
    """Whole-model latency on the target: (lowest figure of `repeats` sessions, export s, measure s)."""
    start = time.perf_counter()
    data = onnx_bytes(model, shape)
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    latency = min(measurer.measure(data).latency_ms for _ in range(max(1, repeats)))
    return latency, export_s, time.perf_counter() - start


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


def _iterate(search: _Search, dataset: Dataset, shape, state: dict[str, Any], model: MobileNetV3):
    config, run, table = search.config, search.run, search.table
    while True:
        iteration = state["iteration"] + 1
        if iteration > config.search.max_iterations:
            return _finish(search, dataset, shape, state, model, f"reached search.max_iterations ({config.search.max_iterations})")
        spec = model.spec
        # On the table's scale, like the target and the candidates' predictions:
        # a schedule on the measured base would move with measurement noise and
        # make the same seed choose different cuts.
        reduction = latency_reduction(state["base_predicted_ms"], config.search.initial_reduction,
                                      config.search.decay, iteration)
        groups = prunable_groups(spec, config.lut.min_channels, config.lut.granularity)
        prefetch_s = _prefetch(table, spec, groups, config.lut.prefetch_widths)
        current_predicted = table.predict_ms(spec)
        plan = plan_iteration(spec, groups, current_predicted, reduction, table.predict_ms,
                              config.search.min_proposals, config.search.max_reduction_halvings,
                              measure_seconds=lambda: table.measure_seconds)
        target_ms = plan.target_ms
        rows: list[dict[str, Any]] = []
        tasks: list[CandidateTask] = []
        for position, (group, choice) in enumerate(plan.choices):
            predict_s, lut_measure_s = plan.predict_s[group.name], plan.measure_s[group.name]
            if position == 0:
                lut_measure_s += prefetch_s  # the batch measured for all groups is booked once
            if choice is None:
                rows.append({"iteration": iteration, "kind": "candidate", "group": group.name,
                             "width_before": group.width, "status": "skipped", "target_ms": target_ms,
                             "predict_s": predict_s, "lut_measure_s": lut_measure_s,
                             "reason": "no width meets the target" if candidate_widths(group) else "at its minimum"})
                continue
            width, predicted = choice
            task = CandidateTask(iteration, group, width, predicted, candidate_seed(config.seed, iteration, group.name))
            tasks.append(task)
            rows.append({"_task": task, "predict_s": predict_s, "lut_measure_s": lut_measure_s})
        if plan.halvings:
            search.say(f"iteration {iteration}: fewer than {config.search.min_proposals} groups could save the "
                       f"schedule's {reduction:.4f} ms; halved it {plan.halvings} time(s) to "
                       f"{plan.reduction_ms:.4f} ms, which {plan.proposals} can")
        if not tasks:
            return _finish(search, dataset, shape, state, model, "no group can be cut to meet the next target", rows)

        context = IterationContext(spec, {k: v.detach().clone() for k, v in model.state_dict().items()},
                                   dataset.train, dataset.holdout, config.train, config.search.finetune_steps,
                                   config.train.eval_batch_size, threads=search.threads)
        results: dict[str, CandidateResult] = {}
        with tqdm(total=len(tasks), desc=f"iteration {iteration}", unit="candidate", disable=not search.progress,
                  leave=False) as bar:
            for result in search.executor.run(context, tasks):
                results[result.task.group.name] = result
                bar.update(1)
        ordered = [results[task.group.name] for task in tasks]
        winner = None
        remaining = list(ordered)
        measured = export_s = measure_s = math.nan
        while remaining:
            winner = select_proposal(remaining, config.search.selection, state["holdout_acc"], current_predicted)
            if winner is None:
                break
            winner_model = build(winner.spec)
            winner_model.load_state_dict(winner.state_dict)
            winner_model.eval()
            try:
                measured, export_s, measure_s = _measure(search.measurer, winner_model, shape, config.measure.repeats)
                break
            except NetadaptError as error:
                winner.status, winner.reason = "failed", f"measurement failed: {error}"
                remaining.remove(winner)
                winner = None
        candidate_rows = []
        for row in rows:
            task = row.pop("_task", None)
            if task is None:
                candidate_rows.append(row)
                continue
            result = results[task.group.name]
            entry = {**row, **describe(result), "kind": "candidate", "target_ms": target_ms}
            if result is winner:
                entry.update(status="chosen", measured_ms=measured, export_s=export_s, measure_s=measure_s)
            candidate_rows.append(entry)
        if winner is None:
            return _finish(search, dataset, shape, state, model, "every candidate of the iteration failed", candidate_rows)

        model = winner_model
        test_acc = evaluate(model, dataset.test, config.train.eval_batch_size)
        state = {**state, "measured_ms": measured, "predicted_ms": winner.task.predicted_ms,
                 "holdout_acc": winner.holdout_acc}
        finished = measured <= state["budget_ms"]
        reason = f"measured {measured:.3f} ms meets the budget {state['budget_ms']:.3f} ms" if finished else ""
        iteration_row = {"iteration": iteration, "kind": "iteration", "group": winner.task.group.name,
                         "width_before": winner.task.group.width, "width_after": winner.task.width,
                         "status": "done", "target_ms": target_ms, "predicted_ms": winner.task.predicted_ms,
                         "measured_ms": measured, "holdout_acc": winner.holdout_acc, "test_acc": test_acc,
                         "seed": winner.task.seed, "reason": reason,
                         "checkpoint": str(run.checkpoint_path(iteration).relative_to(run.path))}
        search.commit(iteration, model, candidate_rows + [iteration_row],
                      {**state, "finished": False, "stop_reason": None})
        state = {**state, "iteration": iteration}
        search.say(f"iteration {iteration}: {measured:.3f} ms measured ({winner.task.predicted_ms:.3f} predicted, "
                   f"target {target_ms:.3f}), holdout {winner.holdout_acc:.2%}, cut {winner.task.group.name} "
                   f"{winner.task.group.width}->{winner.task.width}")
        if finished:
            return _finish(search, dataset, shape, state, model, reason)


def _finish(search: _Search, dataset: Dataset, shape, state, model: MobileNetV3, reason: str,
            rows: list[dict[str, Any]] | None = None):
    """Optional long-term fine-tune, then record the end of the run."""
    config, run = search.config, search.run
    iteration = state["iteration"]
    rows = list(rows or [])
    steps = config.search.long_finetune_steps
    if steps > 0:
        long_config = replace(config.train, lr=config.train.finetune_lr)
        train(model, dataset.train, long_config, steps, config.seed + iteration + 1, progress=search.progress)
        model.eval()
        holdout = evaluate(model, dataset.holdout, config.train.eval_batch_size)
        test = evaluate(model, dataset.test, config.train.eval_batch_size)
        save_checkpoint(run.path / "checkpoints" / "final.pt", model)
        model.spec.save(run.path / "checkpoints" / "final.spec.yaml")
        rows.append({"iteration": iteration, "kind": "final", "group": "", "status": "done",
                     "measured_ms": state["measured_ms"], "holdout_acc": holdout, "test_acc": test,
                     "reason": f"long-term fine-tune of {steps} steps", "checkpoint": "checkpoints/final.pt"})
        search.say(f"long-term fine-tune ({steps} steps): holdout {holdout:.2%}, test {test:.2%}")
    # drop_final: a "final" row left by a long fine-tune that was killed before its commit
    run.append_history(rows, keep_through_iteration=iteration, drop_final=True)
    state = {**state, "finished": True, "stop_reason": reason}
    run.write_state(state)
    search.say(f"stopped: {reason}; {state['measured_ms']:.3f} ms measured (base {state['base_ms']:.3f}), "
               f"holdout {state['holdout_acc']:.2%}")
    return state, model
