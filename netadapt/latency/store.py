"""The latency table's file: read, write, merge and checksum.

One CSV file per target: a JSON header line (after "# ") with the format,
version, the target's fingerprint, the fitted corrections, the reference
units and their figures, the row count and a SHA-256 of the body, then one
row per unit. Files are replaced atomically, so a killed build keeps the
previous complete file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from netadapt.io import InputError, atomic_write_text, load_json, read_text
from netadapt.cache import cache_dir
from netadapt.errors import LatencyTableError, quote
from netadapt.latency.correction import Correction
from netadapt.latency.units import UNIT_KINDS, Unit
from netadapt.types import STATISTICS

__all__ = ["COLUMNS", "FORMAT", "STAT_COLUMNS", "VERSION", "TableFile", "default_table_path", "read_table", "table_filename",
           "table_path", "write_table"]

FORMAT = "netadapt-lut"
# 2: entries carry quiet_ms (the lowest round median); 3: and min_ms (the fastest run);
# 4: entries are normalised by reference units measured in the same batch (`gauge`).
VERSION = 4
UNIT_COLUMNS = [f.name for f in dataclasses.fields(Unit)]
# The figures of an entry, already divided by `gauge`: the machine's speed in
# that batch relative to the table's reference state (1.0: as at creation).
STAT_COLUMNS = ["quiet_ms", "min_ms", "median_ms", "p10_ms", "p90_ms", "mean_ms", "cv", "runs", "gauge"]
COLUMNS = ["key", *UNIT_COLUMNS, *STAT_COLUMNS]


@dataclass
class TableFile:
    """What a table file holds: header fields and the rows (key -> row dict with COLUMNS)."""

    fingerprint: dict[str, Any]
    corrections: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> Correction fields
    references: list[dict[str, Any]] = field(default_factory=list)  # {"unit": Unit fields, "figures": {stat: ms}}
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)


def default_table_path(fingerprint: dict[str, Any]) -> Path:
    """<cache>/luts/<table_filename>: one file per target, which `search` and `lut` share."""
    return cache_dir() / "luts" / table_filename(fingerprint)


def table_path(configured: str | None, fingerprint: dict[str, Any]) -> Path:
    """The table a search or `lut` command uses: `lut.table` where set, else the target's default."""
    return Path(configured) if configured else default_table_path(fingerprint)


def table_filename(fingerprint: dict[str, Any]) -> str:
    """A file name unique to a target and format: `lut-v<VERSION>-<12 hex digits of the fingerprint's hash>.csv`.

    The version is in the name so that a cached table of an older format is
    left alone (and a new one built) rather than refused by `netadapt search`.
    """
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode("utf-8")).hexdigest()[:12]
    return f"lut-v{VERSION}-{digest}.csv"


def write_table(path: Path, table: TableFile) -> None:
    """Write `table` to `path` atomically: a kill leaves the old file or the new one."""
    frame = pd.DataFrame([table.entries[k] for k in sorted(table.entries)], columns=COLUMNS)
    body = frame.to_csv(index=False, lineterminator="\n", float_format="%.6g")
    header = {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": table.fingerprint,
        "corrections": dict(sorted(table.corrections.items())),
        "references": table.references,
        "rows": len(frame),
        "sha256": hashlib.sha256(body.encode("utf-8")).hexdigest(),
    }
    atomic_write_text(Path(path), "# " + json.dumps(header, sort_keys=True) + "\n" + body)


def read_table(path: Path) -> TableFile:
    """Parse and verify a table file: its header, checksum and every value.

    Raises:
        LatencyTableError: the file is unreadable, of another format or
            version, truncated or edited (checksum), or a value is out of
            place: a latency not finite and positive, a correction not a
            mapping of finite numbers, a key given twice, a row whose key does
            not spell its unit. The message names the file, and the row and
            column or the header field.
    """
    try:
        text = read_text(path)
    except (OSError, InputError) as error:
        reason = str(error).removeprefix(f"{path}: ")  # the path starts our message already
        raise LatencyTableError(f"{path}: cannot read the latency table ({reason})") from None
    first, _, body = text.partition("\n")
    try:
        if not first.startswith("# "):
            raise ValueError("no header line")
        header = load_json(first[2:], "header")
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        if header.get("version") != VERSION:
            raise ValueError(f"format version {quote(header.get('version'))}, this netadapt reads {VERSION}")
        if not isinstance(header.get("fingerprint"), dict):
            raise ValueError("header has no fingerprint")
        if not isinstance(header.get("corrections", {}), dict) or not isinstance(header.get("references", []), list):
            raise ValueError("header's corrections or references are malformed")
    except ValueError as error:  # InputError (the JSON) included
        raise LatencyTableError(f"{path}: not a valid latency table ({error}); delete it or point --table elsewhere") from None
    if hashlib.sha256(body.encode("utf-8")).hexdigest() != header.get("sha256"):
        raise LatencyTableError(
            f"{path}: the latency table is truncated or corrupt (checksum mismatch); "
            "delete it and rebuild with `netadapt lut build`"
        )
    try:
        # Every cell as text: each column is converted and checked below, so a cell of the
        # wrong kind is named rather than silently turning its whole column into text.
        frame = pd.read_csv(io.StringIO(body), keep_default_na=False, dtype=str)
    except (ValueError, pd.errors.ParserError) as error:
        raise LatencyTableError(f"{path}: the latency table's rows cannot be parsed ({quote(str(error), 200)})") from None
    if list(frame.columns) != COLUMNS or len(frame) != header.get("rows"):
        raise LatencyTableError(f"{path}: the latency table's columns or row count do not match its header; rebuild it")
    return TableFile(
        fingerprint=header["fingerprint"],
        corrections=_checked_corrections(path, header.get("corrections", {})),
        references=_checked_references(path, header.get("references", [])),
        entries=_checked_entries(path, frame),
    )


# ------------------------------------------------------------- value checks
_REBUILD = "rebuild the table (netadapt lut build --rebuild) or delete it"
# Each entry column's kind and the values it allows; a unit field's kind is its type in `Unit`.
_UNIT_TYPES = {f.name: f.type if isinstance(f.type, str) else f.type.__name__ for f in dataclasses.fields(Unit)}
_INT_MAX = 2**31 - 1  # far above any size or run count, and below where int64 conversion could overflow
_AT_LEAST_ONE = {"height", "width", "in_channels", "out"}  # sizes; the other integers may be 0 (not used by a kind)
_POSITIVE = {"quiet_ms", "min_ms", "median_ms", "p10_ms", "p90_ms", "mean_ms", "gauge"}  # times and ratios of times


def _bad_cell(path: Path, frame: pd.DataFrame, index: int, column: str, wanted: str) -> LatencyTableError:
    # Row 1 is the body's first row: line 3 of the file, after the header and the column names.
    key = frame["key"].iloc[index]
    return LatencyTableError(f"{path}: row {index + 1} (line {index + 3}, key {quote(key)}), column {column}: "
                             f"expected {wanted}, got {quote(frame[column].iloc[index])}; {_REBUILD}")


def _checked_entries(path: Path, frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The rows of `frame` (all text) converted to their kinds and checked, by key."""
    columns: dict[str, Any] = {}
    for column in COLUMNS:
        cells = frame[column]
        kind = _UNIT_TYPES.get(column, "int" if column == "runs" else "str" if column == "key" else "float")
        if kind == "str":
            bad = cells.str.len() == 0 if column == "key" else pd.Series(False, index=cells.index)
            wanted, values = "a unit key", cells
            if column == "kind":
                bad, wanted = ~cells.isin(UNIT_KINDS), f"one of {list(UNIT_KINDS)}"
            elif column == "activation":
                bad, wanted = ~cells.isin(["", "relu", "hardswish"]), "relu, hardswish or empty"
        elif kind == "bool":
            lowered = cells.str.strip().str.lower()
            bad, wanted, values = ~lowered.isin(["true", "false"]), "True or False", lowered == "true"
        else:
            numbers = pd.to_numeric(cells, errors="coerce")
            finite = numbers.notna() & np.isfinite(numbers.astype(float))
            if kind == "int":
                low = 1 if column in _AT_LEAST_ONE or column == "runs" else 0
                bad = ~finite | (numbers % 1 != 0) | (numbers < low) | (numbers > _INT_MAX)
                wanted = f"an integer in [{low}, {_INT_MAX}]"
                values = numbers.where(~bad, 0).astype("int64")
            elif column in _POSITIVE:
                bad, wanted, values = ~finite | ~(numbers > 0), "a finite positive number", numbers.astype(float)
            else:  # cv: a spread, 0 when every run took the same time
                bad, wanted, values = ~finite | ~(numbers >= 0), "a finite number >= 0", numbers.astype(float)
        if bad.any():
            raise _bad_cell(path, frame, int(np.flatnonzero(bad.to_numpy())[0]), column, wanted)
        columns[column] = values
    checked = pd.DataFrame(columns)
    duplicated = checked["key"].duplicated(keep="first")
    if duplicated.any():
        index = int(np.flatnonzero(duplicated.to_numpy())[0])
        first = int(np.flatnonzero((checked["key"] == checked["key"].iloc[index]).to_numpy())[0])
        raise LatencyTableError(f"{path}: row {index + 1} (line {index + 3}) repeats the key of row {first + 1}, "
                                f"{quote(checked['key'].iloc[index])}; each unit has one entry; {_REBUILD}")
    entries = {}
    for index, row in enumerate(checked.to_dict("records")):
        unit = Unit(**{name: row[name] for name in UNIT_COLUMNS})
        if unit.key() != row["key"]:
            raise LatencyTableError(f"{path}: row {index + 1} (line {index + 3}), column key: {quote(row['key'])} "
                                    f"does not name the row's unit ({quote(unit.key())}); {_REBUILD}")
        entries[row["key"]] = row
    return entries


def _finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _checked_corrections(path: Path, corrections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The header's corrections, each a mapping of `Correction`'s fields to finite numbers."""
    fields = {f.name: f for f in dataclasses.fields(Correction)}
    required = {name for name, f in fields.items() if f.default is dataclasses.MISSING}
    checked = {}
    for key, value in corrections.items():
        where = f"{path}: header field corrections[{quote(key)}]"
        if not isinstance(value, dict):
            raise LatencyTableError(f"{where}: expected a mapping of {sorted(fields)}, got {quote(value)}; {_REBUILD}")
        unknown, missing = sorted(set(value) - set(fields)), sorted(required - set(value))
        if unknown:
            raise LatencyTableError(f"{where}: unknown field(s) {quote(unknown)}; a correction has {sorted(fields)}; "
                                    f"{_REBUILD}")
        if missing:
            raise LatencyTableError(f"{where}: missing field(s) {missing}; {_REBUILD}")
        for name, number in value.items():
            integer = name in ("samples", "units")
            low = 1 if name == "samples" else 0
            # The scale multiplies every unit sum: a fit over whole networks never gives one <= 0.
            if not _finite(number) or (integer and (number % 1 != 0 or number < low)) \
                    or (name == "rms_error" and number < 0) or (name == "scale" and number <= 0):
                wanted = (f"an integer >= {low}" if integer else "a finite number"
                          + (" >= 0" if name == "rms_error" else " > 0" if name == "scale" else ""))
                raise LatencyTableError(f"{where}: {name} must be {wanted}, got {quote(number)}; {_REBUILD}")
        checked[key] = {name: int(number) if name in ("samples", "units") else float(number)
                        for name, number in value.items()}
    return checked


def _checked_references(path: Path, references: list[Any]) -> list[dict[str, Any]]:
    """The header's reference units: each {"unit": Unit fields, "figures": {statistic: positive ms}}."""
    for index, reference in enumerate(references):
        where = f"{path}: header field references[{index}]"
        if not isinstance(reference, dict) or set(reference) != {"unit", "figures"} \
                or not isinstance(reference["unit"], dict) or not isinstance(reference["figures"], dict):
            raise LatencyTableError(f"{where}: expected {{'unit': {{...}}, 'figures': {{...}}}}, "
                                    f"got {quote(reference)}; {_REBUILD}")
        unit, figures = reference["unit"], reference["figures"]
        if set(unit) != set(_UNIT_TYPES):
            raise LatencyTableError(f"{where}: unit must have the fields {sorted(_UNIT_TYPES)}, got {quote(unit)}; "
                                    f"{_REBUILD}")
        for name, kind in _UNIT_TYPES.items():
            value = unit[name]
            fits = {"bool": isinstance(value, bool), "str": isinstance(value, str),
                    "int": _finite(value) and value % 1 == 0 and (1 if name in _AT_LEAST_ONE else 0) <= value <= _INT_MAX,
                    }[kind]
            if not fits or (name == "kind" and value not in UNIT_KINDS):
                raise LatencyTableError(f"{where}: unit field {name} must be a valid {kind}, got {quote(value)}; "
                                        f"{_REBUILD}")
        if figures and set(figures) != set(STATISTICS):
            raise LatencyTableError(f"{where}: figures must give {list(STATISTICS)}, got {quote(sorted(figures))}; "
                                    f"{_REBUILD}")
        for statistic, figure in figures.items():
            if not _finite(figure) or figure <= 0:
                raise LatencyTableError(f"{where}: figures[{quote(statistic)}] must be a finite positive number of "
                                        f"ms, got {quote(figure)}; {_REBUILD}")
    return references
