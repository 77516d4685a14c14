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
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from mobilenetv3 import MobileNetV3, NetSpec, build
from netadapt.base import cache_dir, obtain_base_model
from netadapt.benchmark import Measurer, measure_all
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
from netadapt.latency import LatencyTable, OnlineCalibration, calibration_specs, table_filename
from netadapt.measurers import make_measurer
from netadapt.onnx_export import onnx_bytes
from netadapt.rundir import RunDir
from netadapt.train import evaluate, load_checkpoint, save_checkpoint, train

__all__ = [
    "IterationPlan",
    "WholeFigures",
    "measure_whole",
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
    spec: NetSpec,
    group: ChannelGroup,
    target_ms: float,
    predict_ms: Callable[[NetSpec], float],
    fill: Callable[[list[NetSpec]], object] | None = None,
    window: int = 3,
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
    """
    widths = candidate_widths(group)
    cuts = [with_width(spec, group, width) for width in widths]
    for index, (width, cut) in enumerate(zip(widths, cuts)):
        if fill is not None and index % max(1, window) == 0:
            fill(cuts[index : index + max(1, window)])
        predicted = predict_ms(cut)
        if predicted <= target_ms:
            return width, predicted
    return None


@dataclass(frozen=True)
class IterationPlan:
    """One iteration's target and each group's proposed cut (None: it cannot meet the target)."""

    reduction_ms: float  # the reduction finally asked for (after any halvings)
    target_ms: float
    halvings: int
    clamped: bool  # the target was raised to the budget floor (the last iteration's clamp)
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
    floor_ms: float = -math.inf,
    fill: Callable[[list[NetSpec]], object] | None = None,
    window: int = 3,
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

    `floor_ms` clamps the target from below: a search aims no lower than
    just under its budget, so the last iteration lands there instead of a
    full reduction below it. `fill` and `window` go to `choose_width`.
    """
    shrinkable = sum(bool(candidate_widths(group)) for group in groups)
    wanted = min(min_proposals, shrinkable)
    predict_s = {group.name: 0.0 for group in groups}
    measure_s = dict(predict_s)
    halvings = 0
    while True:
        clamped = current_ms - reduction_ms < floor_ms
        target_ms = max(current_ms - reduction_ms, floor_ms)
        choices = []
        for group in groups:
            start, measured_before = time.perf_counter(), measure_seconds()
            choices.append((group, choose_width(spec, group, target_ms, predict_ms, fill, window)))
            measured = measure_seconds() - measured_before
            measure_s[group.name] += measured
            predict_s[group.name] += time.perf_counter() - start - measured
        plan = IterationPlan(reduction_ms, target_ms, halvings, clamped, choices, predict_s, measure_s)
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
        ("lut.entry_passes", config.lut.entry_passes, 1),
        ("lut.network_passes", config.lut.network_passes, 1),
        ("lut.reference_units", config.lut.reference_units, 0),
        ("lut.drift_sample", config.lut.drift_sample, 1),
        ("measure.repeats", config.measure.repeats, 1),
    ):
        if value < low:
            raise ConfigError(f"{key} must be >= {low}, got {value}")
    if not 0 < search.initial_reduction < 1:
        raise ConfigError(f"search.initial_reduction must be in (0, 1), got {search.initial_reduction}")
    if not 0 <= search.budget_margin < 0.5:
        raise ConfigError(f"search.budget_margin must be in [0, 0.5), got {search.budget_margin}")
    if not config.lut.drift_tolerance_pct > 0:
        raise ConfigError(f"lut.drift_tolerance_pct must be > 0, got {config.lut.drift_tolerance_pct}")
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


# ------------------------------------------------------- whole measurements
@dataclass(frozen=True)
class WholeFigures:
    """A network measured whole beside the base, interleaved, pass by pass (the target's statistic, ms)."""

    network_passes: tuple[float, ...]
    base_passes: tuple[float, ...]  # the base's figure in the same passes (the network's when it is the base)
    measure_s: float

    @property
    def network_ms(self) -> float:
        """The network's best pass: other load only ever slows a run."""
        return min(self.network_passes)

    @property
    def base_ms(self) -> float:
        return min(self.base_passes)

    @property
    def ratio(self) -> float:
        """Median over the passes of network / base: within a pass both see the same moments, so drift cancels."""
        return float(np.median([n / b for n, b in zip(self.network_passes, self.base_passes)]))

    @property
    def passes(self) -> int:
        return len(self.network_passes)

    @property
    def spread_pct(self) -> float:
        """(slowest - fastest) / fastest of the network's passes."""
        return 100 * (max(self.network_passes) - self.network_ms) / self.network_ms

    def merged(self, more: "WholeFigures") -> "WholeFigures":
        """These passes and `more` of the same network and base, as one measurement."""
        return WholeFigures(self.network_passes + more.network_passes, self.base_passes + more.base_passes,
                            self.measure_s + more.measure_s)


def measure_whole(measurer: Measurer, network: bytes, base: bytes | None, passes: int) -> WholeFigures:
    """Measure `network` (and `base`, interleaved with it) in `passes` passes, each in its own seeded order."""
    start = time.perf_counter()
    models = [network] if base is None else [network, base]
    order_rng = random.Random(0)  # seeded: reruns measure in the same order
    network_passes, base_passes = [], []
    for _ in range(max(1, passes)):
        order = list(range(len(models)))
        order_rng.shuffle(order)
        by_index = dict(zip(order, measure_all(measurer, [models[i] for i in order])))
        network_passes.append(by_index[0].latency_ms)
        base_passes.append(by_index[len(models) - 1].latency_ms)
    return WholeFigures(tuple(network_passes), tuple(base_passes), time.perf_counter() - start)


@dataclass(frozen=True)
class BudgetTest:
    """The stop decision: whether a measured network meets the budget, and by how much."""

    met: bool
    margin_pct: float  # how far under (+) or over (-) the budget, in % of the budget
    text: str  # the figure, its spread and the margin, for the log


def budget_test(config: Config, figures: WholeFigures, budget_ms: float) -> BudgetTest:
    """With `search.budget_ratio`, the network against the base measured beside it; with `budget_ms`, its best pass."""
    ratio = config.search.budget_ratio
    if ratio is not None:
        margin = 100 * (ratio - figures.ratio) / ratio
        text = (f"{figures.ratio:.4f} of the base measured beside it ({figures.network_ms:.4f} vs {figures.base_ms:.4f} ms, "
                f"best of {figures.passes} passes, spread {figures.spread_pct:.1f}%) against the budget ratio {ratio:g}")
    else:
        margin = 100 * (budget_ms - figures.network_ms) / budget_ms
        text = (f"{figures.network_ms:.4f} ms (best of {figures.passes} passes, spread {figures.spread_pct:.1f}%) "
                f"against the budget {budget_ms:.4f} ms")
    return BudgetTest(margin >= 0, margin, f"{text}: margin {margin:+.2f}%")


# ------------------------------------------------------------------ the loop
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

    def say(self, message: str) -> None:
        self.log.info(message)
        self.echo(message)

    def predict_ms(self, spec: NetSpec) -> float:
        """The calibrated prediction: the table's, times the online calibration's factor."""
        return self.calibration.apply(self.table.predict_ms(spec))

    def commit(self, iteration: int, model: MobileNetV3, rows: list[dict[str, Any]], state: dict[str, Any]) -> None:
        """Checkpoint, then history, then state: the state write is the commit point."""
        save_checkpoint(self.run.checkpoint_path(iteration), model)
        model.spec.save(self.run.spec_path(iteration))
        self.run.append_history(rows, keep_through_iteration=iteration - 1)
        self.table.save_copy(self.run.lut_path)
        self.run.write_state({**state, "iteration": iteration, "calibration": self.calibration_points()})

    def calibration_points(self) -> list[list[float]]:
        """The online calibration's points as state.json keeps them, so a resumed run goes on from them."""
        return [[p.table_ms, p.measured_ms] for p in self.calibration.points]


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
        measurer: where latency is measured (default: from `config.target`,
            in a separate process when `measure.isolation` is "process").
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
    owned = measurer is None
    measurer = measurer or make_measurer(config.target, config.measure, shape,
                                         isolated=config.measure.isolation == "process")
    try:
        return _run(config, run, resume, executor, measurer, dataset, shape, progress, echo)
    finally:
        if owned and hasattr(measurer, "close"):
            measurer.close()


def _run(config: Config, run: RunDir, resume, executor, measurer: Measurer, dataset: Dataset, shape, progress, echo):
    table_path = Path(config.lut.table) if config.lut.table else default_table_path(measurer)
    table = LatencyTable.open(table_path, measurer, shape, reference_units=config.lut.reference_units)
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
                                 repeats=config.lut.network_passes)
        table_base = table.predict_ms(model.spec)
        calibration.observe(table_base, base_ms)
        smallest = lower_bound_spec(model.spec, config.lut.min_channels, config.lut.granularity)
        # Predicted and calibrated: the correction (fitted on the base and cuts
        # down to the floor) and the base's measurement put it on the measured scale.
        lower_bound = calibration.apply(table.predict_ms(smallest))
        if budget_ms < lower_bound and base_ms > budget_ms:
            raise SearchError(
                f"budget {budget_ms:.3f} ms is below anything this search space can reach: with every group at "
                f"its minimum ({config.lut.min_channels} channels) the predicted latency is {lower_bound:.3f} ms "
                f"(base {base_ms:.3f} ms measured)"
            )
        if resume is None:
            run.create(config.to_yaml())
        search = _Search(config, run, measurer, table, progress, echo, base_onnx, calibration)
        base_acc = evaluate(model, dataset.holdout, config.train.eval_batch_size)
        test_acc = evaluate(model, dataset.test, config.train.eval_batch_size)
        search.say(f"base {model.spec.name}: {base_ms:.4f} ms measured (best of {base.passes} passes, spread "
                   f"{base.spread_pct:.1f}%; table predicted {table_base:.4f}), holdout {base_acc:.2%}, "
                   f"budget {budget_ms:.4f} ms, table {table.path}")
        finished = base_ms <= budget_ms
        stop_reason = f"the base network already meets the budget ({base_ms:.3f} ms <= {budget_ms:.3f} ms)" if finished else None
        row = {"iteration": 0, "kind": "base", "group": "", "status": "done", "predicted_ms": table_base,
               "table_predicted_ms": table_base, "measured_ms": base_ms, "base_measured_ms": base_ms,
               "ratio_to_base": 1.0, "steady_ms": base_ms,
               "measured_spread_pct": base.spread_pct, "holdout_acc": base_acc, "test_acc": test_acc,
               "export_s": export_s, "measure_s": base.measure_s,
               "checkpoint": str(run.checkpoint_path(0).relative_to(run.path)),
               "reason": stop_reason or f"base from {base_path}"}
        state = {"base_ms": base_ms, "base_predicted_ms": table_base, "budget_ms": budget_ms, "measured_ms": base_ms,
                 "base_figures": [base_ms], "predicted_ms": table_base,
                 "holdout_acc": base_acc, "finished": finished, "stop_reason": stop_reason}
        search.commit(0, model, [row], state)
        state = {**state, "iteration": 0}
        if finished:
            search.say(stop_reason)
    else:
        for table_ms, measured_ms in state.get("calibration", []):
            calibration.observe(table_ms, measured_ms)
        base_spec_path = run.spec_path(0)
        base_onnx = onnx_bytes(build(NetSpec.load(base_spec_path)), shape)  # latency does not depend on the weights
        search = _Search(config, run, measurer, table, progress, echo, base_onnx, calibration)
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


# A winner measured this far (as a share) from its calibrated prediction is measured again,
# and so is one whose budget test is decided by less than CLOSE_CALL_PCT either way.
SURPRISE = 0.05
CLOSE_CALL_PCT = 5.0


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


def _base_typical_ms(state: dict[str, Any]) -> float:
    """The median of the base's figures so far (at the start and beside every winner): the base's steady scale."""
    return float(np.median(state.get("base_figures") or [state["base_ms"]]))  # older runs kept only the first


def _floor_ms(config: Config, state: dict[str, Any], factor: float) -> float:
    """The lowest target an iteration may aim at, on the calibrated scale: just under the budget.

    A ratio budget is clamped on the table's scale (the budget ratio of the
    table's base prediction, converted at the current factor): the clamp then
    moves with the table alone, so the same seed and table land on the same
    final network however the measurements scatter. An absolute budget is a
    figure of the machine as it is, so it is clamped as it stands.
    """
    ratio = config.search.budget_ratio
    budget = ratio * state["base_predicted_ms"] * factor if ratio is not None else state["budget_ms"]
    return budget * (1 - config.search.budget_margin)


def _iterate(search: _Search, dataset: Dataset, shape, state: dict[str, Any], model: MobileNetV3):
    config, run, table = search.config, search.run, search.table
    while True:
        iteration = state["iteration"] + 1
        if iteration > config.search.max_iterations:
            return _finish(search, dataset, shape, state, model, f"reached search.max_iterations ({config.search.max_iterations})")
        spec = model.spec
        # NetAdapt's dR_i, a share of the base on the table's scale, put on the
        # calibrated scale at the current factor: widths then meet
        # table(cut) <= table(current) - dR_i whatever the factor, so above the
        # budget's clamp the same seed and table choose the same cuts however
        # the whole-network measurements scatter.
        reduction = search.calibration.factor * latency_reduction(
            state["base_predicted_ms"], config.search.initial_reduction, config.search.decay, iteration)
        groups = prunable_groups(spec, config.lut.min_channels, config.lut.granularity)
        prefetch_s = _prefetch(table, spec, groups, config.lut.prefetch_widths)
        current_predicted = search.predict_ms(spec)
        plan = plan_iteration(spec, groups, current_predicted, reduction, search.predict_ms,
                              config.search.min_proposals, config.search.max_reduction_halvings,
                              measure_seconds=lambda: table.measure_seconds,
                              floor_ms=_floor_ms(config, state, search.calibration.factor),
                              fill=lambda specs: table.fill(specs, progress=False), window=config.lut.prefetch_widths)
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
            rows.append({"_task": task, "predict_s": predict_s, "lut_measure_s": lut_measure_s,
                         "table_predicted_ms": table.predict_ms(with_width(spec, group, width))})
        if plan.halvings:
            search.say(f"iteration {iteration}: fewer than {config.search.min_proposals} groups could save the "
                       f"schedule's {reduction:.4f} ms; halved it {plan.halvings} time(s) to "
                       f"{plan.reduction_ms:.4f} ms, which {plan.proposals} can")
        if plan.clamped:
            search.say(f"iteration {iteration}: target clamped to {target_ms:.4f} ms, {100 * config.search.budget_margin:g}% "
                       "under the budget, so the search lands just under it")
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
        figures = None
        export_s = math.nan
        while remaining:
            winner = select_proposal(remaining, config.search.selection, state["holdout_acc"], current_predicted)
            if winner is None:
                break
            winner_model = build(winner.spec)
            winner_model.load_state_dict(winner.state_dict)
            winner_model.eval()
            try:
                start = time.perf_counter()
                winner_onnx = onnx_bytes(winner_model, shape)
                export_s = time.perf_counter() - start
                figures = measure_whole(search.measurer, winner_onnx, search.base_onnx, config.measure.repeats)
                off = figures.ratio * _base_typical_ms(state) / winner.task.predicted_ms - 1
                if abs(off) > SURPRISE:
                    # Far from its prediction: more passes before the figure steers the calibration and
                    # the stop test (a slow stretch can outlast one set of passes).
                    figures = figures.merged(measure_whole(search.measurer, winner_onnx, search.base_onnx,
                                                           config.measure.repeats))
                    search.say(f"iteration {iteration}: the winner measured {100 * off:+.1f}% off its prediction; "
                               f"measured again, {figures.passes} passes in all: {figures.network_ms:.4f} ms")
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
                entry.update(status="chosen", measured_ms=figures.network_ms, export_s=export_s, measure_s=figures.measure_s)
            candidate_rows.append(entry)
        if winner is None or figures is None:
            return _finish(search, dataset, shape, state, model, "every candidate of the iteration failed", candidate_rows)

        model = winner_model
        test_acc = evaluate(model, dataset.test, config.train.eval_batch_size)
        decision = budget_test(config, figures, state["budget_ms"])
        if abs(decision.margin_pct) < CLOSE_CALL_PCT:
            # A close call: as many passes again before it is decided, so one slow stretch cannot.
            figures = figures.merged(measure_whole(search.measurer, winner_onnx, search.base_onnx,
                                                   config.measure.repeats))
            decision = budget_test(config, figures, state["budget_ms"])
            search.say(f"iteration {iteration}: a close call, measured again: {figures.passes} passes in all")
        table_predicted = table.predict_ms(winner.spec)
        state = {**state, "base_figures": [*state.get("base_figures", [state["base_ms"]]), figures.base_ms]}
        # The winner on the base's steady scale: its ratio to the base in the same passes (drift
        # cancels) times the base's median figure, steadier than any one pass of the winner alone.
        steady_ms = figures.ratio * _base_typical_ms(state)
        search.calibration.observe(table_predicted, steady_ms)
        state = {**state, "measured_ms": figures.network_ms, "predicted_ms": winner.task.predicted_ms,
                 "holdout_acc": winner.holdout_acc}
        reason = f"measured {decision.text}: meets the budget" if decision.met else ""
        iteration_row = {"iteration": iteration, "kind": "iteration", "group": winner.task.group.name,
                         "width_before": winner.task.group.width, "width_after": winner.task.width,
                         "status": "done", "target_ms": target_ms, "predicted_ms": winner.task.predicted_ms,
                         "table_predicted_ms": table_predicted, "measured_ms": figures.network_ms,
                         "base_measured_ms": figures.base_ms, "ratio_to_base": figures.ratio, "steady_ms": steady_ms,
                         "measured_spread_pct": figures.spread_pct,
                         "budget_margin_pct": decision.margin_pct, "holdout_acc": winner.holdout_acc,
                         "test_acc": test_acc, "seed": winner.task.seed, "reason": reason,
                         "checkpoint": str(run.checkpoint_path(iteration).relative_to(run.path))}
        search.commit(iteration, model, candidate_rows + [iteration_row],
                      {**state, "finished": False, "stop_reason": None})
        state = {**state, "iteration": iteration}
        search.say(f"iteration {iteration}: {figures.network_ms:.4f} ms measured ({winner.task.predicted_ms:.4f} "
                   f"predicted, target {target_ms:.4f}), holdout {winner.holdout_acc:.2%}, cut {winner.task.group.name} "
                   f"{winner.task.group.width}->{winner.task.width}")
        search.say(f"stop test after iteration {iteration}: {decision.text}: {'met' if decision.met else 'not met, going on'}")
        if decision.met:
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
    run.write_state({**state, "calibration": search.calibration_points()})
    search.say(f"stopped: {reason}; {state['measured_ms']:.3f} ms measured (base {state['base_ms']:.3f}), "
               f"holdout {state['holdout_acc']:.2%}")
    return state, model
