"""The latency signal along a real search's own path, judged by quiet re-measurements.

Runs the demo search (`netadapt search --budget-ratio 0.7 --seed 0` on the
embedded default, each run in its own process) `--runs` times (default 2),
then re-measures every run's networks, the base and each iteration's winner,
in a separate quiet process (`netadapt lut validate --run RUN`: whole,
interleaved, as many passes as the search took, `measure.repeats`, fastest run). It prints, per run:

- trajectory: the calibrated prediction the search recorded for each
  network against the quiet figure (goal: every one within 5%, median <= 2%);
- the table's own prediction (before online calibration), for comparison;
- in-search figure: the search's own measurement of each network (taken in
  its measuring process, right after the fine-tunes; its best pass) against
  the quiet one (goal: within 2%), and its steady figure (the ratio to the
  base measured beside it times the base's median figure), which calibrates
  the next predictions;
- landing: the final network's quiet figure as a share of the base's
  (goal: 0.63-0.70);
- iterations, wall time (goal: under 8 minutes with the base cached);

and whether the runs reached the same final network (same seed and table).

    python benchmarks/search_latency.py                    # two runs on the shared cached table
    python benchmarks/search_latency.py --fresh-table      # the first run builds a new table, the second reuses it
    python benchmarks/search_latency.py --out benchmarks/results/search_latency/run-DATE

The base network is trained on first use and cached (about 5 minutes);
that time is reported apart from the searches'.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from netadapt.io import atomic_write_text
from netadapt.latency.validate import summarize_run

ROOT = Path(__file__).resolve().parents[1]


def netadapt(*args: str, log: Path | None = None) -> tuple[float, str]:
    """Run one `netadapt` command in its own process; returns (seconds, its output)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "netadapt.cli.main", *args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = done.stdout + done.stderr
    if log is not None:
        atomic_write_text(log, output)
    if done.returncode != 0:
        raise SystemExit(f"netadapt {' '.join(args)} failed ({done.returncode}):\n{output[-3000:]}")
    return seconds, output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2, help="demo searches, one after another (default 2)")
    parser.add_argument("--budget-ratio", type=float, default=0.7)
    parser.add_argument("--fresh-table", action="store_true",
                        help="start from an empty table (in the output folder) instead of the shared cached one")
    parser.add_argument("--out", type=Path, help="keep the runs and the re-measurements here (default: a temporary folder)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config overrides for the searches")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="search-latency-"))
    out.mkdir(parents=True, exist_ok=True)
    overrides = list(args.overrides)
    if args.fresh_table:
        overrides.append(f"lut.table={out / 'lut.csv'}")

    print("# search latency benchmark: the demo search's own path, re-measured quietly")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
          f"load average {os.getloadavg()}")
    print(f"searches: netadapt search --budget-ratio {args.budget_ratio} --seed 0 {' '.join('--set ' + o for o in overrides)}")
    print(f"output: {out}")

    # The base network, trained once and cached, so the searches' times are their own.
    if (out / "warm").exists():
        shutil.rmtree(out / "warm")
    # (A budget the base meets: the search trains or loads the base, then stops; its own table stays apart.)
    warm_s, _ = netadapt("search", "--budget-ms", "1000", "--out", str(out / "warm"), "--no-progress",
                         "--set", f"lut.table={out / 'warm-lut.csv'}", log=out / "base-train.log")
    print(f"base network ready in {warm_s:.0f} s (cached after the first time)")

    summaries = []
    finals = []
    for number in range(1, args.runs + 1):
        run = out / f"run{number}"
        if run.exists():
            shutil.rmtree(run)
        flags = ["search", "--budget-ratio", str(args.budget_ratio), "--seed", "0", "--out", str(run), "--no-progress"]
        for override in overrides:
            flags += ["--set", override]
        search_s, _ = netadapt(*flags, log=out / f"run{number}-search.txt")
        validate_s, _ = netadapt("lut", "validate", "--run", str(run), "--out", str(run / "validate.csv"),
                                 log=out / f"run{number}-validate.txt")
        frame = pd.read_csv(run / "validate.csv")
        finals.append((run / "checkpoints" / f"iter-{int(frame['iteration'].iloc[-1]):03d}.spec.yaml").read_text())
        summaries.append({"run": number, "search_s": search_s, "iterations": int(frame["iteration"].iloc[-1]),
                          **summarize_run(frame), "validate_s": validate_s})
        print(f"\n## run {number}: {summaries[-1]['iterations']} iterations in {search_s:.0f} s "
              f"(re-measured in {validate_s:.0f} s)")
        print(f"{'iter':>4} {'calibrated':>10} {'table':>10} {'in-search':>10} {'steady':>10} {'quiet':>10} {'error':>8} "
              f"{'table err':>9} {'in-search':>9} {'steady':>8} {'of base':>8}")
        for row in frame.itertuples():
            print(f"{row.iteration:>4} {row.predicted_ms:>10.4f} {row.table_predicted_ms:>10.4f} {row.in_search_ms:>10.4f} "
                  f"{row.steady_ms:>10.4f} {row.remeasured_ms:>10.4f} {row.error_pct:>7.2f}% {row.table_error_pct:>8.2f}% "
                  f"{row.in_search_error_pct:>8.2f}% {row.steady_error_pct:>7.2f}% {row.ratio_to_base:>8.3f}")

    print("\n## summary (goals: calibrated prediction within 5%, median <= 2%; in-search within 2%; "
          "landing 0.63-0.70; under 8 min)")
    table = pd.DataFrame(summaries)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.2f}".format):
        print(table.to_string(index=False))
    atomic_write_text(out / "summary.csv", table.to_csv(index=False))
    if len(finals) > 1:
        same = all(final == finals[0] for final in finals[1:])
        print(f"\nsame final network in all {len(finals)} runs: {'yes' if same else 'no'}")
    print(f"load average at the end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
