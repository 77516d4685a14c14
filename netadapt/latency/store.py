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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mobilenetv3.fileio import atomic_write_text
from netadapt.errors import LatencyTableError
from netadapt.latency.units import Unit

__all__ = ["COLUMNS", "FORMAT", "STAT_COLUMNS", "VERSION", "TableFile", "read_table", "table_filename", "write_table"]

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
    """Parse and verify a table file; any damage raises LatencyTableError naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise LatencyTableError(f"{path}: cannot read the latency table ({error})") from None
    first, _, body = text.partition("\n")
    try:
        if not first.startswith("# "):
            raise ValueError("no header line")
        header = json.loads(first[2:])
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        if header.get("version") != VERSION:
            raise ValueError(f"format version {header.get('version')!r}, this netadapt reads {VERSION}")
        if not isinstance(header.get("fingerprint"), dict):
            raise ValueError("header has no fingerprint")
        if not isinstance(header.get("corrections", {}), dict) or not isinstance(header.get("references", []), list):
            raise ValueError("header's corrections or references are malformed")
    except (ValueError, json.JSONDecodeError) as error:
        raise LatencyTableError(f"{path}: not a valid latency table ({error}); delete it or point --table elsewhere") from None
    if hashlib.sha256(body.encode("utf-8")).hexdigest() != header.get("sha256"):
        raise LatencyTableError(
            f"{path}: the latency table is truncated or corrupt (checksum mismatch); "
            "delete it and rebuild with `netadapt lut build`"
        )
    try:
        frame = pd.read_csv(io.StringIO(body), keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as error:
        raise LatencyTableError(f"{path}: the latency table's rows cannot be parsed ({error})") from None
    if list(frame.columns) != COLUMNS or len(frame) != header.get("rows"):
        raise LatencyTableError(f"{path}: the latency table's columns or row count do not match its header; rebuild it")
    for reference in header.get("references", []):
        if not isinstance(reference, dict) or not isinstance(reference.get("unit"), dict) \
                or not isinstance(reference.get("figures"), dict):
            raise LatencyTableError(f"{path}: a reference unit in the header is malformed ({reference!r}); rebuild the table")
    return TableFile(
        fingerprint=header["fingerprint"],
        corrections=header.get("corrections", {}),
        references=header.get("references", []),
        entries={row["key"]: row for row in frame.to_dict("records")},
    )
