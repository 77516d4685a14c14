"""`netadapt report`: the run's family as a table, and `pareto.png`.

The plot is optional (`pip install netadapt[plot]` brings matplotlib); the
table never needs it. A width-multiplier baseline is drawn beside the family
when the run directory holds `baseline.csv` (columns: name, measured_ms,
test_acc), as the headline benchmark writes it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from netadapt.errors import RunDirError
from netadapt.family import pareto_front, run_members
from netadapt.rundir import RunDir

__all__ = ["BASELINE_FILE", "family_table", "format_table", "plot_pareto", "report"]

BASELINE_FILE = "baseline.csv"
PLOT_HINT = "pareto.png needs matplotlib: pip install 'netadapt[plot]'"


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


def read_baseline(run_path: Path) -> pd.DataFrame | None:
    path = run_path / BASELINE_FILE
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise RunDirError(f"{path}: unreadable baseline ({error})") from None
    missing = {"name", "measured_ms", "test_acc"} - set(frame.columns)
    if missing:
        raise RunDirError(f"{path}: missing columns {sorted(missing)}")
    return frame


def plot_pareto(table: pd.DataFrame, baseline: pd.DataFrame | None, path: Path) -> bool:
    """Write the accuracy-vs-latency plot; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=120)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary)
    plt.close(figure)
    temporary.replace(path)
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
