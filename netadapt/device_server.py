"""Latency on a remote device: the server that runs on the target.

The search runs on a workstation; latency must be measured on the phone,
board or edge box the network is meant for (TVM works the same way: a
builder on the host, a runner on the device). `netadapt device serve` runs
there and measures ONNX models with the same benchmarker as local runs
(`netadapt.benchmark.measure`), so a remote figure and a local one mean the
same thing.

Protocol (plain HTTP, JSON answers; see `netadapt.remote` for the client):

- ``GET /`` is a health check. Without a token it answers ``{"status": "ok"}``
  only; with a valid ``Authorization: Bearer TOKEN`` it adds the device's
  fingerprint for the settings given as query parameters, the number of
  measurements done and the upload limit.
- ``POST /measure`` takes the serialised ONNX model as the body and the
  settings as query parameters (`SETTINGS`); it answers
  `Measurement.to_dict()` plus the server's timing of the measurement.

Security, in the order a request meets it:

1. The server binds to loopback unless told otherwise. HTTP is not
   encrypted: on a network, use a trusted link or an SSH tunnel.
2. Every request needs the bearer token (compared in constant time); a bad
   or missing one gets 401 before anything is read or measured.
3. A ``Content-Length`` over the limit gets 413 before the body is read.
4. The body is read with a per-read timeout, so a client that stalls or
   drops mid-upload frees its thread and never holds up the queue.
5. The body must parse as an ONNX ``ModelProto`` and pass `onnx.checker`;
   otherwise 400 with the reason. Nothing received is unpickled or executed
   outside onnxruntime, and models that reference external data files are
   refused (they would make onnxruntime open paths on this machine).

Measurements are serialised: one worker thread takes them from a FIFO queue,
because two sessions running at once share cores, caches and memory
bandwidth and each would report the other's interference as its own
latency. Only uploads run concurrently (so a slow client never holds the
queue); validating a received model costs CPU, so it happens in the queue,
just before that model's measurement.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import stat
import sys
import threading
import time
import typing
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Literal
from urllib.parse import parse_qs, urlsplit

import onnx

from netadapt.benchmark import MEASURING_SETTINGS, SESSION_SETTINGS, Measurement, Target, measure
from netadapt.config import MeasureConfig, TargetConfig
from netadapt.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_UPLOAD_TIMEOUT_S",
    "SETTINGS",
    "TOKEN_ENV",
    "DeviceServer",
    "load_token",
    "parse_settings",
    "serve",
    "target_settings",
]

TOKEN_ENV = "NETADAPT_DEVICE_TOKEN"
DEFAULT_MAX_UPLOAD_BYTES = 256 * 2**20  # MobileNetV3-Large is ~22 MB in fp32; leaves room for larger nets
DEFAULT_UPLOAD_TIMEOUT_S = 30.0  # longest silence between two reads of one request
# An error answered before the body is read is followed by reading (and
# dropping) at most this much of it: closing a socket with unread data makes
# the kernel send a reset, which can destroy the answer before the client
# reads it. Bounded so an unauthenticated client cannot make us read 256 MB.
_DRAIN_BYTES = 2**20
_DRAIN_SECONDS = 2.0
_CHUNK = 2**16

log = logging.getLogger("netadapt.device")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


_PARSERS: dict[str, Callable[[str], Any]] = {"str": str, "int": int, "float": float, "bool": _parse_bool}


def _settings_from_target() -> dict[str, Callable[[str], Any]]:
    # Derived from the config sections that own `Target`'s settings, so a
    # setting added there (e.g. a scheduling priority) travels to the device
    # without a second list to keep in step.
    hints = {**typing.get_type_hints(TargetConfig), **typing.get_type_hints(MeasureConfig)}
    settings = {}
    for name in (*SESSION_SETTINGS, *MEASURING_SETTINGS):
        hint = hints[name]
        if typing.get_origin(hint) is Literal:
            hint = type(typing.get_args(hint)[0])
        type_name = getattr(hint, "__name__", str(hint))
        if type_name not in _PARSERS:
            raise TypeError(f"setting {name}: type {type_name} has no query-parameter parser")  # a bug
        settings[name] = _PARSERS[type_name]
    return settings


# Query parameter -> parser: every setting of `Target.settings()`,
# plus `batch`, which fills a dynamic batch dimension and sets the batch of
# the health check's fingerprint.
SETTINGS: dict[str, Callable[[str], Any]] = {**_settings_from_target(), "batch": int}
_KINDS = {int: "an integer", float: "a number", str: "a string", _parse_bool: "true or false"}


class BadRequest(Exception):
    """A request the server refuses; carries the HTTP status and the reason sent back."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def target_settings(target: Target) -> dict[str, str]:
    """The query parameters that reproduce `target` on the device (the client's half of `parse_settings`)."""
    query = {}
    for name in SETTINGS:
        value = target.input_shape[0] if name == "batch" else target.settings()[name]
        if isinstance(value, bool):
            query[name] = "true" if value else "false"
        elif isinstance(value, float):
            query[name] = repr(value)  # round-trips exactly
        else:
            query[name] = str(value)
    return query


def parse_settings(query: str) -> dict[str, Any]:
    """Parse and type-check measurement settings from a URL query string.

    Raises:
        BadRequest: 400 naming the unknown, repeated or malformed parameter.
    """
    try:
        raw = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    except ValueError as error:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"malformed query string: {error}") from None
    settings: dict[str, Any] = {}
    for name, values in raw.items():
        if name not in SETTINGS:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"unknown parameter {name!r}; valid parameters are {sorted(SETTINGS)}")
        if len(values) != 1:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"parameter {name!r} given {len(values)} times")
        try:
            settings[name] = SETTINGS[name](values[0])
        except ValueError:
            kind = _KINDS.get(SETTINGS[name], "value")
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"parameter {name!r}: {values[0]!r} is not {kind}") from None
    return settings


def _target(settings: dict[str, Any], input_shape: tuple[int, ...]) -> Target:
    fields = {k: v for k, v in settings.items() if k != "batch"}
    try:
        target = Target.from_settings(input_shape, **fields)
        target.require_provider_here()
        return target
    except ConfigError as error:
        # Target validates ranges and that the provider exists on *this* device.
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"bad setting: {error}") from None


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in `graph`: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _all_tensors(subgraph)


def _validate_model(body: bytes, batch: int | None) -> tuple[int, int, int, int]:
    """Check that `body` is a measurable ONNX model; return its input shape.

    Raises:
        BadRequest: 400 with the reason.
    """
    try:
        proto = onnx.load_from_string(body)
    except Exception as error:  # protobuf raises DecodeError, RuntimeWarning-ish errors vary by version
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"body is not an ONNX model: {error}") from None
    if not proto.graph.node:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "body is not an ONNX model: the graph has no nodes")
    for tensor in _all_tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            # The checker and onnxruntime would open the referenced path on this machine.
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"tensor {tensor.name!r} uses external data; send a self-contained model")
    try:
        onnx.checker.check_model(proto)
    except Exception as error:  # ValidationError, and C++ errors surfaced as various types
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"ONNX model is invalid: {error}") from None
    initializers = {tensor.name for tensor in proto.graph.initializer}
    inputs = [value for value in proto.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"the model must have exactly one input, it has {len(inputs)}")
    (model_input,) = inputs
    tensor_type = model_input.type.tensor_type
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"input {model_input.name!r} must be float32")
    dims = list(tensor_type.shape.dim)
    if len(dims) != 4:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"input {model_input.name!r} must be 4-D (N, C, H, W), it has {len(dims)} dims")
    shape = []
    for index, dim in enumerate(dims):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            shape.append(dim.dim_value)
        elif index == 0 and batch is not None:
            shape.append(batch)  # a dynamic batch is filled from the `batch` setting
        else:
            raise BadRequest(
                HTTPStatus.BAD_REQUEST,
                f"input {model_input.name!r} dimension {index} is not fixed; export with a fixed input shape",
            )
    return tuple(shape)  # type: ignore[return-value]


class _Handler(BaseHTTPRequestHandler):
    server: "DeviceServer"
    server_version = "netadapt-device/1"
    sys_version = ""  # do not advertise the Python version

    def setup(self) -> None:
        # Per-read timeout for the request line, headers and body (slow-loris guard).
        self.timeout = self.server.upload_timeout_s
        super().setup()

    # ------------------------------------------------------------------ routes
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._started = time.monotonic()
        url = urlsplit(self.path)
        try:
            if url.path != "/":
                raise BadRequest(HTTPStatus.NOT_FOUND, f"no such path {url.path!r}; use GET / or POST /measure")
            answer: dict[str, Any] = {"status": "ok", "service": "netadapt-device"}
            detail = "health check without token"
            if self.headers.get("Authorization") is not None:
                detail = "health check"
                self._authorise()
                settings = parse_settings(url.query)
                shape = (settings.get("batch", 1), 3, 224, 224)  # the fingerprint uses only the batch
                answer |= {
                    "fingerprint": _target(settings, shape).fingerprint(),
                    "measurements": self.server.measurements,
                    "max_upload_bytes": self.server.max_upload_bytes,
                }
            self._answer(HTTPStatus.OK, answer, detail=detail)
        except BadRequest as error:
            self._answer(error.status, {"error": error.reason})

    def do_POST(self) -> None:  # noqa: N802
        self._started = time.monotonic()
        url = urlsplit(self.path)
        body_read = False
        try:
            if url.path != "/measure":
                raise BadRequest(HTTPStatus.NOT_FOUND, f"no such path {url.path!r}; use POST /measure")
            self._authorise()
            length = self._content_length()
            settings = parse_settings(url.query)
            _target(settings, (max(settings.get("batch", 1), 1), 1, 1, 1))  # bad settings fail before the upload
            body = self._read_body(length)
            body_read = True
            result = self.server.submit(body, settings)
        except BadRequest as error:
            self._answer(error.status, {"error": error.reason}, drain=not body_read)
            return
        except _ClientGone as gone:
            if not gone.answered:
                self._log(0, str(gone))
            self.close_connection = True
            return
        except Exception as error:  # a bug: answer and keep serving, with the traceback in the log
            log.exception("internal error")
            self._answer(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {error!r}"}, drain=not body_read)
            return
        self._answer(HTTPStatus.OK, result, detail=f"latency {result['latency_ms']:.3f} ms")

    # ----------------------------------------------------------------- helpers
    def _authorise(self) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        expected = self.server.token.encode("utf-8")
        # compare_digest on bytes: constant time, and no TypeError on non-ASCII input
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("utf-8"), expected):
            raise BadRequest(HTTPStatus.UNAUTHORIZED, "missing or invalid token: send 'Authorization: Bearer TOKEN'")

    def _content_length(self) -> int:
        text = self.headers.get("Content-Length")
        if text is None:
            raise BadRequest(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required (chunked uploads are not accepted)")
        digits = text.strip()
        length = int(digits) if digits.isascii() and digits.isdigit() else -1  # int() alone accepts "+1", "1_0"
        if length < 0:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"Content-Length {text!r} is not a non-negative integer")
        if length > self.server.max_upload_bytes:
            raise BadRequest(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"upload of {length} bytes is over this server's limit of {self.server.max_upload_bytes} bytes "
                "(netadapt device serve --max-upload-mb)",
            )
        return length

    def _read_body(self, length: int) -> bytes:
        chunks = []
        received = 0
        try:
            while received < length:
                chunk = self.rfile.read1(min(_CHUNK, length - received))
                if not chunk:
                    raise _ClientGone(f"client disconnected after {received} of {length} bytes")
                chunks.append(chunk)
                received += len(chunk)
        except (TimeoutError, socket.timeout):
            # Tell the client if it is still listening; it gets no measurement either way.
            self._answer(HTTPStatus.REQUEST_TIMEOUT, {"error": f"upload stalled after {received} of {length} bytes"})
            raise _ClientGone(f"upload stalled after {received} of {length} bytes", answered=True) from None
        except ConnectionError as error:
            raise _ClientGone(f"connection lost after {received} of {length} bytes: {error}") from None
        return b"".join(chunks)

    def _answer(self, status: HTTPStatus, payload: dict[str, Any], drain: bool = False, detail: str = "") -> None:
        data = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
            if drain:
                self._drain()
        except OSError as error:
            detail = f"{detail}; answer not delivered: {error}".lstrip("; ")
        self.close_connection = True
        self._log(int(status), detail or payload.get("error", ""))

    def _drain(self) -> None:
        """Half-close, then read and drop a bounded amount of the unread body (see `_DRAIN_BYTES`)."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(_DRAIN_SECONDS)
            deadline = time.monotonic() + _DRAIN_SECONDS
            dropped = 0
            while dropped < _DRAIN_BYTES and time.monotonic() < deadline:
                chunk = self.rfile.read1(_CHUNK)
                if not chunk:
                    break
                dropped += len(chunk)
        except OSError:
            pass

    def _log(self, status: int, detail: str) -> None:
        elapsed = time.monotonic() - getattr(self, "_started", time.monotonic())
        length = self.headers.get("Content-Length") if self.headers else None
        log.info(
            "%s %s %s %s %s %.3fs %s",
            self.client_address[0],
            self.command,
            urlsplit(self.path).path if self.path else "-",
            status or "-",
            f"{length}B" if length else "-",
            elapsed,
            detail,
        )

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # `_log` writes the one line per request, with more detail

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        # Only reached for requests http.server itself rejects (malformed request line etc.).
        log.info("%s %s", self.address_string(), format % args)


class _ClientGone(Exception):
    """The client stalled or disconnected before its upload was complete."""

    def __init__(self, reason: str, answered: bool = False) -> None:
        super().__init__(reason)
        self.answered = answered  # a 408 was sent (and logged) already


class DeviceServer(ThreadingHTTPServer):
    """The device's HTTP server: concurrent uploads, one measurement at a time.

    Args:
        host: address to bind; loopback unless the host must be reachable from the network.
        port: TCP port; 0 picks a free one (see `address`).
        token: the bearer token every request must carry.
        max_upload_bytes: larger uploads get 413 before their body is read.
        upload_timeout_s: longest wait for the next bytes of a request before it is dropped.
    """

    daemon_threads = True  # a stuck connection never blocks shutdown
    allow_reuse_address = True

    def __init__(
        self,
        host: str,
        port: int,
        token: str,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        upload_timeout_s: float = DEFAULT_UPLOAD_TIMEOUT_S,
    ) -> None:
        if not token:
            raise ConfigError(f"the device server needs a token: set {TOKEN_ENV} or pass --token-file FILE")
        if max_upload_bytes < 1:
            raise ConfigError(f"--max-upload-mb must be positive, got {max_upload_bytes} bytes")
        if upload_timeout_s <= 0:
            raise ConfigError(f"--upload-timeout must be positive, got {upload_timeout_s}")
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.token = token
        self.max_upload_bytes = int(max_upload_bytes)
        self.upload_timeout_s = float(upload_timeout_s)
        self.measurements = 0  # completed measurements; the health check reports it
        # The queue: one worker, FIFO. Measurements never overlap (see the module docstring).
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="measure")
        self._count_lock = threading.Lock()
        super().__init__((host, port), _Handler)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound; the port is the real one when 0 was asked for."""
        host, port = self.server_address[:2]
        return str(host), int(port)

    def submit(self, onnx_bytes: bytes, settings: dict[str, Any]) -> dict[str, Any]:
        """Queue a received model for validation and measurement; wait and return the answer's payload.

        Raises:
            BadRequest: the model is not a measurable ONNX model or a setting is invalid.
        """
        queued = time.monotonic()
        return self._worker.submit(self._measure, onnx_bytes, settings, queued).result()

    def _measure(self, onnx_bytes: bytes, settings: dict[str, Any], queued: float) -> dict[str, Any]:
        start = time.monotonic()
        # Validation runs in the queue too: onnx.checker takes tens of ms of CPU
        # on a 10 MB model, which would disturb a measurement running beside it.
        # The body is complete by now, so nothing here can stall on a client.
        shape = _validate_model(onnx_bytes, settings.get("batch"))
        target = _target(settings, shape)
        validated = time.monotonic()
        try:
            result: Measurement = measure(onnx_bytes, target)
        except Exception as error:  # onnxruntime refuses some checker-valid graphs (unknown ops, bad types)
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"onnxruntime could not run the model: {error}") from None
        end = time.monotonic()
        with self._count_lock:
            self.measurements += 1
            sequence = self.measurements
        payload = result.to_dict()
        # Server-clock times (monotonic seconds) let a client check that measurements never overlapped.
        payload["server"] = {
            "sequence": sequence,
            "queued_s": start - queued,  # waiting for earlier measurements
            "validate_s": validated - start,
            "start_s": start,  # validation and measurement, exclusive on the device
            "end_s": end,
        }
        return payload

    def server_close(self) -> None:
        super().server_close()
        self._worker.shutdown(wait=False, cancel_futures=True)


def load_token(token_file: str | Path | None, option: str = "--token-file") -> str | None:
    """The device token: from `token_file` if given, else from `NETADAPT_DEVICE_TOKEN`.

    Tokens are never taken from a command-line argument, which any user can
    read in the process list.

    Args:
        token_file: a file holding the token (surrounding whitespace is ignored).
        option: how the file was named (e.g. "target.token_file"), for messages.

    Returns:
        The token, or None if neither source has one.

    Raises:
        ConfigError: the file is missing, unreadable or empty.
    """
    if token_file is not None:
        path = Path(token_file).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigError(f"{option} {path}: cannot read the token file: {error.strerror}") from None
        if not token:
            raise ConfigError(f"{option} {path}: the token file is empty")
        try:
            if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                print(f"warning: {path} is readable by other users; chmod 600 it", file=sys.stderr)
        except OSError:
            pass
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    upload_timeout_s: float = DEFAULT_UPLOAD_TIMEOUT_S,
) -> None:
    """Run the device server until interrupted.

    Prints ``listening on http://HOST:PORT`` (the real port when `port` is 0)
    on stdout once the socket is bound; logs one line per request on stderr.

    Args:
        host: address to bind; 127.0.0.1 by default, so nothing off the machine can connect.
        port: TCP port, or 0 for any free one.
        token: bearer token; None reads `NETADAPT_DEVICE_TOKEN`.
        max_upload_bytes: uploads over this get 413.
        upload_timeout_s: a client silent this long mid-request is dropped.

    Raises:
        ConfigError: no token, or a bad limit.
    """
    token = token if token is not None else load_token(None)
    if not token:
        raise ConfigError(f"refusing to start without a token: set {TOKEN_ENV} or pass --token-file FILE")
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    try:
        server = DeviceServer(host, port, token, max_upload_bytes, upload_timeout_s)
    except OSError as error:
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    bound_host, bound_port = server.address
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    if not _is_loopback(bound_host):
        print(
            f"warning: listening on {bound_host}, reachable from the network; HTTP is not encrypted, so the token "
            "and models cross it in clear text: use a trusted network or an SSH tunnel",
            file=sys.stderr,
            flush=True,
        )
    print(f"listening on http://{shown}:{bound_port} (measurements run one at a time)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
