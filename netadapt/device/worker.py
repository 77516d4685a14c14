"""Measuring received models on the device, in a child process the server can kill.

`netadapt device serve` (`netadapt.device.server`) hands each complete
upload to `MeasuringProcess.run`, one at a time. The child validates the
model and measures it with `netadapt.benchmark.measure`; the server waits at
most its ``--measure-timeout`` for the answer and then kills the child. So a
model that never finishes (a ``Loop`` of 2^62 iterations) cannot hold the
queue, and a crash or a memory blow-up in onnx or onnxruntime ends the
child, not the server.

The child is kept for the next model (a warm process measures like the
long-lived server that used to measure in-process) and replaced only after
it was killed or died. On POSIX it is forked from a forkserver that has
imported onnxruntime already, so a replacement is ready in milliseconds, not
the seconds a fresh interpreter needs; the forkserver is single-threaded,
so forking it is safe where forking the threaded server is not.

What a model could make the device read is shut off twice: tensors whose
data lives in external files are refused wherever ONNX can store a tensor
(`external_data_refs`), with one message whether or not the file exists;
and the child runs in a deleted directory, loading models from bytes, so a
relative path that got through would name nothing.

Between server and child only JSON and the model's bytes cross the pipe;
nothing is unpickled from the child, which runs untrusted models.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from http import HTTPStatus
from multiprocessing.connection import Connection
from typing import Any, Iterator

import onnx

from netadapt.benchmark import Measurement, Target, measure
from netadapt.device.protocol import BadRequest
from netadapt.errors import ConfigError

__all__ = ["MeasuringProcess", "Outcome", "external_data_refs", "measuring_target", "validate_model"]

log = logging.getLogger("netadapt.device")

_START_TIMEOUT_S = 300.0  # a first start imports torch and onnxruntime in the forkserver; slow on a small board
_WATCH_INTERVAL_S = 0.5  # how often a child checks that the server is still alive


@dataclass(frozen=True)
class Outcome:
    """One model measured by the child."""

    measurement: Measurement
    validate_s: float  # of the child's time, spent checking the model before measuring it


# ------------------------------------------------------------------ validation
def measuring_target(settings: dict[str, Any], input_shape: tuple[int, ...]) -> Target:
    """The `Target` for parsed query `settings` (``batch`` excluded) and the model's input shape.

    Raises:
        BadRequest: 400 for a setting out of range or a provider this device lacks.
    """
    fields = {k: v for k, v in settings.items() if k != "batch"}
    try:
        target = Target.from_settings(input_shape, **fields)
        target.require_provider_here()
        return target
    except ConfigError as error:
        # Target validates ranges and that the provider exists on *this* device.
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"bad setting: {error}") from None


def _sparse_places(sparse: onnx.SparseTensorProto, where: str) -> Iterator[tuple[onnx.TensorProto, str]]:
    yield sparse.values, f"{where} (values)"
    yield sparse.indices, f"{where} (indices)"


def _attribute_places(attribute: onnx.AttributeProto, where: str) -> Iterator[tuple[onnx.TensorProto, str]]:
    # Every field is looked at whatever `attribute.type` says: a crafted model can fill any of them.
    if attribute.HasField("t"):
        yield attribute.t, where
    for tensor in attribute.tensors:
        yield tensor, where
    if attribute.HasField("sparse_tensor"):
        yield from _sparse_places(attribute.sparse_tensor, where)
    for sparse in attribute.sparse_tensors:
        yield from _sparse_places(sparse, where)
    if attribute.HasField("g"):
        yield from _graph_places(attribute.g)  # Loop, Scan and If bodies
    for graph in attribute.graphs:
        yield from _graph_places(graph)


def _node_places(nodes: Any, scope: str) -> Iterator[tuple[onnx.TensorProto, str]]:
    for node in nodes:
        for attribute in node.attribute:
            where = f"attribute {attribute.name!r} of node {node.name!r} ({node.op_type}) in {scope}"
            yield from _attribute_places(attribute, where)


def _graph_places(graph: onnx.GraphProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    scope = f"graph {graph.name!r}"
    for tensor in graph.initializer:
        yield tensor, f"initializer {tensor.name!r} of {scope}"
    for sparse in graph.sparse_initializer:
        yield from _sparse_places(sparse, f"sparse initializer {sparse.values.name!r} of {scope}")
    yield from _node_places(graph.node, scope)


def _model_places(model: onnx.ModelProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    """Every tensor stored in `model`, with where it is, for messages."""
    yield from _graph_places(model.graph)
    for function in model.functions:  # model-local functions
        scope = f"function {function.domain}:{function.name}"
        yield from _node_places(function.node, scope)
        for attribute in function.attribute_proto:  # default attribute values
            yield from _attribute_places(attribute, f"default attribute {attribute.name!r} of {scope}")
    for info in model.training_info:
        yield from _graph_places(info.initialization)
        yield from _graph_places(info.algorithm)


def external_data_refs(model: onnx.ModelProto) -> Iterator[str]:
    """Where `model` keeps tensor data in external files: initializers, sparse initializers,
    node attributes (tensors, sparse tensors and their lists), subgraphs at any depth,
    model-local functions and training graphs.

    Yields one description per such tensor, from the model's own content only, so a
    refusal built from it reads the same whether or not the referenced file exists.
    """
    for tensor, where in _model_places(model):
        # onnx and onnxruntime follow `data_location`; entries without it are refused too.
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            yield where


def validate_model(body: bytes, batch: int | None, max_input_bytes: int) -> tuple[int, int, int, int]:
    """Check that `body` is a measurable, self-contained ONNX model; return its input shape.

    Args:
        body: the uploaded bytes.
        batch: fills a dynamic first dimension; None refuses one.
        max_input_bytes: the largest input tensor, in float32 bytes, the server will allocate.

    Raises:
        BadRequest: 400 with the reason.
    """
    try:
        proto = onnx.load_from_string(body)  # parses only: never follows external data
    except Exception as error:  # protobuf raises DecodeError, RuntimeWarning-ish errors vary by version
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"body is not an ONNX model: {error}") from None
    if not proto.graph.node:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "body is not an ONNX model: the graph has no nodes")
    for where in external_data_refs(proto):
        # Before the checker: it and onnxruntime would open the referenced path on this machine,
        # and their errors would tell a client whether that path exists.
        raise BadRequest(
            HTTPStatus.BAD_REQUEST,
            f"the model uses external data ({where}); send a self-contained model (tensor data inside the file)",
        )
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
    input_bytes = 4 * math.prod(shape)
    if input_bytes > max_input_bytes:
        raise BadRequest(
            HTTPStatus.BAD_REQUEST,
            f"input {model_input.name!r} of shape {'x'.join(map(str, shape))} takes {input_bytes / 2**20:.0f} MiB, "
            f"over this server's --max-input-mb {max_input_bytes / 2**20:g}",
        )
    return tuple(shape)  # type: ignore[return-value]


# ----------------------------------------------------------------------- child
def _die_with(server_pid: int) -> None:
    """End this child when the server ends, however it ends (SIGKILL included)."""
    if sys.platform.startswith("linux"):
        try:  # PR_SET_PDEATHSIG: the kernel kills us when our parent (the forkserver, which follows the server) exits
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
        except (OSError, AttributeError):
            pass

    if os.name != "posix":
        return  # os.kill(pid, 0) would terminate the server on Windows

    def watch() -> None:  # elsewhere, and as a second line: poll the server itself
        while True:
            time.sleep(_WATCH_INTERVAL_S)
            try:
                os.kill(server_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass  # exists (the pid was reused by another user's process at worst)

    threading.Thread(target=watch, name="watch-server", daemon=True).start()


def _enter_deleted_directory() -> None:
    # Relative paths resolve against the cwd: in a deleted directory they name nothing.
    path = tempfile.mkdtemp(prefix="netadapt-measure-")
    os.chdir(path)
    try:
        os.rmdir(path)
    except OSError:  # Windows cannot remove a cwd; the directory is empty at least
        pass


def _measure_one(body: bytes, settings: dict[str, Any], max_input_bytes: int) -> dict[str, Any]:
    started = time.monotonic()
    try:
        shape = validate_model(body, settings.get("batch"), max_input_bytes)
        target = measuring_target(settings, shape)
        validated = time.monotonic()
        try:
            result = measure(body, target)
        except Exception as error:  # onnxruntime refuses some checker-valid graphs (unknown ops, bad types)
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"onnxruntime could not run the model: {error}") from None
    except BadRequest as error:
        return {"status": int(error.status), "error": error.reason}
    except Exception as error:  # a bug: the traceback goes to the server's log (our stderr)
        traceback.print_exc()
        return {"status": int(HTTPStatus.INTERNAL_SERVER_ERROR), "error": f"internal error: {error!r}"}
    return {"measurement": result.to_dict(), "validate_s": validated - started}


def _child_main(connection: Connection, server_pid: int) -> None:
    """The child's loop: (settings JSON, model bytes) in, one JSON answer out, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the server decides
    _die_with(server_pid)
    _enter_deleted_directory()
    connection.send_bytes(b"ready")
    while True:
        try:
            request = json.loads(connection.recv_bytes())
            body = connection.recv_bytes()
        except (EOFError, OSError):
            return  # the server closed its end
        connection.send_bytes(json.dumps(_measure_one(body, request["settings"], request["max_input_bytes"])).encode("utf-8"))


# ---------------------------------------------------------------------- server
def _context() -> Any:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])  # children start with onnx and onnxruntime imported
        return context
    return multiprocessing.get_context("spawn")


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "an unknown status"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class MeasuringProcess:
    """The child that validates and measures models, started on demand and killed when it overruns.

    Args:
        timeout_s: longest wait for one model's validation and measurement (``--measure-timeout``).
        max_input_bytes: largest declared input the child allocates (``--max-input-mb``).

    `start` and `run` are called from one thread (the server's queue); `stop` from any.
    """

    def __init__(self, timeout_s: float, max_input_bytes: int) -> None:
        self.timeout_s = timeout_s
        self.max_input_bytes = max_input_bytes
        self._context = _context()
        self._process: Any = None
        self._connection: Connection | None = None
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The running child's pid; None before the first start and after a kill."""
        process = self._process
        return process.pid if process is not None else None

    def start(self) -> None:
        """Start the child unless it runs already (at server start, so the first model does not wait).

        Raises:
            BadRequest: 503 once stopped; 500 if the child does not come up.
        """
        if self._process is not None and self._process.is_alive():
            return
        self._discard()
        self._refuse_if_closed()
        started = time.monotonic()
        ours, theirs = self._context.Pipe(duplex=True)
        # daemon: multiprocessing kills it at interpreter exit instead of waiting for it
        process = self._context.Process(target=_child_main, args=(theirs, os.getpid()), name="netadapt-measure", daemon=True)
        process.start()
        theirs.close()
        self._process, self._connection = process, ours
        self._refuse_if_closed()  # `stop` ran during the start and may have missed this child
        try:
            ready = ours.poll(_START_TIMEOUT_S) and ours.recv_bytes() == b"ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            code = process.exitcode
            self._discard()
            self._refuse_if_closed()
            raise BadRequest(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                f"the measuring process did not start within {_START_TIMEOUT_S:g} s ({_describe_exit(code)})",
            )
        log.info("measuring process pid %d ready (%.2f s)", process.pid, time.monotonic() - started)

    def run(self, body: bytes, settings: dict[str, Any]) -> Outcome:
        """Validate and measure `body` with the parsed query `settings` in the child.

        The timeout counts from handing the model over, so a child's (re)start is not charged to it.

        Raises:
            BadRequest: 400 for a model or setting the child refused; 504 when the
                timeout passed (the child is killed; the next call starts another);
                500 when the child died (a crash, or killed for memory); 503 once stopped.
        """
        self.start()
        connection, process = self._connection, self._process
        assert connection is not None and process is not None
        try:
            connection.send_bytes(json.dumps({"settings": settings, "max_input_bytes": self.max_input_bytes}).encode("utf-8"))
            connection.send_bytes(body)
            answered = connection.poll(self.timeout_s)
            reply = json.loads(connection.recv_bytes()) if answered else None
        except (EOFError, OSError):
            reply, answered = None, True  # the child is gone: see below
        if reply is not None:
            if "error" in reply:
                raise BadRequest(HTTPStatus(reply["status"]), reply["error"])
            return Outcome(Measurement(**reply["measurement"]), float(reply["validate_s"]))
        self._discard()  # kills it if it still runs
        self._refuse_if_closed()
        if not answered:
            log.warning("measuring process pid %d killed: over --measure-timeout %g s", process.pid, self.timeout_s)
            raise BadRequest(
                HTTPStatus.GATEWAY_TIMEOUT,
                f"measuring this model took longer than this server's limit of {self.timeout_s:g} s "
                "(netadapt device serve --measure-timeout), so it was stopped; send fewer runs or a smaller "
                "model, or ask for a larger --measure-timeout",
            )
        how = _describe_exit(process.exitcode)
        log.warning("measuring process pid %d died (%s)", process.pid, how)
        raise BadRequest(
            HTTPStatus.INTERNAL_SERVER_ERROR,
            f"the measuring process died ({how}) on this model: out of memory, or a crash in onnxruntime",
        )

    def stop(self) -> None:
        """Kill the child and refuse further work. From any thread, any number of times."""
        self._closed = True
        process = self._process
        if process is not None:
            process.kill()  # the queue's thread, if waiting on it, sees the pipe close and cleans up

    def _refuse_if_closed(self) -> None:
        if self._closed:
            self._discard()
            raise BadRequest(HTTPStatus.SERVICE_UNAVAILABLE, "the server is shutting down")

    def _discard(self) -> None:
        """Forget the child, killing it if it still runs."""
        process, connection = self._process, self._connection
        self._process, self._connection = None, None
        if connection is not None:
            connection.close()
        if process is not None:
            process.kill()
            process.join(timeout=5)
