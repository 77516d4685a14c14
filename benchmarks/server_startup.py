"""What the device server costs to start: wall time and peak memory of importing it.

The server runs on the target (a phone, a board), so its start-up and memory
are the device's to pay. Each run is a fresh interpreter that imports the
server and its measuring child's module (`netadapt.device.server`,
`netadapt.device.worker`) and reports its peak RSS; runs of the two
checkouts alternate, so an A/B ratio sees the same machine state.

    python benchmarks/server_startup.py [--runs 5] [--against OTHER_CHECKOUT]

`--against` imports the same modules from another checkout (e.g. a
`git worktree` of an older commit) for a side-by-side comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import resource, sys\n"
    "import netadapt.device.server, netadapt.device.worker\n"
    "heavy = sorted({name.split('.')[0] for name in sys.modules} & {'torch', 'onnx', 'onnxruntime', 'numpy'})\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, ' '.join(heavy))\n"
)


def one_run(checkout: Path) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, heavy libraries loaded) of one fresh import from `checkout`."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=checkout)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"importing the server from {checkout} failed:\n{done.stderr[-2000:]}")
    rss_kb, _, heavy = done.stdout.strip().partition(" ")
    return seconds, int(rss_kb) / 1024, heavy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--against", type=Path, help="another checkout to compare with, side by side")
    args = parser.parse_args()
    checkouts = {"this checkout": ROOT, **({f"{args.against}": args.against.resolve()} if args.against else {})}
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}; load average %.2f %.2f %.2f"
          % os.getloadavg())
    runs: dict[str, list[tuple[float, float, str]]] = {name: [] for name in checkouts}
    for _ in range(args.runs):
        for name, checkout in checkouts.items():  # alternating, so both see the same machine
            runs[name].append(one_run(checkout))
    print(f"{'checkout':<40} {'median s':>9} {'median peak MB':>15}  heavy libraries loaded")
    for name, figures in runs.items():
        print(f"{name[:40]:<40} {statistics.median(f[0] for f in figures):>9.2f} "
              f"{statistics.median(f[1] for f in figures):>15.0f}  {figures[-1][2]}")
    if args.against:
        (a, b) = runs.values()
        print(f"ratio (this / other): time {statistics.median(f[0] for f in a) / statistics.median(f[0] for f in b):.2f}, "
              f"memory {statistics.median(f[1] for f in a) / statistics.median(f[1] for f in b):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
