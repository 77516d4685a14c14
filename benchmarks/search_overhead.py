"""Where a search's time goes, from a run directory's history.csv.

NetAdapt's iterations should be dominated by fine-tuning and evaluation; the
lookup-table predictions, the surgery and the ONNX export are overhead that
should stay under 10% of an iteration. Latency measurement (the table's
on-demand entries, `lut_measure_s`, and the winner's whole-model
measurement, `measure_s`) is reported separately.

    python benchmarks/search_overhead.py runs/search-<time>
"""

from __future__ import annotations

import argparse
import platform
import sys

from netadapt.rundir import RunDir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a search's run directory")
    args = parser.parse_args()
    history = RunDir(args.run).read_history()
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; run {args.run}")
    columns = ["predict_s", "surgery_s", "export_s", "finetune_s", "eval_s", "lut_measure_s", "measure_s"]
    per_iteration = history[history["iteration"] > 0].groupby("iteration")[columns].sum()
    per_iteration["overhead_share"] = (
        per_iteration[["predict_s", "surgery_s", "export_s"]].sum(axis=1) / per_iteration[columns].sum(axis=1)
    )
    print(per_iteration.round(3).to_string())
    totals = per_iteration[columns].sum()
    overhead = totals[["predict_s", "surgery_s", "export_s"]].sum()
    print(f"\ntotal: {totals.sum():.1f} s; fine-tune + evaluation {totals[['finetune_s', 'eval_s']].sum():.1f} s; "
          f"predictions + surgery + export {overhead:.1f} s = {100 * overhead / totals.sum():.1f}% (goal < 10%); "
          f"measuring table entries {totals['lut_measure_s']:.1f} s, whole models {totals['measure_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
