"""Latency on a remote device: the server that runs on the target.

The search runs on a workstation; latency must be measured on the phone,
board or edge box the network is meant for (TVM works the same way: a
builder on the host, a runner on the device). `netadapt device serve` runs
there and measures ONNX models with the same benchmarker as local runs
(`netadapt.benchmark.measure`), so a remote figure and a local one mean the
same thing.

The protocol (paths, token, settings) is `netadapt.device.protocol`; the
client is `netadapt.device.client`.

Security, in the order a request meets it (the limits are `ServerLimits`):

1. The server binds to loopback unless told otherwise. HTTP is not
   encrypted: on a network, use a trusted link or an SSH tunnel.
2. At most ``--max-connections`` are open; at the cap the oldest
   unauthenticated one is dropped, and if every one is authenticated a new
   one gets 503. A failed ``accept`` (out of file descriptors) is logged and
   backed off instead of retried in a busy loop.
3. The whole request, headers and body, must arrive within
   ``--upload-timeout`` of connecting, however the client spaces its bytes.
4. Every request needs the bearer token (compared in constant time); a bad
   or missing one gets 401 before anything is read or measured.
5. The body's framing must be unambiguous: exactly one ``Content-Length``
   and no ``Transfer-Encoding``, else 400. Over ``--max-upload-mb`` gets 413
   before the body is read; an upload that would take the bodies held at once
   over ``--max-buffered-mb`` gets 503.
6. Every setting is checked against the server's caps and
   ``--allow-priority`` before the upload (400 naming the setting and cap).
7. The model is validated and measured in a child process
   (`netadapt.device.worker`) that is killed after ``--measure-timeout``
   (504). It must parse as an ONNX ``ModelProto``, hold all its tensor data
   itself and pass `onnx.checker`; otherwise 400 with the reason. Nothing
   received is unpickled or executed outside onnxruntime.

Measurements are serialised: one queue thread hands them to the child, one
at a time, because two sessions running at once share cores, caches and
memory bandwidth and each would report the other's interference as its own
latency. Only uploads run concurrently (so a slow client never holds the
queue); validating a received model costs CPU, so it happens in the queue,
just before that model's measurement.
"""

from __future__ import annotations

import errno
import hmac
import io
import json
import logging
import math
import queue
import signal
import socket
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlsplit

from netadapt.device.limits import ServerLimits
from netadapt.device.protocol import HEALTH_PATH, MEASURE_PATH, TOKEN_ENV, BadRequest, load_token, parse_settings
from netadapt.device.worker import MeasuringProcess, measuring_target
from netadapt.errors import ConfigError, quote

__all__ = ["DeviceServer", "check_settings", "serve"]

# An error answered before the body is read is followed by reading (and
# dropping) at most this much of it: closing a socket with unread data makes
# the kernel send a reset, which can destroy the answer before the client
# reads it. Bounded so an unauthenticated client cannot make us read 256 MB.
_DRAIN_BYTES = 2**20
_DRAIN_SECONDS = 2.0
_CHUNK = 2**16
# File descriptors the server holds besides its connections: std streams, the
# listener, the pipes to the measuring child and forkserver, shared-library
# and log files. Counted against `ulimit -n` with --max-connections.
_RESERVED_FDS = 32
_ACCEPT_BACKOFF_S = (0.05, 1.0)  # first and longest pause after a failed accept
_LOG_EVERY_S = 10.0  # repeated warnings (failed accepts, dropped connections) at most this often

log = logging.getLogger("netadapt.device")


def check_settings(settings: dict[str, Any], limits: ServerLimits) -> dict[str, Any]:
    """Refuse parsed `settings` that exceed this server's caps; return them unchanged otherwise.

    A setting the client leaves out takes `MeasureConfig`'s default, which is within every default cap.

    Raises:
        BadRequest: 400 naming the setting and the cap (or the flag that sets it).
    """
    caps = {
        "threads": limits.max_threads,
        "inter_op_threads": limits.max_threads,
        "min_runs": limits.max_runs,
        "max_runs": limits.max_runs,
        "warmup_runs": limits.max_warmup_runs,
        "windows": limits.max_windows,
        "batch": limits.max_batch,
    }
    for name, cap in caps.items():
        if name in settings and settings[name] > cap:
            reason = f"parameter {name!r}: {settings[name]} is over this server's cap of {cap}"
            raise BadRequest(HTTPStatus.BAD_REQUEST, reason)
    if "batch" in settings and settings["batch"] < 1:  # refused here, before the upload, not after it
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"parameter 'batch': {settings['batch']} must be >= 1")
    seconds = settings.get("min_seconds")
    if seconds is not None and not (math.isfinite(seconds) and seconds <= limits.measure_timeout_s):
        raise BadRequest(
            HTTPStatus.BAD_REQUEST,
            f"parameter 'min_seconds': {seconds!r} must be finite and within this server's cap of "
            f"{limits.measure_timeout_s:g} s (its --measure-timeout)",
        )
    priority = settings.get("priority")
    if priority is not None and priority not in limits.allow_priority:
        raise BadRequest(
            HTTPStatus.BAD_REQUEST,
            f"parameter 'priority': {priority!r} is not allowed on this server "
            f"(allowed: {', '.join(limits.allow_priority)}; its operator sets netadapt device serve --allow-priority)",
        )
    return settings


class _DeadlineReader(io.RawIOBase):
    """A connection's reads, each limited to what is left of the request's deadline.

    A per-read timeout alone lets a client that sends one byte every few
    seconds hold a connection for ever; this bounds the whole request.
    """

    def __init__(self, connection: socket.socket, deadline: float) -> None:
        self._connection = connection
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request's deadline passed")
        self._connection.settimeout(remaining)
        return self._connection.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    server: "DeviceServer"
    server_version = "netadapt-device/1"
    sys_version = ""  # do not advertise the Python version

    def setup(self) -> None:
        self.timeout = None  # reads are bounded by the deadline below, writes by `_answer`
        super().setup()
        self._deadline = time.monotonic() + self.server.limits.upload_timeout_s
        plain, self.rfile = self.rfile, io.BufferedReader(_DeadlineReader(self.connection, self._deadline), _CHUNK)
        plain.close()  # the socket stays open; this only drops the first reader's reference to it

    # ------------------------------------------------------------------ routes
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._started = time.monotonic()
        url = urlsplit(self.path)
        try:
            if url.path != HEALTH_PATH:
                raise BadRequest(HTTPStatus.NOT_FOUND, f"no such path {quote(url.path)}; use GET / or POST /measure")
            answer: dict[str, Any] = {"status": "ok", "service": "netadapt-device"}
            detail = "health check without token"
            if self.headers.get("Authorization") is not None:
                detail = "health check"
                self._authorise()
                settings = check_settings(parse_settings(url.query), self.server.limits)
                shape = (settings.get("batch", 1), 3, 224, 224)  # the fingerprint uses only the batch
                answer |= {
                    "fingerprint": measuring_target(settings, shape).fingerprint(),
                    "measurements": self.server.measurements,
                    "max_upload_bytes": self.server.limits.max_upload_bytes,
                }
            self._answer(HTTPStatus.OK, answer, detail=detail)
        except BadRequest as error:
            self._answer(error.status, {"error": error.reason})

    def do_POST(self) -> None:  # noqa: N802
        self._started = time.monotonic()
        url = urlsplit(self.path)
        body_read = False
        reserved = 0
        try:
            if url.path != MEASURE_PATH:
                raise BadRequest(HTTPStatus.NOT_FOUND, f"no such path {quote(url.path)}; use POST /measure")
            self._authorise()
            length = self._content_length()
            settings = check_settings(parse_settings(url.query), self.server.limits)
            measuring_target(settings, (max(settings.get("batch", 1), 1), 1, 1, 1))  # bad settings fail before the upload
            reserved = self.server.reserve_upload(length)
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
        finally:
            self.server.release_upload(reserved)
        self._answer(HTTPStatus.OK, result, detail=f"latency {result['latency_ms']:.3f} ms")

    # ----------------------------------------------------------------- helpers
    def _authorise(self) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        expected = self.server.token.encode("utf-8")
        # compare_digest on bytes: constant time, and no TypeError on non-ASCII input
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("utf-8"), expected):
            raise BadRequest(HTTPStatus.UNAUTHORIZED, "missing or invalid token: send 'Authorization: Bearer TOKEN'")
        self.server.authenticated(self.connection)

    def _content_length(self) -> int:
        # Two lengths, or a length beside chunking, let a proxy and this server
        # read different bodies from the same bytes (request smuggling).
        if self.headers.get_all("Transfer-Encoding"):
            raise BadRequest(
                HTTPStatus.BAD_REQUEST,
                "Transfer-Encoding is not accepted (chunked uploads would make the body's length ambiguous); "
                "send the body with one Content-Length",
            )
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise BadRequest(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required (chunked uploads are not accepted)")
        if len(values) > 1:
            reason = f"Content-Length given {len(values)} times ({', '.join(values)}); send it once"
            raise BadRequest(HTTPStatus.BAD_REQUEST, reason)
        (text,) = values
        digits = text.strip()
        length = int(digits) if digits.isascii() and digits.isdigit() else -1  # int() alone accepts "+1", "1_0"
        if length < 0:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"Content-Length {text!r} is not a non-negative integer")
        limit = self.server.limits.max_upload_bytes
        if length > limit:
            raise BadRequest(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"upload of {length} bytes is over this server's limit of {limit} bytes "
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
            reason = (
                f"upload incomplete after {received} of {length} bytes: the whole request must arrive within "
                f"{self.server.limits.upload_timeout_s:g} s (netadapt device serve --upload-timeout)"
            )
            self._answer(HTTPStatus.REQUEST_TIMEOUT, {"error": reason})
            raise _ClientGone(reason, answered=True) from None
        except ConnectionError as error:
            raise _ClientGone(f"connection lost after {received} of {length} bytes: {error}") from None
        return b"".join(chunks)

    def _answer(self, status: HTTPStatus, payload: dict[str, Any], drain: bool = False, detail: str = "") -> None:
        data = json.dumps(payload).encode("utf-8")
        try:
            # The read deadline may have left any timeout on the socket; an answer gets its own.
            self.connection.settimeout(self.server.limits.upload_timeout_s)
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
                chunk = self.connection.recv(_CHUNK)  # not `rfile`: its deadline may be spent already
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
        # Only reached for requests http.server itself rejects (malformed request line, headers too slow etc.).
        log.info("%s %s", self.address_string(), format % args)


class _ClientGone(Exception):
    """The client stalled or disconnected before its upload was complete."""

    def __init__(self, reason: str, answered: bool = False) -> None:
        super().__init__(reason)
        self.answered = answered  # a 408 was sent (and logged) already


class _Throttled:
    """A warning logged at most once per `_LOG_EVERY_S`, with how often it happened meanwhile."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = -math.inf
        self._count = 0

    def __call__(self, message: str) -> None:
        with self._lock:
            self._count += 1
            now = time.monotonic()
            if now - self._last < _LOG_EVERY_S:
                return
            count, self._count, self._last = self._count, 0, now
        log.warning("%s%s", message, f" ({count} times since the last report)" if count > 1 else "")


@dataclass
class _Connection:
    """An open connection, as the cap on connections sees it."""

    opened: float  # monotonic
    address: str
    authenticated: bool = False  # has shown the token; dropped only after every unauthenticated one


def _fd_limit() -> int | None:
    try:
        import resource  # POSIX only
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


class DeviceServer(ThreadingHTTPServer):
    """The device's HTTP server: concurrent uploads, one measurement at a time, in a child process.

    Args:
        host: address to bind; loopback unless the host must be reachable from the network.
        port: TCP port; 0 picks a free one (see `address`).
        token: the bearer token every request must carry.
        limits: upload, time, connection and setting limits (see `ServerLimits`).

    Raises:
        ConfigError: no token, or ``--max-connections`` over what ``ulimit -n`` allows.
        OSError: the address cannot be bound.
    """

    daemon_threads = True  # a stuck connection never blocks shutdown
    allow_reuse_address = True
    request_queue_size = 64  # listen backlog; socketserver's 5 drops connections in a burst of clients

    def __init__(self, host: str, port: int, token: str, limits: ServerLimits | None = None) -> None:
        if not token:
            raise ConfigError(f"the device server needs a token: set {TOKEN_ENV} or pass --token-file FILE")
        self.limits = limits if limits is not None else ServerLimits()
        fd_limit = _fd_limit()
        if fd_limit is not None and self.limits.max_connections + _RESERVED_FDS > fd_limit:
            raise ConfigError(
                f"--max-connections {self.limits.max_connections} needs about {self.limits.max_connections + _RESERVED_FDS} "
                f"open files, but this process may open {fd_limit} (ulimit -n); lower --max-connections to at most "
                f"{max(fd_limit - _RESERVED_FDS, 1)} or raise the limit"
            )
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.token = token
        self.measurements = 0  # completed measurements; the health check reports it
        self._count_lock = threading.Lock()
        self._buffered = 0  # bytes of uploads held now (see `reserve_upload`)
        self._buffered_lock = threading.Lock()
        self._connections: dict[socket.socket, _Connection] = {}
        self._connections_lock = threading.Lock()
        self._accept_failures = 0
        self._warn_accept = _Throttled()
        self._warn_dropped = _Throttled()
        # The queue: one thread, FIFO, handing models to one child. Measurements never overlap.
        self._measurer = MeasuringProcess(self.limits.measure_timeout_s, self.limits.max_input_bytes)
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._jobs_lock = threading.Lock()  # `submit` against `server_close`
        self._closed = False
        super().__init__((host, port), _Handler)
        # A daemon thread, not an executor: an executor's thread is joined at exit, so one busy
        # measurement kept the process alive after Ctrl-C.
        self._queue_thread = threading.Thread(target=self._work, name="measure", daemon=True)
        self._queue_thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound; the port is the real one when 0 was asked for."""
        host, port = self.server_address[:2]
        return str(host), int(port)

    # ------------------------------------------------------------- the queue
    def warm_up(self) -> None:
        """Start the measuring child in the queue now, so the first model does not wait for it."""

        def report(future: Future) -> None:
            if future.exception() is not None:  # the first model will try again and tell its client
                log.warning("could not start the measuring process: %s", future.exception())

        self._enqueue(self._measurer.start).add_done_callback(report)

    def submit(self, onnx_bytes: bytes, settings: dict[str, Any]) -> dict[str, Any]:
        """Queue a received model for validation and measurement; wait and return the answer's payload.

        Raises:
            BadRequest: 400 the model is not measurable or a setting is invalid; 504 it
                overran ``--measure-timeout``; 500 the measuring process died; 503 shutting down.
        """
        queued = time.monotonic()
        return self._enqueue(lambda: self._measure(onnx_bytes, settings, queued)).result()

    def _enqueue(self, job: Callable[[], Any]) -> Future:
        future: Future = Future()
        with self._jobs_lock:
            if self._closed:
                future.set_exception(BadRequest(HTTPStatus.SERVICE_UNAVAILABLE, "the server is shutting down"))
            else:
                self._jobs.put((future, job))
        return future

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            future, job = item
            try:
                future.set_result(job())
            except BaseException as error:  # handed to the waiting request
                future.set_exception(error)

    def _measure(self, onnx_bytes: bytes, settings: dict[str, Any], queued: float) -> dict[str, Any]:
        start = time.monotonic()
        # Validation runs in the queue too: onnx.checker takes tens of ms of CPU
        # on a 10 MB model, which would disturb a measurement running beside it.
        # The body is complete by now, so nothing here can stall on a client.
        outcome = self._measurer.run(onnx_bytes, settings)
        end = time.monotonic()
        with self._count_lock:
            self.measurements += 1
            sequence = self.measurements
        payload = outcome.measurement.to_dict()
        # Server-clock times (monotonic seconds) let a client check that measurements never overlapped.
        payload["server"] = {
            "sequence": sequence,
            "queued_s": start - queued,  # waiting for earlier measurements
            "validate_s": outcome.validate_s,
            "start_s": start,  # validation and measurement, exclusive on the device
            "end_s": end,
        }
        return payload

    # ----------------------------------------------------------- memory held
    def reserve_upload(self, length: int) -> int:
        """Count `length` bytes against ``--max-buffered-mb`` before they are read; return what to release.

        Raises:
            BadRequest: 503 when the uploads held now leave no room for this one.
        """
        limit = self.limits.max_buffered_bytes
        with self._buffered_lock:
            if self._buffered + length > limit:
                held = self._buffered
            else:
                self._buffered += length
                return length
        raise BadRequest(
            HTTPStatus.SERVICE_UNAVAILABLE,
            f"the server holds {held} bytes of other uploads and may hold {limit} at once "
            "(netadapt device serve --max-buffered-mb); retry later",
        )

    def release_upload(self, length: int) -> None:
        with self._buffered_lock:
            self._buffered -= length

    # ----------------------------------------------------------- connections
    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit a new connection under ``--max-connections``, dropping an unauthenticated one if need be."""
        cap = self.limits.max_connections
        with self._connections_lock:
            if len(self._connections) >= cap and not self._drop_unauthenticated_locked():
                refused = True
            else:
                self._connections[request] = _Connection(time.monotonic(), str(client_address[0]))
                refused = False
        if refused:
            self._refuse(request, f"the server is busy: all {cap} connections (netadapt device serve --max-connections) "
                                  "are authenticated requests; retry later")
        return not refused

    def _drop_unauthenticated_locked(self) -> bool:
        """Shut the oldest unauthenticated connection; its handler sees the end of input and exits."""
        waiting = [(c.opened, sock) for sock, c in self._connections.items() if not c.authenticated]
        if not waiting:
            return False
        opened, sock = min(waiting, key=lambda item: item[0])
        address = self._connections.pop(sock).address
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._warn_dropped(
            f"dropped the unauthenticated connection from {address}, open {time.monotonic() - opened:.1f} s, "
            f"to stay within --max-connections {self.limits.max_connections}"
        )
        return True

    def _refuse(self, request: socket.socket, reason: str) -> None:
        data = json.dumps({"error": reason}).encode("utf-8")
        head = (
            "HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        )
        try:
            request.setblocking(False)  # best effort: never let the accepting thread wait on a client
            request.send(head.encode("ascii") + data)
        except OSError:
            pass
        self._warn_dropped(f"refused a connection: {reason}")

    def authenticated(self, request: socket.socket) -> None:
        """Mark a connection as authenticated (it showed the token): it is dropped last."""
        with self._connections_lock:
            if request in self._connections:
                self._connections[request].authenticated = True

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.pop(request, None)
        super().shutdown_request(request)

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            accepted = self.socket.accept()
        except OSError as error:
            self._accept_failed(error)
            raise  # socketserver skips this round
        self._accept_failures = 0
        return accepted

    def _accept_failed(self, error: OSError) -> None:
        if isinstance(error, (BlockingIOError, InterruptedError, ConnectionAbortedError)):
            return  # that one client gave up between poll and accept; nothing to back off from
        self._accept_failures += 1
        if error.errno in (errno.EMFILE, errno.ENFILE):
            with self._connections_lock:  # free a descriptor for the waiting connections
                self._drop_unauthenticated_locked()
        first, longest = _ACCEPT_BACKOFF_S
        pause = min(first * 2 ** (self._accept_failures - 1), longest)
        self._warn_accept(
            f"accepting a connection failed: {error}; pausing {pause:g} s before the next try "
            f"(open connections: {len(self._connections)}; raise ulimit -n or lower --max-connections)"
        )
        # Without a pause the listener stays readable and the loop spins on the same failure.
        time.sleep(pause)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):  # the client's doing, not a bug: one line, no traceback
            log.info("%s connection lost: %s", client_address[0], error)
            return
        super().handle_error(request, client_address)

    def server_close(self) -> None:
        super().server_close()
        with self._jobs_lock:
            self._closed = True
            self._jobs.put(None)
        self._measurer.stop()  # a running measurement ends at once; those queued behind it fail fast with 503


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def serve(host: str = "127.0.0.1", port: int = 8765, token: str | None = None, limits: ServerLimits | None = None) -> None:
    """Run the device server until interrupted (Ctrl-C or SIGTERM).

    Prints ``listening on http://HOST:PORT`` (the real port when `port` is 0)
    on stdout once the socket is bound; logs one line per request on stderr.
    On the way out the measuring child is killed, so a measurement in progress
    does not keep the process alive.

    Args:
        host: address to bind; 127.0.0.1 by default, so nothing off the machine can connect.
        port: TCP port, or 0 for any free one.
        token: bearer token; None reads `NETADAPT_DEVICE_TOKEN`.
        limits: the server's limits; None takes `ServerLimits`' defaults.

    Raises:
        ConfigError: no token, a bad port or limit, or the address cannot be bound.
    """
    token = token if token is not None else load_token(None)
    if not token:
        raise ConfigError(f"refusing to start without a token: set {TOKEN_ENV} or pass --token-file FILE")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"--port must be an integer from 0 to 65535, got {port!r}")
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    try:
        server = DeviceServer(host, port, token, limits)
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
    if threading.current_thread() is threading.main_thread():
        # SIGTERM takes the same way out as Ctrl-C, through `server_close`.
        signal.signal(signal.SIGTERM, _interrupt)
    server.warm_up()
    try:  # from the "listening" line on, Ctrl-C takes the way out below
        print(f"listening on http://{shown}:{bound_port} (measurements run one at a time)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("interrupted: stopping")
    finally:
        server.server_close()
    log.info("stopped")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
