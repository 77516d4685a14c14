"""What a device server accepts: the limits an operator sets with flags, and the caps on client settings.

`netadapt device serve` takes every limit from one `ServerLimits`; the CLI
reads its defaults from here (this module imports nothing heavy, so building
the command-line parser does not load onnxruntime). Every field is checked
when the record is made, so a server never starts with a limit it cannot
enforce: a NaN upload timeout, for one, gave a server whose every connection
failed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from netadapt.errors import ConfigError
from netadapt.types import PRIORITIES

__all__ = ["MAX_UPLOAD_MB", "MAX_TIMEOUT_S", "ServerLimits", "parse_priorities"]

# A protobuf message, and so a serialised ONNX model, cannot exceed 2 GiB.
MAX_UPLOAD_MB = 2047.0
MAX_TIMEOUT_S = 86_400.0  # a day: longer is a typo, not a measurement
_MAX_BUFFERED_MB = 2.0**20  # 1 TiB; only a sanity bound
_MAX_CONNECTIONS = 10_000


@dataclass(frozen=True)
class ServerLimits:
    """The device server's limits; each flag's default is the field's.

    Args:
        max_upload_mb: ``--max-upload-mb``: a larger upload gets 413 before its body is read.
        max_buffered_mb: ``--max-buffered-mb``: uploads held in memory at once, all
            connections together; over it an upload gets 503. None: twice `max_upload_mb`.
        upload_timeout_s: ``--upload-timeout``: a request's headers and body must both
            arrive within this many seconds of connecting.
        measure_timeout_s: ``--measure-timeout``: validating and measuring one model may
            take this long; then the measurement is killed and the client gets 504.
        max_connections: ``--max-connections``: open connections at once; at the cap the
            oldest unauthenticated one is dropped, or a new one refused if none is.
        max_input_mb: ``--max-input-mb``: the model's declared input tensor (batch
            included) may take this much memory in float32; a larger one gets 400
            before any session is built.
        allow_priority: ``--allow-priority``: the `measure.priority` levels a client may ask for.
        max_threads: cap on the `threads` and `inter_op_threads` settings.
        max_runs: cap on the `min_runs` and `max_runs` settings.
        max_warmup_runs: cap on the `warmup_runs` setting.
        max_windows: cap on the `windows` setting.
        max_batch: cap on the `batch` setting.

    Raises:
        ConfigError: naming the flag, for a value that is not finite, not positive or absurd.
    """

    max_upload_mb: float = 256.0  # MobileNetV3-Large is ~22 MB in fp32; leaves room for larger nets
    max_buffered_mb: float | None = None
    # Covers a 256 MB upload at 20 Mbit/s; a trickling client is dropped when it runs out.
    upload_timeout_s: float = 120.0
    # A whole MobileNetV3-Large session with the default runs takes seconds even on a small board.
    measure_timeout_s: float = 120.0
    max_connections: int = 64
    # The input is allocated before the first run: a declared 1x3x65536x65536 would take 48 GiB.
    # 1 GiB leaves room for the largest batch (1,024) of 224-px images (588 MiB).
    max_input_mb: float = 1024.0
    # "realtime" (SCHED_FIFO as root) lets a runaway model starve everything else on the device.
    allow_priority: tuple[str, ...] = ("normal", "high")
    # Caps on client settings: far above any sensible measurement, there to refuse absurd ones up front.
    max_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_runs: int = 1_000_000
    max_warmup_runs: int = 10_000
    max_windows: int = 1_000
    max_batch: int = 1_024

    def __post_init__(self) -> None:
        _require_number("--max-upload-mb", self.max_upload_mb, MAX_UPLOAD_MB, "MB (a protobuf's limit)")
        if self.max_buffered_mb is not None:
            _require_number("--max-buffered-mb", self.max_buffered_mb, _MAX_BUFFERED_MB, "MB")
            if self.max_buffered_mb < self.max_upload_mb:
                raise ConfigError(
                    f"--max-buffered-mb {self.max_buffered_mb:g} is below --max-upload-mb {self.max_upload_mb:g}: "
                    "no upload of the largest allowed size could ever be accepted"
                )
        _require_number("--upload-timeout", self.upload_timeout_s, MAX_TIMEOUT_S, "s")
        _require_number("--measure-timeout", self.measure_timeout_s, MAX_TIMEOUT_S, "s")
        _require_integer("--max-connections", self.max_connections, _MAX_CONNECTIONS)
        _require_number("--max-input-mb", self.max_input_mb, _MAX_BUFFERED_MB, "MB")
        for name in ("max_threads", "max_runs", "max_warmup_runs", "max_windows", "max_batch"):
            _require_integer(f"ServerLimits.{name}", getattr(self, name), 2**31 - 1)
        if not self.allow_priority:
            raise ConfigError(f"--allow-priority needs at least one of {list(PRIORITIES)}")
        unknown = [p for p in self.allow_priority if p not in PRIORITIES]
        if unknown:
            raise ConfigError(f"--allow-priority: unknown level(s) {unknown}; valid levels are {list(PRIORITIES)}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def max_input_bytes(self) -> int:
        return int(self.max_input_mb * 2**20)

    @property
    def max_buffered_bytes(self) -> int:
        megabytes = 2 * self.max_upload_mb if self.max_buffered_mb is None else self.max_buffered_mb
        return int(megabytes * 2**20)


def parse_priorities(text: str) -> tuple[str, ...]:
    """``--allow-priority normal,high`` -> ("normal", "high"); the names are checked by `ServerLimits`."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _require_number(flag: str, value: Any, maximum: float, unit: str) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not 0 < value <= maximum:
        raise ConfigError(f"{flag} must be a finite number above 0 and at most {maximum:g} {unit}, got {value!r}")


def _require_integer(flag: str, value: Any, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ConfigError(f"{flag} must be an integer from 1 to {maximum}, got {value!r}")
