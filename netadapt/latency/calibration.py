"""Online calibration: the search's own whole-network measurements correct the table's predictions.

The table predicts on its reference scale (see `netadapt.latency.table`);
the search measures its networks on the machine as it is now. Every whole
measurement it takes (the base, then each winner) is a point here, and the
next iteration's target and width choices use `apply(table prediction)`:
the table's prediction times the measured-to-predicted ratio of the latest
network (by default). Successive networks of a search differ by one cut, so
that ratio carries both the machine's current state and the table's
residual error near the network the next cuts start from.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

__all__ = ["CalibrationPoint", "OnlineCalibration"]


@dataclass(frozen=True)
class CalibrationPoint:
    """One whole-network measurement against the table's prediction of the same network."""

    table_ms: float
    measured_ms: float


class OnlineCalibration:
    """calibrated = table prediction * factor; factor: the median measured / predicted ratio of the latest points.

    Args:
        window: how many of the latest points the median takes. The default,
            1, follows the latest network alone. The table's error is a
            function of the network, and it changes along a search's path
            (on one host from +17% at the base to -11% five cuts later), so
            an older point misleads more than the newest one's noise does
            (evidence: docs/latency-model.md, `benchmarks/calibration_replay.py`).
            The search guards that point: a winner measured more than 5%
            off its prediction is measured again before it counts.
    """

    def __init__(self, window: int = 1) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self.points: list[CalibrationPoint] = []

    def observe(self, table_ms: float, measured_ms: float) -> None:
        """Add a whole-network figure and the table's prediction of that network (both > 0)."""
        if not (table_ms > 0 and measured_ms > 0 and math.isfinite(table_ms) and math.isfinite(measured_ms)):
            raise ValueError(f"calibration needs positive finite figures, got table {table_ms}, measured {measured_ms}")
        self.points.append(CalibrationPoint(float(table_ms), float(measured_ms)))

    @property
    def factor(self) -> float:
        """The median of measured / predicted over the latest `window` points; 1.0 before any point."""
        if not self.points:
            return 1.0
        return float(statistics.median(p.measured_ms / p.table_ms for p in self.points[-self.window :]))

    def apply(self, table_ms: float) -> float:
        """The calibrated prediction of a network the table predicts at `table_ms`."""
        return table_ms * self.factor
