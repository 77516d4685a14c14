"""Whole-network measurements beside the base, and the stop test against the budget."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from netadapt.benchmark import Measurer, measure_onnx_passes
from netadapt.config import Config
from netadapt.errors import ConfigError

__all__ = [
    "BudgetTest",
    "CLOSE_CALL_PCT",
    "SURPRISE",
    "WholeFigures",
    "budget_test",
    "met_by_the_base",
    "measure_whole",
    "resolve_budget",
]


def met_by_the_base(base_ms: float, budget_ms: float, floor_ms: float) -> str:
    """The stop reason of a search whose base already meets its budget, with a budget that would bite.

    A user who typed a budget that means nothing on this target (``--budget-ms 15``
    for a 0.3 ms network) learns the span the search can cover: the base,
    measured, down to the smallest network, predicted. The suggestion is 70% of
    the base (the demo's ratio) where the floor allows it, else halfway down.

    Args:
        base_ms: the base's measured latency.
        budget_ms: the budget it meets.
        floor_ms: the calibrated prediction of the smallest network of the search space.
    """
    suggested = 0.7 * base_ms if 0.7 * base_ms > floor_ms else (base_ms + floor_ms) / 2
    return (
        f"the base network already meets the budget ({base_ms:.3f} ms <= {budget_ms:.3f} ms). This target's "
        f"search space spans {base_ms:.3f} ms (the base, measured) down to about {floor_ms:.3f} ms (its smallest "
        f"network, predicted); a budget between them bites, e.g. --budget-ms {suggested:.3g} "
        f"or --budget-ratio {suggested / base_ms:.2f}"
    )


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
    measured = measure_onnx_passes([network] if base is None else [network, base], measurer, passes)
    return WholeFigures(tuple(one[0].latency_ms for one in measured), tuple(one[-1].latency_ms for one in measured),
                        time.perf_counter() - start)


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


# A winner measured this far (as a share) from its calibrated prediction is measured again,
# and so is one whose budget test is decided by less than CLOSE_CALL_PCT either way.
SURPRISE = 0.05
CLOSE_CALL_PCT = 5.0
