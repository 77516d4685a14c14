"""Candidate fine-tunes on a real Ray local cluster (2 CPUs)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from netadapt.executor import evaluate_candidate
from netadapt.rundir import RunDir
from netadapt.search import run_search

ray = pytest.importorskip("ray", reason="Ray is part of the dev extra: pip install -e '.[dev]'")

from netadapt.ray_executor import RayExecutor  # noqa: E402  (needs ray)


@pytest.fixture(scope="module")
def ray_cluster():
    # Workers cannot import this test module, so ship its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
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
