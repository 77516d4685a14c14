"""The run directory: the complete, resumable record of one search.

Layout::

    RUN/
      config.yaml          resolved config (a run resumes from this alone)
      state.json           commit point: the last completed iteration
      history.csv          one row per candidate and per iteration
      checkpoints/
        iter-000.pt        base network (state dict + spec YAML)
        iter-000.spec.yaml
        iter-001.pt ...    each iteration's winner
      lut.csv              snapshot of the latency table the run used
      search.log           the log

Every file is written atomically. An iteration is committed in this order:
checkpoint, history, state. A kill before the state write leaves the previous
state, and resuming truncates the history back to it, so no completed
iteration is lost or redone.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import math
from dataclasses import dataclass

import pandas as pd

from mobilenetv3 import NetSpec
from mobilenetv3.fileio import atomic_write_text
from netadapt.errors import RunDirError

__all__ = ["HISTORY_COLUMNS", "IterationNetwork", "RunDir"]

# history.csv: one row per candidate (kind=candidate) and per iteration's
# outcome (kind=base, iteration, final). Times are seconds.
HISTORY_COLUMNS = [
    "iteration",
    "kind",  # base | candidate | iteration | final
    "group",
    "width_before",
    "width_after",
    "status",  # ok | chosen | failed | skipped | done
    "reason",
    "target_ms",  # the iteration's latency target L_i (calibrated scale)
    "predicted_ms",  # calibrated prediction: the table's times the online calibration (what the search used)
    "table_predicted_ms",  # the table's own prediction (its correction, no online calibration)
    "measured_ms",  # whole network on the target: best of measure.repeats passes
    "base_measured_ms",  # the base, measured in the same interleaved passes
    "ratio_to_base",  # median over those passes of network / base: drift cancels
    "steady_ms",  # ratio_to_base times the base's median figure so far: what calibrates the next predictions
    "measured_spread_pct",  # (slowest - fastest) / fastest pass of measured_ms
    "budget_margin_pct",  # how far under (+) or over (-) the budget the stop test found it
    "holdout_acc",
    "test_acc",
    "seed",
    "predict_s",  # lookup-table predictions for the width choice (without lut_measure_s)
    "lut_measure_s",  # measuring table entries the width choice needed and the table lacked
    "surgery_s",
    "finetune_s",
    "eval_s",
    "export_s",
    "measure_s",
    "checkpoint",
]

STATE_VERSION = 1


@dataclass(frozen=True)
class IterationNetwork:
    """One network a run committed (the base or an iteration's winner) and what the run recorded of it."""

    iteration: int
    spec: NetSpec
    predicted_ms: float  # the prediction the search used (calibrated; the base's: the table's)
    table_predicted_ms: float  # NaN in runs from before the column existed
    measured_ms: float  # the search's own whole-network figure (best pass)
    steady_ms: float  # its steady figure (ratio to the base times the base's median); NaN in older runs


class RunDir:
    """Reads and writes one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ------------------------------------------------------------------ paths
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    @property
    def history_path(self) -> Path:
        return self.path / "history.csv"

    @property
    def lut_path(self) -> Path:
        return self.path / "lut.csv"

    @property
    def log_path(self) -> Path:
        return self.path / "search.log"

    def checkpoint_path(self, iteration: int) -> Path:
        return self.path / "checkpoints" / f"iter-{iteration:03d}.pt"

    def spec_path(self, iteration: int) -> Path:
        return self.path / "checkpoints" / f"iter-{iteration:03d}.spec.yaml"

    # --------------------------------------------------------------- creation
    def create(self, config_yaml: str) -> None:
        """Start a new run here; refuses a directory that already holds a run."""
        if self.state_path.exists() or self.config_path.exists():
            raise RunDirError(
                f"{self.path} already holds a run; resume it with --resume {self.path} or choose another --out"
            )
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, config_yaml)

    def require_existing(self) -> None:
        if not self.config_path.is_file():
            raise RunDirError(f"{self.path}: not a run directory (no config.yaml)")

    # ------------------------------------------------------------------ state
    def read_state(self) -> dict[str, Any] | None:
        """The last committed state, or None before the base is committed."""
        if not self.state_path.exists():
            return None
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise RunDirError(f"{self.state_path}: unreadable run state ({error})") from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise RunDirError(f"{self.state_path}: not a netadapt run state of version {STATE_VERSION}")
        return state

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write_text(self.state_path, json.dumps({"version": STATE_VERSION, **state}, indent=2) + "\n")

    # ---------------------------------------------------------------- history
    def read_history(self) -> pd.DataFrame:
        if not self.history_path.exists():
            return pd.DataFrame(columns=HISTORY_COLUMNS)
        try:
            frame = pd.read_csv(self.history_path, keep_default_na=False, na_values=[""])
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise RunDirError(f"{self.history_path}: corrupt history ({error})") from None
        missing = [c for c in HISTORY_COLUMNS if c not in frame.columns]
        if missing:
            raise RunDirError(f"{self.history_path}: missing columns {missing}")
        return frame[HISTORY_COLUMNS]

    def write_history(self, frame: pd.DataFrame) -> None:
        buffer = io.StringIO()
        frame.reindex(columns=HISTORY_COLUMNS).to_csv(buffer, index=False)
        atomic_write_text(self.history_path, buffer.getvalue())

    def append_history(
        self, rows: list[dict[str, Any]], keep_through_iteration: int | None = None, drop_final: bool = False
    ) -> None:
        """Rewrite history.csv with `rows` appended.

        Args:
            rows: new rows (keys from HISTORY_COLUMNS).
            keep_through_iteration: drop existing rows of later iterations first
                (left over from an iteration that was killed before its commit).
            drop_final: drop existing rows of kind "final" first.
        """
        frame = self.read_history()
        if keep_through_iteration is not None and len(frame):
            frame = frame[frame["iteration"].astype(int) <= keep_through_iteration]
        if drop_final and len(frame):
            frame = frame[frame["kind"] != "final"]
        if rows:
            new = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
            frame = new if frame.empty else pd.concat([frame, new], ignore_index=True)
        self.write_history(frame)

    def iteration_networks(self) -> list[IterationNetwork]:
        """The base and every completed iteration's network, in order, with the run's own figures.

        Raises:
            RunDirError: the directory is not a run (no config.yaml or
                history.csv), or a committed iteration's spec file is missing.
        """
        if not self.config_path.is_file() or not self.history_path.is_file():
            raise RunDirError(f"{self.path}: not a run directory (needs config.yaml and history.csv from netadapt search)")
        frame = self.read_history()
        rows = frame[frame["kind"].isin(["base", "iteration"]) & (frame["status"] == "done")]
        networks = []
        for row in rows.itertuples():
            iteration = int(row.iteration)
            spec_path = self.spec_path(iteration)
            try:
                spec = NetSpec.load(spec_path)
            except FileNotFoundError:
                raise RunDirError(f"{spec_path}: missing; iteration {iteration} of {self.path} cannot be checked") from None
            except ValueError as error:
                raise RunDirError(str(error)) from None
            table = float(row.table_predicted_ms) if not pd.isna(row.table_predicted_ms) else math.nan
            steady = float(row.steady_ms) if not pd.isna(row.steady_ms) else math.nan
            networks.append(IterationNetwork(iteration, spec, float(row.predicted_ms), table, float(row.measured_ms),
                                             steady))
        if not networks:
            raise RunDirError(f"{self.path}: history.csv has no committed base or iteration yet")
        return networks

    # -------------------------------------------------------------------- log
    def logger(self, name: str = "netadapt.search") -> logging.Logger:
        """A logger that appends to search.log (one handler per run directory)."""
        logger = logging.getLogger(f"{name}.{self.path.resolve()}")
        logger.setLevel(logging.INFO)
        logger.propagate = False
        if not logger.handlers:
            self.path.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(self.log_path)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
        return logger
