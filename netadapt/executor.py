"""Candidate evaluation: surgery, short-term fine-tune, holdout accuracy.

NetAdapt Alg. 1 evaluates one proposal per prunable group in every iteration,
and the proposals are independent, so they go through an executor. The
local executor runs them one after another in this process; everything a
candidate needs travels in an `IterationContext` and a `CandidateTask`, both
plain picklable values, so another executor can ship them to workers.

A candidate's result depends only on its task and context (its seed is
derived from the run seed, the iteration and the group name), never on which
executor ran it or in what order.
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
from netadapt.groups import ChannelGroup
from netadapt.surgery import prune
from netadapt.train import TrainingDiverged, evaluate, finetune

__all__ = [
    "CandidateResult",
    "CandidateTask",
    "Executor",
    "IterationContext",
    "LocalExecutor",
    "candidate_seed",
    "evaluate_candidate",
]


def candidate_seed(run_seed: int, iteration: int, group_name: str) -> int:
    """A seed that depends only on what the candidate is, so a resumed or
    distributed run fine-tunes every candidate exactly as an uninterrupted one."""
    return zlib.crc32(f"{run_seed}:{iteration}:{group_name}".encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class CandidateTask:
    iteration: int
    group: ChannelGroup
    width: int  # the group's width after the cut
    predicted_ms: float
    seed: int


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


@dataclass
class CandidateResult:
    task: CandidateTask
    status: str  # "ok" or "failed"
    reason: str = ""
    holdout_acc: float | None = None
    spec: NetSpec | None = None
    state_dict: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    surgery_s: float = 0.0
    finetune_s: float = 0.0
    eval_s: float = 0.0


def evaluate_candidate(context: IterationContext, task: CandidateTask) -> CandidateResult:
    """Cut, fine-tune and evaluate one proposal. Failures are returned, not raised,
    except for bugs in this package (which keep their traceback)."""
    model = build(context.spec)
    model.load_state_dict(context.state_dict)
    start = time.perf_counter()
    pruned, spec = prune(model, context.spec, task.group, task.width)
    surgery_s = time.perf_counter() - start
    start = time.perf_counter()
    try:
        finetune(pruned, context.train, context.finetune_steps, context.train_config, task.seed)
    except TrainingDiverged as error:
        return CandidateResult(task, "failed", f"diverged: {error}", surgery_s=surgery_s,
                               finetune_s=time.perf_counter() - start)
    finetune_s = time.perf_counter() - start
    start = time.perf_counter()
    accuracy = evaluate(pruned, context.holdout, context.eval_batch_size)
    eval_s = time.perf_counter() - start
    return CandidateResult(
        task,
        "ok",
        holdout_acc=accuracy,
        spec=spec,
        state_dict={k: v.detach().clone() for k, v in pruned.state_dict().items()},
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
    return {
        "iteration": result.task.iteration,
        "group": result.task.group.name,
        "width_before": result.task.group.width,
        "width_after": result.task.width,
        "predicted_ms": result.task.predicted_ms,
        "holdout_acc": result.holdout_acc,
        "seed": result.task.seed,
        "status": result.status,
        "reason": result.reason,
        "surgery_s": result.surgery_s,
        "finetune_s": result.finetune_s,
        "eval_s": result.eval_s,
    }
