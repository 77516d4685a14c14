"""Candidate evaluation fanned out over a Ray cluster (`pip install netadapt[ray]`).

Each candidate is one Ray task with the configured CPUs/GPUs. The iteration
context (weights and data splits) is put in the object store once and
shared by all tasks. Ray re-runs a task whose worker process died up to
`max_retries` times; after that the candidate is recorded as failed and the
search goes on with the others.

A candidate given GPUs (`executor.gpus_per_candidate` > 0) trains on the GPU
Ray assigned it: Ray limits the task's CUDA_VISIBLE_DEVICES to its GPUs, so
the candidate's `train.device` becomes "cuda" (the first visible one)
whatever the driver's was. Without GPUs it keeps `train.device`, resolved on
the worker's own hardware.

Latency is never measured here: the search measures on the target only
between iterations, when no fine-tune is running (see `netadapt.search`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

from netadapt.errors import ConfigError
from netadapt.executor import CandidateResult, CandidateTask, IterationContext, evaluate_candidate

__all__ = ["RayExecutor"]


class RayExecutor:
    """Runs candidates as Ray tasks; yields results as they complete."""

    def __init__(
        self,
        address: str | None = None,
        cpus_per_candidate: float = 1.0,
        gpus_per_candidate: float = 0.0,
        max_retries: int = 2,
        evaluate: Callable[[IterationContext, CandidateTask], CandidateResult] = evaluate_candidate,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
    ) -> None:
        """
        Args:
            address: a running cluster ("auto", "ray://host:10001", ...); None starts
                a local cluster in this process.
            cpus_per_candidate: CPUs Ray reserves for each candidate's task.
            gpus_per_candidate: GPUs Ray reserves for each candidate's task.
            max_retries: re-runs of a task whose worker died, before the candidate fails.
            evaluate: the candidate function (module-level, so Ray can ship it).
            num_cpus: CPUs of a local cluster (None: all of this machine's).
            num_gpus: GPUs of a local cluster (None: those Ray detects).
        """
        try:
            import ray
        except ImportError:
            raise ConfigError("executor.kind is 'ray' but Ray is not installed: pip install 'netadapt[ray]'") from None
        if max_retries < 0:
            raise ConfigError(f"executor.max_retries must be >= 0, got {max_retries}")
        self._ray = ray
        self._started_here = not ray.is_initialized()
        if self._started_here:
            local = address is None
            ray.init(address=address, num_cpus=num_cpus if local else None, num_gpus=num_gpus if local else None,
                     include_dashboard=False, log_to_driver=False, configure_logging=False)
        self._evaluate = evaluate
        self._remote = ray.remote(num_cpus=cpus_per_candidate, num_gpus=gpus_per_candidate,
                                  max_retries=max_retries)(_on_assigned_gpu)

    def run(self, context: IterationContext, tasks: list[CandidateTask]) -> Iterator[CandidateResult]:
        ray = self._ray
        context_ref = ray.put(context)
        pending = {self._remote.remote(self._evaluate, context_ref, task): task for task in tasks}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                task = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.WorkerCrashedError as error:
                    # An exception raised inside the task is a bug and propagates,
                    # as it does with the local executor; a dead worker is not.
                    yield CandidateResult(task, "failed", f"worker died (after retries): {_first_line(error)}")

    def close(self) -> None:
        if self._started_here and self._ray.is_initialized():
            self._ray.shutdown()


def _on_assigned_gpu(evaluate: Callable[[IterationContext, CandidateTask], CandidateResult],
                     context: IterationContext, task: CandidateTask) -> CandidateResult:
    """Run `evaluate` in a Ray task; on the GPU Ray assigned the task, if it has one (see the module docstring)."""
    import ray

    if ray.get_gpu_ids():
        context = dataclasses.replace(context, train_config=dataclasses.replace(context.train_config, device="cuda"))
    return evaluate(context, task)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
