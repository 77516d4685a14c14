"""Latency on a remote device: the client of `netadapt device serve`.

`RemoteMeasurer` is a `Measurer`: the lookup table, `bench` and the search
use it exactly like `LocalMeasurer`, and because its `fingerprint()` is the
device's own, a table built through it is keyed by the device, not by the
machine running the search.

Only the standard library is used (`http.client`). A lost connection, and
a 503 (the device is busy: at its connection cap or holding as many uploads
as it may), is retried with exponential backoff; a refusal (4xx) or a 504
(the measurement overran the device's ``--measure-timeout``) is not,
because sending the same request again cannot change the answer. Every
error answer becomes a `DeviceError` that quotes the device's reason.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode, urlsplit

from netadapt.benchmark import Measurement, Target
from netadapt.device.protocol import HEALTH_PATH, MEASURE_PATH, TOKEN_ENV, load_token, target_settings
from netadapt.errors import ConfigError, DeviceError, quote

__all__ = ["RemoteMeasurer", "parse_device"]

log = logging.getLogger(__name__)

_SCHEME = "remote://"
# Characters of a device's answer quoted in an error: the server's own reasons fit; a hostile
# or broken server's megabyte does not reach the terminal.
REASON_LIMIT = 500

# Keys of the fingerprint that describe the device and session, not the model sent:
# `batch` comes from the model's input (see `RemoteMeasurer.measure`).
_MODEL_KEYS = {"batch"}


def parse_device(device: str, key: str = "target.device") -> tuple[str, tuple[str, int] | None]:
    """Split a device string into its kind and address.

    Args:
        device: "local", or "remote://HOST:PORT" (IPv6 hosts in brackets: remote://[::1]:8765).
        key: where the string came from, for messages.

    Returns:
        ("local", None) or ("remote", (host, port)).

    Raises:
        ConfigError: naming `key`, for anything else.
    """
    if device == "local":
        return "local", None
    hint = f"{key} {device!r}: expected 'local' or 'remote://HOST:PORT', e.g. remote://192.168.1.20:8765"
    if not device.startswith(_SCHEME):
        raise ConfigError(hint)
    parts = urlsplit(device)
    try:
        port = parts.port
    except ValueError:  # out of range or not a number
        raise ConfigError(f"{hint} (the port must be 1-65535)") from None
    if not parts.hostname or port is None or port == 0:
        raise ConfigError(hint)
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{hint} (no path, query or credentials; the token comes from {TOKEN_ENV} or target.token_file)")
    return "remote", (parts.hostname, port)


class RemoteMeasurer:
    """Measures ONNX models on a device running `netadapt device serve`.

    Args:
        address: "HOST:PORT" or "remote://HOST:PORT".
        target: the session and measuring settings, sent with every request;
            the model's input shape comes from the model itself.
        token: bearer token; None reads `NETADAPT_DEVICE_TOKEN`.
        retries: further attempts after a lost connection (so `retries + 1` in all).
        backoff_s: wait before the first retry; it doubles on each further one (capped at 30 s).
        timeout_s: longest wait for the device to answer one request, measuring included.

    Raises:
        ConfigError: a malformed address, no token or bad retry settings.
    """

    def __init__(
        self,
        address: str,
        target: Target,
        token: str | None = None,
        retries: int = 5,
        backoff_s: float = 0.5,
        timeout_s: float = 600.0,
    ) -> None:
        device = address if address.startswith(_SCHEME) else _SCHEME + address
        _, host_port = parse_device(device, key="remote address")
        assert host_port is not None
        self.host, self.port = host_port
        self.target = target
        self.token = token if token is not None else load_token(None)
        if not self.token:
            raise ConfigError(
                f"no token for the device at {self.address}: set {TOKEN_ENV} or target.token_file "
                "to the token the device server was started with"
            )
        if retries < 0 or backoff_s < 0 or timeout_s <= 0:
            raise ConfigError(
                f"remote target: need retries >= 0, backoff_s >= 0 and timeout_s > 0; got {retries}, {backoff_s}, {timeout_s}"
            )
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._health: dict[str, Any] | None = None
        self.last_server_timing: dict[str, Any] = {}  # the device's clock for the last measurement

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __repr__(self) -> str:
        return f"RemoteMeasurer({self.address!r}, {self.target!r})"  # never shows the token

    # ---------------------------------------------------------------- Measurer
    @property
    def statistic(self) -> str:
        """The figure `latency_ms` holds; the device computes it with this target's settings."""
        return self.target.statistic

    def fingerprint(self) -> dict[str, Any]:
        """The device's fingerprint for this target's settings (asked once, then cached)."""
        return dict(self.health()["fingerprint"])

    def health(self, refresh: bool = False) -> dict[str, Any]:
        """The device's authorised health check: fingerprint, measurement count and upload limit."""
        if self._health is None or refresh:
            answer = self._request("GET", HEALTH_PATH)
            if "fingerprint" not in answer:
                raise DeviceError(f"device at {self.address} answered the health check without a fingerprint: {quote(answer, REASON_LIMIT)}")
            self._health = answer
        return self._health

    def measure(self, onnx_bytes: bytes) -> Measurement:
        """Measure `onnx_bytes` on the device.

        Raises:
            DeviceError: the device refused the model or a setting (with its
                reason), stopped a measurement over its ``--measure-timeout``,
                is unreachable or busy after the retries, or is no longer the
                device whose fingerprint this measurer reported.
        """
        health = self.health()  # fails cleanly on a bad token before a large upload
        limit = int(health.get("max_upload_bytes", 0))
        if limit and len(onnx_bytes) > limit:
            # The server would answer 413 and close while we are still sending,
            # which reaches us as a reset; say why instead.
            raise DeviceError(
                f"model of {len(onnx_bytes)} bytes is over the upload limit of the device at {self.address} "
                f"({limit} bytes); restart it with a larger --max-upload-mb"
            )
        answer = self._request("POST", MEASURE_PATH, onnx_bytes)
        statistics = ("median_ms", "p10_ms", "p90_ms", "mean_ms", "cv", "runs", "quiet_ms", "min_ms", "latency_ms")
        missing = [name for name in statistics if name not in answer]
        if missing:
            raise DeviceError(f"device at {self.address} answered without {missing}; is it running an older netadapt?")
        fields = {name: answer[name] for name in statistics}
        result = Measurement(**fields, fingerprint=dict(answer.get("fingerprint", {})))
        expected = {k: v for k, v in health["fingerprint"].items() if k not in _MODEL_KEYS}
        got = {k: v for k, v in result.fingerprint.items() if k not in _MODEL_KEYS}
        if got != expected:
            # The address now reaches another machine (or a changed onnxruntime):
            # its figures must not be mixed into a table keyed by the old one.
            changes = "; ".join(f"{quote(key)}: {quote(expected.get(key))} -> {quote(got.get(key))}"
                                for key in sorted(set(expected) | set(got), key=str) if expected.get(key) != got.get(key))
            raise DeviceError(f"device at {self.address} changed its fingerprint since the first request: "
                              f"{changes[:REASON_LIMIT]}")
        self.last_server_timing = dict(answer.get("server", {}))
        return result

    # ------------------------------------------------------------------- HTTP
    def _request(self, method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
        url = f"{path}?{urlencode(target_settings(self.target))}"
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        attempts = self.retries + 1
        last_error: str = ""
        started = time.monotonic()
        for attempt in range(1, attempts + 1):
            connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            connected = False
            try:
                connection.connect()
                connected = True
                connection.request(method, url, body=body, headers=headers)
                response = connection.getresponse()
                status, data = response.status, response.read()
            except (OSError, http.client.HTTPException) as error:
                if isinstance(error, TimeoutError) and connected:
                    # The device is up but silent: retrying would queue the same model again.
                    raise DeviceError(
                        f"device at {self.address} did not answer {method} {path} within {self.timeout_s:g} s; "
                        "raise target.timeout_s for slow devices or long measurements"
                    ) from None
                last_error = str(error)
            else:
                if status != HTTPStatus.SERVICE_UNAVAILABLE or attempt == attempts:
                    return self._decode(method, path, status, data, attempts=attempt)
                last_error = f"busy (HTTP 503): {_reason(data)}"
            finally:
                connection.close()
            if attempt < attempts:
                wait = min(self.backoff_s * 2 ** (attempt - 1), 30.0)
                log.warning(
                    "device at %s: %s (attempt %d of %d); retrying in %.2f s",
                    self.address, last_error, attempt, attempts, wait,
                )
                time.sleep(wait)
        raise DeviceError(
            f"device at {self.address} unreachable after {attempts} attempt(s) over {time.monotonic() - started:.1f} s; "
            f"last error: {last_error}. Is `netadapt device serve` running there, and is the port open?"
        )

    def _decode(self, method: str, path: str, status: int, data: bytes, attempts: int = 1) -> dict[str, Any]:
        try:
            answer = json.loads(data.decode("utf-8")) if data else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DeviceError(
                f"{self.address} answered {method} {path} with HTTP {status} and a body that is not JSON; "
                "is this a netadapt device server?"
            ) from None
        if not isinstance(answer, dict):
            raise DeviceError(f"{self.address} answered {method} {path} with unexpected JSON: {quote(answer, REASON_LIMIT)}")
        if status == HTTPStatus.UNAUTHORIZED:
            raise DeviceError(
                f"device at {self.address} rejected the token (HTTP 401): set {TOKEN_ENV} or target.token_file "
                "to the token the server was started with"
            )
        if 200 <= status < 300:
            return answer
        reason = _reason(data)
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            raise DeviceError(
                f"device at {self.address} was still busy after {attempts} attempt(s) at {method} {path} (HTTP 503): {reason}"
            )
        if status == HTTPStatus.GATEWAY_TIMEOUT:
            raise DeviceError(f"device at {self.address} stopped the measurement (HTTP 504): {reason}")
        if status >= 500:
            raise DeviceError(f"device at {self.address} failed {method} {path} (HTTP {status}): {reason}")
        raise DeviceError(f"device at {self.address} refused {method} {path} (HTTP {status}): {reason}")


def _reason(data: bytes) -> str:
    """The device's reason in an error answer: its JSON ``error``, else the start of the body."""
    try:
        answer = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        error = answer["error"]
        return error if len(error) <= REASON_LIMIT else error[:REASON_LIMIT] + "..."
    return data[:200].decode("utf-8", "replace") or "(no reason given)"
