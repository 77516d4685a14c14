"""`netadapt report`: the run's family as a table, and `pareto.png`.

The plot is optional (`pip install netadapt[plot]` brings matplotlib); the
table never needs it. A width-multiplier baseline is drawn beside the family
when the run directory holds `baseline.csv` (columns: name, measured_ms,
test_acc), as the headline benchmark writes it; `compare_to_baseline` is the
benchmark's comparison of the two (benchmarks/headline.py).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd

from netadapt.io import atomic_write_bytes
from netadapt.errors import RunDirError, quote
from netadapt.family import pareto_front, run_members
from netadapt.rundir import RunDir

__all__ = ["BASELINE_FILE", "COMPARISON_COLUMNS", "compare_to_baseline", "family_table", "format_table", "plot_pareto",
           "report"]

BASELINE_FILE = "baseline.csv"
PLOT_HINT = "pareto.png needs matplotlib: pip install 'netadapt[plot]'"

COMPARISON_COLUMNS = [
    "name",  # the baseline point, e.g. a width multiplier
    "measured_ms",
    "test_acc",
    "matched_acc_member",  # fastest member at least as accurate as the point
    "matched_acc_ms",
    "speedup",  # measured_ms / matched_acc_ms; NaN when no member is accurate enough
    "matched_ms_member",  # most accurate member at most as slow as the point
    "matched_ms_acc",
    "acc_gain",  # matched_ms_acc - test_acc; NaN when no member is fast enough
    "dominated",  # some member has lower-or-equal latency and higher-or-equal accuracy
]


def family_table(run_path: str | Path) -> pd.DataFrame:
    """Every committed network of the run, with a flag for the Pareto members."""
    members = run_members(RunDir(run_path))
    front = {m.iteration for m in pareto_front(members, lambda m: m.measured_ms, lambda m: m.holdout_acc)}
    return pd.DataFrame(
        {
            "iteration": [m.iteration for m in members],
            "measured_ms": [m.measured_ms for m in members],
            "predicted_ms": [m.predicted_ms for m in members],
            "holdout_acc": [m.holdout_acc for m in members],
            "test_acc": [m.test_acc for m in members],
            "pareto": [m.iteration in front for m in members],
        }
    )


def format_table(table: pd.DataFrame) -> str:
    lines = [f"{'iter':>4} {'measured ms':>12} {'predicted ms':>13} {'holdout':>8} {'test':>8}  pareto"]
    for row in table.itertuples():
        lines.append(
            f"{row.iteration:>4} {row.measured_ms:>12.3f} {row.predicted_ms:>13.3f} "
            f"{row.holdout_acc:>8.2%} {row.test_acc:>8.2%}  {'*' if row.pareto else ''}"
        )
    return "\n".join(lines)


def compare_to_baseline(family: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """NetAdapt's family against each baseline point, as the NetAdapt paper compares it with width multipliers.

    For each baseline point: the speed-up at matched accuracy (its latency over
    that of the fastest member with at least its accuracy) and the accuracy
    gain at matched latency (the most accurate member with at most its
    latency, minus its accuracy). The point is dominated when a member is no
    slower and no less accurate, which is the same as a gain >= 0.

    Args:
        family: one row per member; columns name, measured_ms, test_acc.
        baseline: one row per point; the same columns.
    Returns:
        One row per baseline point, in its order, with COMPARISON_COLUMNS;
        NaN (and an empty member name) where no member qualifies.
    """
    rows = []
    for point in baseline.itertuples(index=False):
        accurate = family[family["test_acc"] >= point.test_acc]
        fast = family[family["measured_ms"] <= point.measured_ms]
        row = {"name": point.name, "measured_ms": point.measured_ms, "test_acc": point.test_acc,
               "matched_acc_member": "", "matched_acc_ms": math.nan, "speedup": math.nan,
               "matched_ms_member": "", "matched_ms_acc": math.nan, "acc_gain": math.nan}
        if len(accurate):
            fastest = accurate.iloc[accurate["measured_ms"].to_numpy().argmin()]  # positions: any index works
            row.update(matched_acc_member=fastest["name"], matched_acc_ms=fastest["measured_ms"],
                       speedup=point.measured_ms / fastest["measured_ms"])
        if len(fast):
            best = fast.iloc[fast["test_acc"].to_numpy().argmax()]
            row.update(matched_ms_member=best["name"], matched_ms_acc=best["test_acc"],
                       acc_gain=best["test_acc"] - point.test_acc)
        row["dominated"] = bool(row["acc_gain"] >= 0)  # NaN compares False: no member is fast enough
        rows.append(row)
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def read_baseline(run_path: Path) -> pd.DataFrame | None:
    path = run_path / BASELINE_FILE
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as error:  # pandas' parser errors and UnicodeDecodeError are ValueErrors
        raise RunDirError(f"{path}: unreadable baseline ({quote(str(error), 200)})") from None
    missing = {"name", "measured_ms", "test_acc"} - set(frame.columns)
    if missing:
        raise RunDirError(f"{path}: missing columns {sorted(missing)}")
    for column, low, high, inclusive, wanted in (("measured_ms", 0, math.inf, "neither", "a finite positive number"),
                                                 ("test_acc", 0, 1, "both", "a number in [0, 1]")):
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = ~numbers.between(low, high, inclusive=inclusive)  # NaN (text, an empty cell) is never between
        if bad.any():
            index = int(bad.to_numpy().nonzero()[0][0])
            raise RunDirError(f"{path}: row {index + 1}, column {column}: expected {wanted}, "
                              f"got {quote(frame[column].iloc[index])}")
        frame[column] = numbers
    return frame


def plot_pareto(table: pd.DataFrame, baseline: pd.DataFrame | None, path: Path, iterations: bool = True) -> bool:
    """Write the accuracy-vs-latency plot; False when matplotlib is not installed.

    Args:
        table: the family; columns measured_ms, test_acc and pareto.
        baseline: width-multiplier points (name, measured_ms, test_acc), or None.
        path: the PNG file (written atomically).
        iterations: also draw every row as the search's path; False for a
            table of Pareto members only.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    if iterations:
        axes.plot(table["measured_ms"], table["test_acc"] * 100, "o-", color="0.7", label="NetAdapt iterations")
    front = table[table["pareto"]]
    axes.plot(front["measured_ms"], front["test_acc"] * 100, "o", color="tab:blue", label="NetAdapt family (Pareto)")
    if baseline is not None and len(baseline):
        axes.plot(baseline["measured_ms"], baseline["test_acc"] * 100, "s--", color="tab:orange",
                  label="width multipliers")
        for row in baseline.itertuples():
            axes.annotate(str(row.name), (row.measured_ms, row.test_acc * 100), textcoords="offset points",
                          xytext=(4, -10), fontsize=8)
    axes.set_xlabel("measured latency (ms)")
    axes.set_ylabel("test accuracy (%)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return True


def report(run_path: str | Path, plot_path: str | Path | None = None) -> tuple[str, Path | None]:
    """The printed table, and the plot's path (None when matplotlib is missing)."""
    run_path = Path(run_path)
    table = family_table(run_path)
    text = format_table(table)
    baseline = read_baseline(run_path)
    if baseline is not None:
        text += "\n\nwidth-multiplier baseline:\n" + baseline.to_string(index=False)
    plot_path = Path(plot_path) if plot_path else run_path / "pareto.png"
    return text, plot_path if plot_pareto(table, baseline, plot_path) else None
