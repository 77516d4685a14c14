"""Candidate evaluation: surgery, short-term fine-tune, holdout accuracy.

NetAdapt Alg. 1 evaluates one proposal per prunable group in every iteration,
and the proposals are independent, so they go through an executor. The
local executor runs them one after another in this process; everything a
candidate needs travels in an `IterationContext` and a `CandidateTask`, both
plain picklable values, so another executor can ship them to workers.

A candidate's result depends only on its task and context (its seed is
derived from the run seed and the iteration, the same for every candidate of
an iteration), never on which executor ran it or in what order.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import torch

from mobilenetv3 import NetSpec, build
from netadapt.config import TrainConfig
from netadapt.data import Split
from netadapt.groups import ChannelGroup, removal_name
from netadapt.surgery import prune, remove_block
from netadapt.train import TrainingDiverged, evaluate_scores, finetune, recalibrate_batchnorm, torch_threads

__all__ = [
    "CONTROL",
    "CandidateResult",
    "CandidateTask",
    "Executor",
    "IterationContext",
    "LocalExecutor",
    "candidate_seed",
    "iteration_seed",
    "evaluate_candidate",
]


def iteration_seed(run_seed: int, iteration: int) -> int:
    """The fine-tuning seed of every candidate of one iteration: the same batches and augmentation for
    all (common random numbers), and the same in a resumed or distributed run as in an uninterrupted one."""
    return zlib.crc32(f"{run_seed}:{iteration}".encode()) & 0x7FFFFFFF


def candidate_seed(run_seed: int, iteration: int, name: str, common: bool = True) -> int:
    """The fine-tuning seed of the proposal `name`: `iteration_seed` when batches are common
    (search.common_batches), else one of its own per proposal (the ablation's "off")."""
    if common:
        return iteration_seed(run_seed, iteration)
    return zlib.crc32(f"{run_seed}:{iteration}:{name}".encode()) & 0x7FFFFFFF


CONTROL = "control"  # the name of an iteration's control arm: the current network, not cut


@dataclass(frozen=True)
class CandidateTask:
    """One proposal of an iteration: cut `group` to `width` channels, or remove block
    `removed_block` (a depth proposal). With neither it is the control arm: the current
    network, fine-tuned and scored exactly as the proposals are."""

    iteration: int
    group: ChannelGroup | None
    width: int  # the group's width after the cut (otherwise 0)
    predicted_ms: float
    seed: int
    removed_block: int | None = None

    @property
    def name(self) -> str:
        if self.group is not None:
            return self.group.name
        return removal_name(self.removed_block) if self.removed_block is not None else CONTROL


@dataclass
class IterationContext:
    """What every candidate of one iteration shares."""

    spec: NetSpec
    state_dict: dict[str, torch.Tensor]
    train: Split
    holdout: Split
    train_config: TrainConfig
    finetune_steps: int
    eval_batch_size: int = 512
    # torch intra-op threads for every candidate, on every executor: float
    # reductions depend on the thread count, so fixing it is what makes the
    # local and the Ray executor give bit-identical results.
    threads: int = 1
    # False for a prescreen: only the scores come back, not every candidate's weights.
    keep_weights: bool = True
    # The base network, distilled from when train_config.distill_alpha > 0.
    teacher_spec: NetSpec | None = None
    teacher_state_dict: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def teacher(self) -> torch.nn.Module | None:
        """The teacher network, built from its spec and weights, or None without one."""
        if self.teacher_spec is None or self.teacher_state_dict is None or self.train_config.distill_alpha <= 0:
            return None
        teacher = build(self.teacher_spec)
        teacher.load_state_dict(self.teacher_state_dict)
        return teacher.eval()


@dataclass
class CandidateResult:
    task: CandidateTask
    status: str  # "ok" or "failed"
    reason: str = ""
    holdout_acc: float | None = None
    holdout_loss: float | None = None  # mean cross-entropy on the holdout
    spec: NetSpec | None = None
    state_dict: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    surgery_s: float = 0.0
    finetune_s: float = 0.0
    eval_s: float = 0.0


def evaluate_candidate(context: IterationContext, task: CandidateTask) -> CandidateResult:
    """Cut, fine-tune and score one proposal on `context.threads` torch threads.

    With `context.finetune_steps` 0 the cut network's BatchNorm statistics
    are recalibrated instead (if `train_config.bn_recalibration` > 0): the
    adaptive-BN score that EagleEye (ECCV 2020) found to rank sub-networks
    well, which the search's prescreen uses. Failures are returned, not
    raised, except for bugs in this package (which keep their traceback).
    """
    with torch_threads(context.threads):
        return _evaluate_candidate(context, task)


def _evaluate_candidate(context: IterationContext, task: CandidateTask) -> CandidateResult:
    model = build(context.spec)
    model.load_state_dict(context.state_dict)
    start = time.perf_counter()
    if task.group is not None:
        pruned, spec = prune(model, context.spec, task.group, task.width)
    elif task.removed_block is not None:
        pruned, spec = remove_block(model, context.spec, task.removed_block)
    else:
        pruned, spec = model, context.spec
    surgery_s = time.perf_counter() - start
    start = time.perf_counter()
    try:
        if context.finetune_steps > 0:
            finetune(pruned, context.train, context.finetune_steps, context.train_config, task.seed,
                     teacher=context.teacher())
        elif context.train_config.bn_recalibration > 0:
            recalibrate_batchnorm(pruned, context.train, context.train_config.bn_recalibration, context.eval_batch_size,
                                  device=context.train_config.device, precision=context.train_config.precision)
    except TrainingDiverged as error:
        return CandidateResult(task, "failed", f"diverged: {error}", surgery_s=surgery_s,
                               finetune_s=time.perf_counter() - start)
    finetune_s = time.perf_counter() - start
    start = time.perf_counter()
    scores = evaluate_scores(pruned, context.holdout, context.eval_batch_size, device=context.train_config.device,
                             precision=context.train_config.precision)
    eval_s = time.perf_counter() - start
    weights = {k: v.detach().clone() for k, v in pruned.state_dict().items()} if context.keep_weights else None
    return CandidateResult(
        task,
        "ok",
        holdout_acc=scores.accuracy,
        holdout_loss=scores.loss,
        spec=spec,
        state_dict=weights,
        surgery_s=surgery_s,
        finetune_s=finetune_s,
        eval_s=eval_s,
    )


class Executor(Protocol):
    """Runs one iteration's candidates; yields results as they finish (any order)."""

    def run(self, context: IterationContext, tasks: list[CandidateTask]) -> Iterator[CandidateResult]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Evaluates candidates one after another in this process."""

    def __init__(self, evaluate: Callable[[IterationContext, CandidateTask], CandidateResult] = evaluate_candidate):
        self._evaluate = evaluate  # replaceable so tests can inject a failing candidate

    def run(self, context: IterationContext, tasks: list[CandidateTask]) -> Iterator[CandidateResult]:
        for task in tasks:
            yield self._evaluate(context, task)

    def close(self) -> None:
        pass


def describe(result: CandidateResult) -> dict[str, Any]:
    """History-row fields of a candidate result."""
    task = result.task
    return {
        "iteration": task.iteration,
        "group": task.name,
        "width_before": task.group.width if task.group is not None else None,
        "width_after": task.width if task.group is not None else None,
        "predicted_ms": task.predicted_ms,
        "holdout_acc": result.holdout_acc,
        "holdout_loss": result.holdout_loss,
        "seed": task.seed,
        "status": result.status,
        "reason": result.reason,
        "surgery_s": result.surgery_s,
        "finetune_s": result.finetune_s,
        "eval_s": result.eval_s,
    }
