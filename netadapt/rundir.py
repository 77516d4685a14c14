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

import dataclasses
import io
import json
import logging
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mobilenetv3 import NetSpec
from netadapt.io import InputError, atomic_write_text, load_json, read_text
from netadapt.errors import RunDirError, quote

__all__ = ["HISTORY_COLUMNS", "HistoryRow", "IterationNetwork", "RunDir", "SearchState"]

@dataclass(frozen=True)
class HistoryRow:
    """One row of history.csv: a candidate (kind=candidate, control) or an iteration's outcome
    (kind=base, iteration, final). Its fields, in order, are the file's columns; a field left
    None is an empty cell. Times are seconds."""

    iteration: int
    kind: str  # base | candidate | control (the current network, fine-tuned as the candidates) | iteration | final
    group: str | None = None  # the proposal: a channel group, remove[i] (a depth proposal) or control
    width_before: int | None = None
    width_after: int | None = None
    status: str | None = None  # ok | chosen | failed | skipped | screened_out | done
    reason: str | None = None
    target_ms: float | None = None  # the iteration's latency target L_i (calibrated scale)
    predicted_ms: float | None = None  # calibrated prediction: the table's times the online calibration (what the search used)
    table_predicted_ms: float | None = None  # the table's own prediction (its correction, no online calibration)
    measured_ms: float | None = None  # whole network on the target: best of measure.repeats passes
    base_measured_ms: float | None = None  # the base, measured in the same interleaved passes
    ratio_to_base: float | None = None  # median over those passes of network / base: drift cancels
    steady_ms: float | None = None  # ratio_to_base times the base's median figure so far: what calibrates the next predictions
    measured_spread_pct: float | None = None  # (slowest - fastest) / fastest pass of measured_ms
    budget_margin_pct: float | None = None  # how far under (+) or over (-) the budget the stop test found it
    holdout_acc: float | None = None
    holdout_loss: float | None = None  # mean cross-entropy on the holdout
    prescreen_acc: float | None = None  # the prescreen's score: after surgery and BatchNorm recalibration, no fine-tune
    prescreen_loss: float | None = None
    test_acc: float | None = None
    seed: int | None = None
    predict_s: float | None = None  # lookup-table predictions for the width choice (without lut_measure_s)
    lut_measure_s: float | None = None  # measuring table entries the width choice needed and the table lacked
    surgery_s: float | None = None
    finetune_s: float | None = None
    eval_s: float | None = None
    export_s: float | None = None
    measure_s: float | None = None
    checkpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


HISTORY_COLUMNS = [f.name for f in dataclasses.fields(HistoryRow)]
HISTORY_KINDS = ("base", "candidate", "control", "iteration", "final")
_HISTORY_TYPES = typing.get_type_hints(HistoryRow)

STATE_VERSION = 1


@dataclass(frozen=True)
class SearchState:
    """state.json: where a search stands after its last commit, enough to resume it.

    Read back with every field type-checked (`from_dict`), so a damaged or
    hand-edited file is refused naming the file and the field, never used.
    """

    iteration: int  # the last committed iteration (0: the base)
    base_ms: float  # the base's figure at the start: the reference of a ratio budget
    base_predicted_ms: float  # the table's prediction of the base
    budget_ms: float
    measured_ms: float  # the current network's figure
    predicted_ms: float  # its calibrated prediction
    holdout_acc: float
    finished: bool = False
    stop_reason: str | None = None
    base_figures: tuple[float, ...] = ()  # the base's figure at the start and beside every winner
    holdout_loss: float | None = None
    # The reason, when the committed iteration met the budget: a run killed before its end was
    # recorded then finishes on resume instead of cutting again.
    budget_met: str | None = None
    calibration: tuple[tuple[float, float], ...] = ()  # the online calibration's (table ms, measured ms) points

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["base_figures"] = list(self.base_figures)
        data["calibration"] = [list(point) for point in self.calibration]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "state.json") -> "SearchState":
        """Check every field's type and range; `where` (the file) starts every message.

        Raises:
            RunDirError: a missing, unknown or malformed field, named.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise RunDirError(f"{where}: unknown field(s) {quote(unknown)}; a netadapt run state has {sorted(fields)}")
        missing = sorted(name for name, f in fields.items() if f.default is dataclasses.MISSING and name not in data)
        if missing:
            raise RunDirError(f"{where}: missing field(s) {missing}")

        def number(name: str, positive: bool = True) -> float:
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value) \
                    or (positive and value <= 0):
                raise RunDirError(f"{where}: {name} must be a finite {'positive ' if positive else ''}number, "
                                  f"got {quote(value)}")
            return float(value)

        def text(name: str) -> str | None:
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise RunDirError(f"{where}: {name} must be text or null, got {quote(value)}")
            return value

        iteration = data["iteration"]
        if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
            raise RunDirError(f"{where}: iteration must be an integer >= 0, got {quote(iteration)}")
        finished = data.get("finished", False)
        if not isinstance(finished, bool):
            raise RunDirError(f"{where}: finished must be true or false, got {quote(finished)}")
        accuracy = number("holdout_acc", positive=False)
        if not 0 <= accuracy <= 1:
            raise RunDirError(f"{where}: holdout_acc must be in [0, 1], got {quote(accuracy)}")
        loss = None if data.get("holdout_loss") is None else number("holdout_loss", positive=False)
        figures = data.get("base_figures", [])
        points = data.get("calibration", [])
        if not isinstance(figures, list) or not all(_positive(v) for v in figures):
            raise RunDirError(f"{where}: base_figures must be a list of finite positive numbers, got {quote(figures)}")
        if not isinstance(points, list) or not all(isinstance(p, list) and len(p) == 2 and all(map(_positive, p))
                                                   for p in points):
            raise RunDirError(f"{where}: calibration must be a list of [table ms, measured ms] pairs of finite "
                              f"positive numbers, got {quote(points)}")
        return cls(
            iteration=iteration, base_ms=number("base_ms"), base_predicted_ms=number("base_predicted_ms"),
            budget_ms=number("budget_ms"), measured_ms=number("measured_ms"), predicted_ms=number("predicted_ms"),
            holdout_acc=accuracy, finished=finished, stop_reason=text("stop_reason"),
            base_figures=tuple(float(v) for v in figures), holdout_loss=loss, budget_met=text("budget_met"),
            calibration=tuple((float(a), float(b)) for a, b in points),
        )


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and _finite(value) and value > 0


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


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

    def confirm_target(self, device: str, token_file: str | None, confirmed: str | None) -> None:
        """Refuse a remote `device` read from this run's config.yaml unless `confirmed` names the same one.

        A run directory may come from someone else, and a remote target is where
        the device token (`token_file`'s contents, or NETADAPT_DEVICE_TOKEN) is
        sent: the person at the keyboard, not the file, chooses that (`--target`).

        Raises:
            RunDirError: `device` is remote and `confirmed` is None or another device.
        """
        if not device.startswith("remote://") or confirmed == device:
            return
        token = f"the token from {quote(token_file)}" if token_file else "the token from NETADAPT_DEVICE_TOKEN"
        if confirmed is None:
            raise RunDirError(
                f"{self.config_path}: target.device is {quote(device)}, so {token} would be sent there; a run "
                f"directory's config does not choose that. If it is your device, confirm it with --target {quote(device)}")
        raise RunDirError(
            f"{self.config_path}: target.device is {quote(device)}, but --target names {quote(confirmed)}; a run is "
            f"measured on the device it was searched on (its table is keyed by that device's fingerprint)")

    # ------------------------------------------------------------------ state
    def read_state(self) -> SearchState | None:
        """The last committed state, or None before the base is committed.

        Raises:
            RunDirError: the file is unreadable, not JSON, of another version, or a field is malformed.
        """
        if not self.state_path.exists():
            return None
        try:
            state = load_json(read_text(self.state_path), str(self.state_path))
        except (OSError, InputError) as error:
            reason = str(error).removeprefix(f"{self.state_path}: ")  # the path starts our message already
            raise RunDirError(f"{self.state_path}: unreadable run state ({reason})") from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise RunDirError(f"{self.state_path}: not a netadapt run state of version {STATE_VERSION}")
        return SearchState.from_dict({k: v for k, v in state.items() if k != "version"}, str(self.state_path))

    def write_state(self, state: SearchState) -> None:
        atomic_write_text(self.state_path,
                          json.dumps({"version": STATE_VERSION, **state.to_dict()}, indent=2) + "\n")

    # ---------------------------------------------------------------- history
    def read_history(self) -> pd.DataFrame:
        """history.csv with every cell type-checked against `HistoryRow` (an empty cell is NaN).

        Raises:
            RunDirError: the file is unreadable or not CSV, lacks a column, or a
                cell is not of its column's type (named by row and column).
        """
        if not self.history_path.exists():
            return pd.DataFrame(columns=HISTORY_COLUMNS)
        try:
            # Every cell as text: each column is converted and checked below, by name.
            frame = pd.read_csv(self.history_path, keep_default_na=False, na_values=[""], dtype=str)
        except (OSError, ValueError) as error:  # pandas' parser errors and UnicodeDecodeError are ValueErrors
            raise RunDirError(f"{self.history_path}: corrupt history ({quote(str(error), 200)})") from None
        missing = [c for c in HISTORY_COLUMNS if c not in frame.columns]
        if missing:
            raise RunDirError(f"{self.history_path}: missing columns {missing}")
        return _checked_history(self.history_path, frame[HISTORY_COLUMNS])

    def write_history(self, frame: pd.DataFrame) -> None:
        buffer = io.StringIO()
        frame.reindex(columns=HISTORY_COLUMNS).to_csv(buffer, index=False)
        atomic_write_text(self.history_path, buffer.getvalue())

    def append_history(
        self, rows: list[HistoryRow], keep_through_iteration: int | None = None, drop_final: bool = False
    ) -> None:
        """Rewrite history.csv with `rows` appended.

        Args:
            rows: new rows.
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
            new = pd.DataFrame([row.to_dict() for row in rows], columns=HISTORY_COLUMNS)
            frame = new if frame.empty else pd.concat([frame, new], ignore_index=True)
        self.write_history(frame)

    def read_spec(self, iteration: int) -> NetSpec:
        """The spec file of committed iteration `iteration` (0: the base).

        Raises:
            RunDirError: the file is missing, unreadable or not a valid spec.
        """
        path = self.spec_path(iteration)
        try:
            return NetSpec.load(path)
        except FileNotFoundError:
            raise RunDirError(f"{path}: missing; iteration {iteration} of {self.path} cannot be read") from None
        except ValueError as error:
            raise RunDirError(str(error)) from None

    def checkpoint_file(self, row: Any) -> Path:
        """The checkpoint that `row` (of `read_history().itertuples()`) names: a file inside the run directory.

        A run directory is copied and shared, so its history is input: a name
        that is absolute or climbs out with ".." is refused, never followed.

        Raises:
            RunDirError: the cell is empty, leads outside the directory, or names no file.
        """
        name = row.checkpoint
        where = f"{self.history_path}: row {row.Index + 1}, column checkpoint"
        if not isinstance(name, str) or not name:
            raise RunDirError(f"{where}: empty; iteration {row.iteration} names no checkpoint")
        path = Path(name)
        try:
            root = self.path.resolve()
            if path.is_absolute() or not (root / path).resolve().is_relative_to(root):
                raise RunDirError(f"{where}: {quote(name)} is outside the run directory; checkpoints are named "
                                  "relative to it, e.g. checkpoints/iter-001.pt")
            present = (self.path / path).is_file()
        except (OSError, ValueError) as error:  # a name too long for the file system, a NUL byte, no permission
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise RunDirError(f"{where}: {quote(name)} cannot be looked up ({quote(reason)})") from None
        if not present:
            raise RunDirError(f"{where}: {quote(name)} is missing from {self.path}")
        return self.path / path

    def committed_number(self, row: Any, column: str) -> float:
        """`row`'s `column` (a row of `read_history().itertuples()`, of a committed base or iteration), as a float.

        Raises:
            RunDirError: the cell is empty: a committed row always has it.
        """
        value = getattr(row, column)
        if pd.isna(value):
            raise RunDirError(f"{self.history_path}: row {row.Index + 1}, column {column}: empty, but iteration "
                              f"{row.iteration} ({row.kind}) was committed with it; the history is damaged")
        return float(value)

    def iteration_networks(self) -> list[IterationNetwork]:
        """The base and every completed iteration's network, in order, with the run's own figures.

        Raises:
            RunDirError: the directory is not a run (no config.yaml or
                history.csv), the history is malformed, or a committed
                iteration's spec file is missing or invalid.
        """
        if not self.config_path.is_file() or not self.history_path.is_file():
            raise RunDirError(f"{self.path}: not a run directory (needs config.yaml and history.csv from netadapt search)")
        frame = self.read_history()
        rows = frame[frame["kind"].isin(["base", "iteration"]) & (frame["status"] == "done")]
        networks = []
        for row in rows.itertuples():
            iteration = int(row.iteration)
            table = float(row.table_predicted_ms) if not pd.isna(row.table_predicted_ms) else math.nan
            steady = float(row.steady_ms) if not pd.isna(row.steady_ms) else math.nan
            networks.append(IterationNetwork(iteration, self.read_spec(iteration),
                                             self.committed_number(row, "predicted_ms"), table,
                                             self.committed_number(row, "measured_ms"), steady))
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


def _history_range_kind(name: str) -> str:
    """Which values a float column of history.csv allows, by what it holds."""
    if name.endswith("_ms") or name == "ratio_to_base":
        return "positive"  # latencies and a ratio of two
    if name.endswith("_acc"):
        return "share"
    if name.endswith("_loss"):
        return "loss"  # a diverged candidate's loss may be infinite
    if name.endswith("_s") or name == "measured_spread_pct":
        return "non-negative"
    return "finite"  # budget_margin_pct: under (+) or over (-) the budget


_HISTORY_RANGE_TEXT = {"positive": "a finite number > 0", "share": "a number in [0, 1]", "loss": "a number >= 0",
                       "non-negative": "a finite number >= 0", "finite": "a finite number"}


def _in_history_range(name: str, numbers: pd.Series) -> pd.Series:
    kind = _history_range_kind(name)
    finite = np.isfinite(numbers)
    return {"positive": finite & (numbers > 0), "share": (numbers >= 0) & (numbers <= 1), "loss": numbers >= 0,
            "non-negative": finite & (numbers >= 0), "finite": finite}[kind]


def _checked_history(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` (all text) with each column converted to its `HistoryRow` type; the first bad cell is named."""
    columns = {}
    for name in HISTORY_COLUMNS:
        hint = _HISTORY_TYPES[name]
        optional = type(None) in typing.get_args(hint)
        kind = next(t for t in (int, float, str) if t is hint or t in typing.get_args(hint))
        cells = frame[name]
        empty = cells.isna()
        if kind is str:
            bad = empty if not optional else pd.Series(False, index=cells.index)
            wanted, values = "text", cells
            if name == "kind":
                bad, wanted = ~cells.isin(HISTORY_KINDS), f"one of {list(HISTORY_KINDS)}"
        else:
            numbers = pd.to_numeric(cells, errors="coerce")
            bad = numbers.isna() & ~empty  # text that is no number
            if not optional:
                bad |= empty
            wanted = "a number" if kind is float else "an integer"
            if kind is int:
                # Whole and well within int64: no iteration, width or seed comes near 2**53.
                bad |= numbers.notna() & (~np.isfinite(numbers.astype(float)) | (numbers % 1 != 0)
                                          | (numbers.abs() > 2**53))
                if name == "iteration":
                    bad |= numbers < 0
                    wanted = "an integer >= 0"
            if kind is float:
                bad |= numbers.notna() & ~_in_history_range(name, numbers.astype(float))
                wanted = _HISTORY_RANGE_TEXT.get(_history_range_kind(name), wanted)
            values = numbers.astype(float)
            if kind is int and not (bad | numbers.isna()).any():
                values = numbers.astype("int64")  # as pandas reads a column of whole numbers; with an empty cell, floats
        if bad.any():
            index = int(np.flatnonzero(bad.to_numpy())[0])
            got = "an empty cell" if pd.isna(cells.iloc[index]) else quote(cells.iloc[index])
            raise RunDirError(f"{path}: row {index + 1} (line {index + 2}), column {name}: expected {wanted}, "
                              f"got {got}")
        columns[name] = values
    return pd.DataFrame(columns, index=frame.index)
