"""Online calibration replayed on recorded searches: how well each window would have predicted the next network.

A search calibrates the table's prediction of its next network on the
whole-network figures of the networks before it (`OnlineCalibration`). Every
`netadapt lut validate --run RUN` CSV records, for each network a search
visited, the table's own prediction, the steady figure the search calibrated on
and a quiet re-measurement. This script replays `OnlineCalibration(window=W)`
on those records: for network i it observes networks 0..i-1 as the search did,
predicts network i, and compares that with network i's quiet figure.

It needs no machine time: the figures are the recorded ones. The replay keeps
each search's path fixed, while a search calibrated differently might have
cut differently; so it compares calibrations on the same paths, and the
searches themselves still have to be rerun (`benchmarks/search_latency.py`).

    python benchmarks/calibration_replay.py                     # every committed run CSV
    python benchmarks/calibration_replay.py RUN.csv ... --windows 1 2 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from netadapt.latency import OnlineCalibration

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = sorted((ROOT / "benchmarks" / "results").glob("**/*validate*run*.csv"))


@dataclass(frozen=True)
class ReplayedRun:
    """One recorded search: its name and each network's (table ms, steady ms, quiet ms), base first."""

    name: str
    table_ms: list[float]
    steady_ms: list[float]
    quiet_ms: list[float]


def load_run(path: Path) -> ReplayedRun:
    """A `lut validate --run` CSV; the steady figure falls back to the in-search one in runs that predate it."""
    frame = pd.read_csv(path).sort_values("iteration")
    missing = {"table_predicted_ms", "in_search_ms", "remeasured_ms"} - set(frame.columns)
    if missing:
        raise SystemExit(f"{path}: not a `lut validate --run` CSV (no column {', '.join(sorted(missing))})")
    steady = frame["steady_ms"] if "steady_ms" in frame else frame["in_search_ms"]
    steady = steady.fillna(frame["in_search_ms"])
    name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    return ReplayedRun(name, frame["table_predicted_ms"].tolist(), steady.tolist(), frame["remeasured_ms"].tolist())


def replay(run: ReplayedRun, window: int) -> list[float]:
    """|error| in % of each network's replayed calibrated prediction against its quiet figure (the base excluded)."""
    calibration = OnlineCalibration(window=window)
    errors = []
    for index, (table_ms, steady_ms, quiet_ms) in enumerate(zip(run.table_ms, run.steady_ms, run.quiet_ms)):
        if index > 0:
            errors.append(abs(calibration.apply(table_ms) / quiet_ms - 1) * 100)
        calibration.observe(table_ms, steady_ms)
    return errors


def describe(errors: list[float]) -> str:
    return (f"median {statistics.median(errors):5.2f}%  p90 {np.percentile(errors, 90):5.2f}%  "
            f"max {max(errors):5.2f}%  within 5% {sum(e <= 5 for e in errors)}/{len(errors)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="`lut validate --run` CSVs (default: every committed one)")
    parser.add_argument("--windows", nargs="+", type=int, default=[1, 2, 3, 5])
    args = parser.parse_args(argv)
    paths = args.runs or DEFAULT_RUNS
    if not paths:
        raise SystemExit("no `lut validate --run` CSV given and none found under benchmarks/results/")
    runs = [load_run(path) for path in paths]
    runs = [run for run in runs if len(run.table_ms) >= 2]
    pooled: dict[int, list[float]] = {window: [] for window in args.windows}
    for run in runs:
        print(f"{run.name} ({len(run.table_ms) - 1} networks after the base)")
        for window in args.windows:
            errors = replay(run, window)
            pooled[window].extend(errors)
            print(f"  window {window}: {describe(errors)}")
    print(f"all {len(runs)} runs")
    for window in args.windows:
        print(f"  window {window}: {describe(pooled[window])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
