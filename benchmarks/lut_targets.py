"""Latency-table accuracy on many targets, with the CLI's defaults only.

For each target of the grid, in a fresh table: `netadapt lut build` (timed),
then `netadapt lut validate` (20 random cuts and 20 trajectory networks:
successive single-group cuts down to the search space's floor), each with
no tuning flag, exactly as a user would run them. Prints, per target and per
kind of network: median |error|, share within 5% and 10%, max |error|, and
the build time. Goals: median <= 2%, >= 95% within 5%, 100% within 10%.

    python benchmarks/lut_targets.py                       # the whole grid (an hour or more on 2 cores)
    python benchmarks/lut_targets.py --points small-28-1 small-160-1
    python benchmarks/lut_targets.py --list

Each point's rows and output are kept under --out (default a temporary
folder); the summary is printed and written to summary.csv there.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from netadapt.io import atomic_write_text
from netadapt.latency.validate import summarize_validation

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Point:
    preset: str
    size: int
    threads: int

    @property
    def name(self) -> str:
        return f"{self.preset}-{self.size}-{self.threads}"

    def flags(self) -> list[str]:
        if self.preset == "small" and self.size == 28:
            # The embedded default: Small on 1-channel 28x28 images, 10 classes.
            return ["--config", str(ROOT / "configs" / "embedded.yaml"), "--threads", str(self.threads)]
        return ["--preset", self.preset, "--input", f"1x3x{self.size}x{self.size}", "--threads", str(self.threads)]


GRID = [Point("small", size, threads) for size in (28, 96, 160, 224) for threads in (1, 2)] + [Point("large", 224, 1)]


def netadapt(args: list[str], log: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "netadapt.cli.main", *args], cwd=ROOT, capture_output=True, text=True)
    atomic_write_text(log, done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"netadapt {' '.join(args)} failed ({done.returncode}); see {log}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", nargs="+", metavar="NAME", help="grid points to run (default: all; see --list)")
    parser.add_argument("--list", action="store_true", help="print the grid's point names and stop")
    parser.add_argument("--out", type=Path, help="keep tables, rows and logs here (default: a temporary folder)")
    args = parser.parse_args()
    if args.list:
        print("\n".join(point.name for point in GRID))
        return 0
    by_name = {point.name: point for point in GRID}
    unknown = [name for name in args.points or [] if name not in by_name]
    if unknown:
        parser.error(f"unknown point(s) {unknown}; choose from {list(by_name)}")
    points = [by_name[name] for name in args.points] if args.points else GRID
    out = args.out or Path(tempfile.mkdtemp(prefix="lut-targets-"))
    out.mkdir(parents=True, exist_ok=True)

    print("# LUT accuracy on many targets, CLI defaults only")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
          f"load average {os.getloadavg()}")
    print(f"output: {out}")
    rows = []
    for point in points:
        table = out / f"{point.name}.csv"
        table.unlink(missing_ok=True)
        build_s = netadapt(["lut", "build", *point.flags(), "--table", str(table)], out / f"{point.name}-build.txt")
        validation = out / f"{point.name}-validate.csv"
        validate_s = netadapt(["lut", "validate", *point.flags(), "--table", str(table), "--out", str(validation)],
                              out / f"{point.name}-validate.txt")
        frame = pd.read_csv(validation)
        for kind, part in [*frame.groupby("kind"), ("all", frame)]:
            rows.append({"point": point.name, "kind": kind, **summarize_validation(part), "build_s": build_s,
                         "validate_s": validate_s})
        summary = pd.DataFrame(rows)
        atomic_write_text(out / "summary.csv", summary.to_csv(index=False))
        print(f"\n## {point.name}: build {build_s:.0f} s, validate {validate_s:.0f} s")
        with pd.option_context("display.width", 200, "display.float_format", "{:.2f}".format):
            print(summary[summary["point"] == point.name].drop(columns=["point"]).to_string(index=False))

    print("\n## summary (goals: median <= 2%, >= 95% within 5%, 100% within 10%)")
    summary = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_rows", 200, "display.float_format", "{:.2f}".format):
        print(summary.to_string(index=False))
    met = summary[summary["kind"] == "all"]
    met = met[(met["median_abs_error_pct"] <= 2) & (met["within_5_pct"] >= 0.95) & (met["within_10_pct"] >= 1.0)]
    print(f"\npoints meeting every goal: {len(met)} of {len(points)} ({', '.join(met['point']) or 'none'})")
    print(f"load average at the end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
