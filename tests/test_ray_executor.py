"""Candidate fine-tunes on a real Ray local cluster (2 CPUs, 1 declared GPU)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from netadapt.executor import CandidateResult, CandidateTask, IterationContext, evaluate_candidate
from netadapt.rundir import RunDir
from netadapt.search import run_search

ray = pytest.importorskip("ray", reason="Ray is part of the dev extra: pip install -e '.[dev]'")

from netadapt.ray_executor import RayExecutor  # noqa: E402  (needs ray)


@pytest.fixture(scope="module")
def ray_cluster():
    # Workers cannot import this test module, so ship its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # One GPU is declared, on a machine that may have none: Ray only books it, and
    # the placement test reads what a task was given.
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _final_weights(run_dir, iteration):
    return torch.load(RunDir(run_dir).checkpoint_path(iteration), weights_only=True)["state_dict"]


def test_ray_search_matches_the_local_search(prepared, tmp_path, ray_cluster):
    budget = prepared.unreachable_budget()
    overrides = [budget, "search.max_iterations=2"]
    local = run_search(prepared.config(*overrides), out=tmp_path / "local", dataset=prepared.dataset,
                       progress=False, echo=lambda m: None)
    distributed = run_search(prepared.config(*overrides, "executor.kind=ray"), out=tmp_path / "ray",
                             dataset=prepared.dataset, executor=RayExecutor(cpus_per_candidate=1),
                             progress=False, echo=lambda m: None)
    assert distributed.iterations == local.iterations == 2
    assert distributed.final_spec == local.final_spec
    columns = ["iteration", "kind", "group", "width_before", "width_after", "status", "holdout_acc", "seed"]
    assert RunDir(local.run_dir).read_history()[columns].equals(RunDir(distributed.run_dir).read_history()[columns])
    expected, actual = _final_weights(local.run_dir, 2), _final_weights(distributed.run_dir, 2)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def die_on_expanded_2(context, task):
    """Kills its worker process for one group, every time: a crash, not an exception."""
    if task.group.name == "expanded[2]":
        os._exit(1)
    return evaluate_candidate(context, task)


def test_a_dead_worker_is_retried_then_recorded_as_failed(prepared, tmp_path, ray_cluster):
    budget = prepared.unreachable_budget()
    executor = RayExecutor(cpus_per_candidate=1, max_retries=1, evaluate=die_on_expanded_2)
    result = run_search(prepared.config(budget, "search.max_iterations=1"),
                        out=tmp_path / "run", dataset=prepared.dataset, executor=executor, progress=False,
                        echo=lambda m: None)
    history = RunDir(result.run_dir).read_history()
    row = history[(history["kind"] == "candidate") & (history["group"] == "expanded[2]")].iloc[0]
    assert row["status"] == "failed" and "worker died" in row["reason"]
    assert result.iterations == 1, "the search goes on with the other candidates"


def report_placement(context, task):
    """What the task was given: Ray's GPU ids, CUDA_VISIBLE_DEVICES and the device it would train on."""
    seen = f"{ray.get_gpu_ids()}|{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}|{context.train_config.device}"
    return CandidateResult(task, "ok", reason=seen)


def _context(tiny_spec) -> IterationContext:
    from mobilenetv3 import build
    from netadapt.config import TrainConfig
    from netadapt.data import Split

    split = Split(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.int64))
    return IterationContext(spec=tiny_spec, state_dict=build(tiny_spec).state_dict(), train=split, holdout=split,
                            train_config=TrainConfig(device="auto"), finetune_steps=0)


@pytest.mark.parametrize("gpus, expected", [(1, "[0]|0|cuda"), (0.5, "[0]|0|cuda"), (0, "[]|unset|auto")])
def test_candidates_train_on_the_gpu_ray_assigns_them(tiny_spec, ray_cluster, gpus, expected):
    executor = RayExecutor(cpus_per_candidate=1, gpus_per_candidate=gpus, evaluate=report_placement)
    tasks = [CandidateTask(iteration=1, group=None, width=0, predicted_ms=1.0, seed=i) for i in range(2)]
    results = list(executor.run(_context(tiny_spec), tasks))
    seen = {result.reason for result in results}
    if gpus == 0:  # Ray leaves CUDA_VISIBLE_DEVICES unset or empty for a task without GPUs
        seen = {reason.replace("||", "|unset|") for reason in seen}
    assert seen == {expected}, "the task's resource request must carry executor.gpus_per_candidate"


@pytest.mark.gpu
def test_a_ray_candidate_fine_tunes_on_its_gpu(tiny_spec, ray_cluster):
    from netadapt.config import DataConfig, TrainConfig
    from netadapt.data import load_dataset

    data = load_dataset(DataConfig())
    context = _context(tiny_spec)
    context.train, context.holdout = data.train.subset(256), data.holdout.subset(128)
    context.train_config, context.finetune_steps = TrainConfig(batch_size=32, bn_recalibration=64, threads=1), 3
    executor = RayExecutor(cpus_per_candidate=1, gpus_per_candidate=1)
    (result,) = executor.run(context, [CandidateTask(iteration=1, group=None, width=0, predicted_ms=1.0, seed=0)])
    assert result.status == "ok" and result.holdout_acc is not None
    assert {tensor.device.type for tensor in result.state_dict.values()} == {"cpu"}
