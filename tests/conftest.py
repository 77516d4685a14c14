"""Shared tiny fixtures: keep the suite fast by testing on small specs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from mobilenetv3 import BlockSpec, NetSpec, build
from xdist_scheduling import make_scheduler, mark_worker_finished, wait_until_alone


# Modules whose tests share one expensive fixture (a finished search, a Ray
# cluster): each runs whole on one xdist worker, so the fixture is built once.
ONE_WORKER_MODULES = ("tests/test_family.py", "tests/test_ray_executor.py")
# Modules that compare wall-clock figures: they run last, alone on the machine.
QUIET_MODULES = ("tests/test_wall_clock.py",)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    return make_scheduler(config, log, ONE_WORKER_MODULES, QUIET_MODULES)


def pytest_sessionfinish(session):
    mark_worker_finished(session.config)


def pytest_collection_modifyitems(config, items):
    # GPU tests run where torch sees CUDA (`pytest -m gpu` selects only them) and are skipped elsewhere.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def alone_on_the_machine(request):
    """Waits until every other xdist worker has finished (at most 30 min): for wall-clock comparisons."""
    waited = wait_until_alone(request.config, timeout_s=1800)
    print(f"waited {waited:.1f} s for the other xdist workers to finish")  # shown with a failure


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    # Each worker gets its own cache (tables, bases), inherited by the CLI
    # subprocesses tests start: tests never read a developer's ~/.cache, and
    # two workers never fill one table at once.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NETADAPT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # The suite's models are tiny: a second thread buys nothing, and on a
    # loaded 2-core machine thread hand-offs make small ops 50-100x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class SizeMeasurer:
    """A Measurer whose figure is the model's size in kB, and which records the order it is asked in."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def fingerprint(self) -> dict:
        return {"cpu": "size"}

    def measure(self, onnx_bytes: bytes):
        from netadapt.benchmark import summarize

        self.asked.append(len(onnx_bytes))
        return summarize([len(onnx_bytes) / 1000])


@pytest.fixture
def size_measurer() -> type[SizeMeasurer]:
    """Makes Measurers that need no timing: results show which model was measured, and when."""
    return SizeMeasurer


@pytest.fixture(scope="session")
def tiny_spec() -> NetSpec:
    """A 3-block spec that still has every block feature: expansion, SE, residual, stride."""
    return NetSpec(
        name="tiny",
        in_channels=1,
        stem=8,
        blocks=(
            BlockSpec(3, 8, 8, True, 8, "relu", 1, has_expansion=False, residual=True),
            BlockSpec(3, 32, 16, False, 0, "relu", 2, has_expansion=True, residual=False),
            BlockSpec(5, 48, 16, True, 16, "hardswish", 1, has_expansion=True, residual=True),
        ),
        last_conv=64,
        head_hidden=32,
        num_classes=10,
        dropout=0.2,
    )


@pytest.fixture
def searchable() -> NetSpec:
    """`searchable_spec()`, for tests whose figures must stand clear of timing noise."""
    return searchable_spec()


def searchable_spec() -> NetSpec:
    """Small enough to train in seconds, wide enough that channel cuts move its
    latency well beyond measurement noise (about 8x between base and minimum)."""
    return NetSpec(
        name="searchable",
        in_channels=1,
        stem=16,
        blocks=(
            BlockSpec(3, 16, 16, True, 8, "relu", 1, has_expansion=False, residual=True),
            BlockSpec(3, 256, 64, False, 0, "relu", 2, has_expansion=True, residual=False),
            BlockSpec(5, 384, 64, True, 96, "hardswish", 1, has_expansion=True, residual=True),
        ),
        last_conv=256,
        head_hidden=256,
        num_classes=10,
    )


@dataclass
class PreparedSearch:
    """A trained base network, its config and a calibrated latency table on disk."""

    root: Path
    config_path: Path
    checkpoint: Path
    dataset: object

    def config(self, *overrides: str):
        from netadapt.config import load_config

        return load_config(self.config_path, [f"model.checkpoint={self.checkpoint}", *overrides])

    def table(self):
        from netadapt.latency import LatencyTable
        from netadapt.measurers import make_measurer

        config = self.config()
        shape = (1, 1, 32, 32)
        return LatencyTable.open(config.lut.table, make_measurer(config.target, config.measure, shape), shape)

    def unreachable_budget(self) -> str:
        """A `search.budget_ratio=R` override: safely above the search space's lower bound, but
        out of reach of three 2% cuts, so runs stop at max_iterations whatever the noise.

        A ratio, not milliseconds: the search measures the base on the machine as it
        is then, which may run faster or slower than when the table was measured.
        """
        from netadapt.groups import lower_bound_spec

        table = self.table()
        spec = searchable_spec()
        lower, base = table.predict_ms(lower_bound_spec(spec, 8, 8)), table.predict_ms(spec)
        assert lower < 0.5 * base, "the test network's latency range is too narrow for this test"
        return f"search.budget_ratio={1.5 * lower / base:.4f}"


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> PreparedSearch:
    """Shared by the search and executor tests: training the base takes ~15 s."""
    from netadapt.config import load_config
    from netadapt.data import load_dataset
    from netadapt.latency import calibration_specs
    from netadapt.checkpoint import save_checkpoint
    from netadapt.train import train

    root = tmp_path_factory.mktemp("search")
    spec_path = root / "searchable.yaml"
    spec = searchable_spec()
    spec.save(spec_path)
    config_path = root / "config.yaml"
    config_path.write_text(
        f"""
seed: 0
model: {{spec: {spec_path}}}
data: {{resolution: 32, holdout: 200}}
train: {{steps: 60, batch_size: 64, lr: 0.3, label_smoothing: 0.0, finetune_lr: 0.01, threads: 1, bn_recalibration: 256}}
measure: {{warmup_runs: 3, min_runs: 10, min_seconds: 0.02}}
# Depth proposals off: removing the big residual block could meet the budgets these
# tests set out of reach of channel cuts; their own tests turn them on.
search: {{finetune_steps: 2, max_iterations: 3, initial_reduction: 0.02, decay: 1.0, depth_proposals: false}}
# No drift check: the resume test compares two runs on this one table, and a
# re-measure between them would change the table under the second.
lut: {{table: {root / 'lut.csv'}, drift_check: 'off'}}
"""
    )
    config = load_config(config_path)
    # 400 test images, not the embedded 2,000: a search scores the test split at
    # every iteration, which was a quarter of each test search's time. Decisions
    # use the holdout, so no test's network depends on this.
    full = load_dataset(config.data)
    dataset = replace(full, test=full.test.subset(400))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    model = build(spec)
    train(model, dataset.train, config.train, config.train.steps, seed=0, progress=False)
    torch.set_num_threads(previous)
    checkpoint = root / "base.pt"
    save_checkpoint(checkpoint, model)
    prepared = PreparedSearch(root, config_path, checkpoint, dataset)
    # Fit the table's correction once, as a first search would, so every run
    # shares the same calibrated predictions.
    from netadapt.groups import lower_bound_spec

    prepared.table().fit_correction(calibration_specs(spec, 4), unfitted=[lower_bound_spec(spec, 8, 8)])
    return prepared
