"""Online calibration: the search's own whole-network measurements correct the table's predictions.

The table predicts on its reference scale (see `netadapt.latency.table`);
the search measures its networks on the machine as it is now. Every whole
measurement it takes (the base, then each winner) is a point here, and the
next iteration's target and width choices use `apply(table prediction)`:
the table's prediction times the measured-to-predicted ratio of the latest
networks. Successive networks of a search differ by one group's cut, so the
latest ratio, which carries both the machine's current state and the
table's residual error near the current network, is the best guess for the
next one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["CalibrationPoint", "OnlineCalibration"]


@dataclass(frozen=True)
class CalibrationPoint:
    """One whole-network measurement against the table's prediction of the same network."""

    table_ms: float
    measured_ms: float


class OnlineCalibration:
    """calibrated = table prediction * factor; factor: weighted geometric mean of the latest ratios.

    Args:
        decay: weight of each older point relative to the next newer one
            (0: the latest point alone; 1: all points alike). The default
            leans on the latest, since the error of a table drifts with the
            network's size along a search.
    """

    def __init__(self, decay: float = 0.25) -> None:
        if not 0 <= decay <= 1:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.points: list[CalibrationPoint] = []

    def observe(self, table_ms: float, measured_ms: float) -> None:
        """Add a whole-network figure and the table's prediction of that network (both > 0)."""
        if not (table_ms > 0 and measured_ms > 0 and math.isfinite(table_ms) and math.isfinite(measured_ms)):
            raise ValueError(f"calibration needs positive finite figures, got table {table_ms}, measured {measured_ms}")
        self.points.append(CalibrationPoint(float(table_ms), float(measured_ms)))

    @property
    def factor(self) -> float:
        """measured / predicted, weighted towards the latest points; 1.0 before any point."""
        if not self.points:
            return 1.0
        total = weight_sum = 0.0
        weight = 1.0
        for point in reversed(self.points):
            total += weight * math.log(point.measured_ms / point.table_ms)
            weight_sum += weight
            weight *= self.decay
            if weight == 0.0:
                break
        return math.exp(total / weight_sum)

    def apply(self, table_ms: float) -> float:
        """The calibrated prediction of a network the table predicts at `table_ms`."""
        return table_ms * self.factor
