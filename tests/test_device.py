"""The remote target: a real `netadapt device serve` on loopback, in a subprocess."""

from __future__ import annotations

import errno
import http.client
import http.server
import json
import logging
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import onnx
import pytest

from mobilenetv3 import build, preset
from netadapt.benchmark import LocalMeasurer, Measurer, Target
from netadapt.cli.main import main
from netadapt.config import MeasureConfig, TargetConfig
from netadapt.device.limits import ServerLimits
from netadapt.device.protocol import parse_settings, target_settings
from netadapt.device.server import DeviceServer
from netadapt.errors import ConfigError, DeviceError
from netadapt.measurers import make_measurer
from netadapt.onnx_export import onnx_bytes
from netadapt.device.client import RemoteMeasurer, parse_device

TOKEN = "test-token-0123456789"
REPO = Path(__file__).resolve().parents[1]
CANARY = "canary.bin"
LIGHT = Target.from_settings((1, 1, 32, 32), warmup_runs=1, min_runs=3, min_seconds=0.01)
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text()


def start_server(log: Path, *args: str, token_env: bool = True, port: int = 0, cwd: Path | None = None,
                 max_open_files: int | None = None, prelude: str = "") -> Server:
    """Start `netadapt device serve` and wait for its 'listening on' line (the real port).

    `prelude`: Python statements the server's process runs before the CLI (a fault to inject).
    """
    env = {k: v for k, v in os.environ.items() if k != "NETADAPT_DEVICE_TOKEN"}
    if token_env:
        env["NETADAPT_DEVICE_TOKEN"] = TOKEN
    # The checkout under test, wherever the server's cwd is.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONFAULTHANDLER"] = "1"  # a server killed with SIGABRT writes every thread's stack to its log
    entry = ["-m", "netadapt.cli.main"]
    if prelude:
        entry = ["-c", f"{prelude}\nimport sys\nfrom netadapt.cli.main import main\nsys.exit(main(sys.argv[1:]))"]
    command = [sys.executable, *entry, "device", "serve", "--port", str(port), *args]

    def limit_open_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max_open_files, max_open_files))

    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log.open("w"), env=env, text=True, cwd=cwd,
                               preexec_fn=limit_open_files if max_open_files else None)
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    if not selector.select(timeout=120):  # a hang, not a timing: startup imports onnxruntime
        process.kill()
        raise RuntimeError(f"device server printed nothing; log: {log.read_text()}")
    line = process.stdout.readline()
    if "listening on http://" not in line:
        process.kill()
        raise RuntimeError(f"device server did not start: {line!r}; log: {log.read_text()}")
    return Server(process, int(line.split()[2].rsplit(":", 1)[1]), log)


def post_mortem(server: Server) -> str:
    """Signal masks and kernel wait channel of each thread of a hung server, then its log after
    SIGABRT, under which faulthandler writes every thread's Python stack (for a rare hang)."""
    pid, lines = server.process.pid, []
    for task in sorted(os.listdir(f"/proc/{pid}/task")):
        status = Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines()
        wanted = [line.replace("\t", " ") for line in status if line.startswith(("Name", "State", "Sig", "Shd"))]
        wchan = Path(f"/proc/{pid}/task/{task}/wchan").read_text()
        lines.append(f"thread {task}: wchan {wchan}; " + "; ".join(wanted))
    server.process.send_signal(signal.SIGABRT)
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
    return "\n".join(lines) + "\n--- log ---\n" + server.log_text()


def stop(server: Server) -> None:
    server.process.terminate()
    server.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    home = tmp_path_factory.mktemp("device")
    (home / CANARY).write_bytes(b"\0" * 64)  # a file in the server's cwd that a model must not be able to name
    # Small limits keep the 413, 408, 503 and 504 cases quick: 1 MiB uploads, 1.5 MiB held at once,
    # 2 s per request, 3 s per measurement.
    running = start_server(home / "server.log", "--max-upload-mb", "1", "--max-buffered-mb", "1.5",
                           "--upload-timeout", "2", "--measure-timeout", "3", cwd=home)
    yield running
    stop(running)


@pytest.fixture(scope="module")
def model() -> bytes:
    return onnx_bytes(build(preset("small", width=0.25, num_classes=10, in_channels=1)), (1, 1, 32, 32))


def request(server: Server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def measurements_done(server: Server) -> int:
    status, answer = request(server, "GET", "/", headers=HEADERS)
    assert status == 200
    return answer["measurements"]


def raw_exchange(server: Server, head: bytes, body: bytes = b"", close_early: bool = False) -> bytes:
    """Send bytes on a plain socket; return everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(head + body)
        if close_early:
            return b""
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def post_head(length: int, token: str = TOKEN, query: str = "min_runs=3&min_seconds=0.01", extra: str = "") -> bytes:
    return (
        f"POST /measure?{query} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def is_waiting(sock: socket.socket) -> bool:
    """Whether the server holds `sock` open without having answered (it sent nothing and did not close)."""
    sock.settimeout(0.2)
    try:
        sock.recv(1, socket.MSG_PEEK)
        return False  # an answer, or the end of the connection
    except socket.timeout:
        return True
    except OSError:
        return False


# ------------------------------------------------------------------ round trip
def test_round_trip_returns_statistics_and_the_device_fingerprint(server, model):
    before = measurements_done(server)
    measurer = RemoteMeasurer(server.address, LIGHT, token=TOKEN)
    assert isinstance(measurer, Measurer)
    result = measurer.measure(model)
    assert result.runs >= 3
    assert 0 < result.p10_ms <= result.median_ms <= result.p90_ms
    assert result.mean_ms > 0 and result.cv >= 0
    status, health = request(server, "GET", "/?min_runs=3&min_seconds=0.01", headers=HEADERS)
    assert status == 200
    assert result.fingerprint == health["fingerprint"] == measurer.fingerprint()
    # Loopback: the device is this machine, so its fingerprint is the local one.
    assert measurer.fingerprint() == LocalMeasurer(LIGHT).fingerprint()
    assert measurements_done(server) == before + 1


def test_settings_reach_the_device(server, model):
    measurer = RemoteMeasurer(server.address, LIGHT.with_settings(threads=2, optimization_level="basic", min_runs=7), token=TOKEN)
    result = measurer.measure(model)
    assert result.runs >= 7
    assert result.fingerprint["threads"] == 2 and result.fingerprint["optimization_level"] == "basic"


def test_every_target_setting_travels_to_the_device():
    target = LIGHT.with_settings(threads=3, inter_op_threads=2, optimization_level="extended", allow_spinning=False,
                                 warmup_runs=4, min_runs=6, min_seconds=0.125, max_runs=99)
    query = urlencode(target_settings(target))
    settings = parse_settings(query)
    assert settings.pop("batch") == target.input_shape[0]
    assert Target.from_settings(target.input_shape, **settings) == target


def test_health_check_without_token_shows_no_fingerprint(server):
    status, answer = request(server, "GET", "/")
    assert status == 200 and answer["status"] == "ok"
    assert "fingerprint" not in answer and "measurements" not in answer


# ------------------------------------------------------------------------ 401
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
def test_measure_without_a_valid_token_is_401_and_measures_nothing(server, model, headers):
    before = measurements_done(server)
    status, answer = request(server, "POST", "/measure?min_runs=3", body=model, headers=headers)
    assert status == 401 and "token" in answer["error"]
    assert measurements_done(server) == before


def test_wrong_token_is_a_clear_client_error(server, model):
    status, _ = request(server, "GET", "/", headers={"Authorization": "Bearer wrong"})
    assert status == 401
    with pytest.raises(DeviceError, match="rejected the token"):
        RemoteMeasurer(server.address, LIGHT, token="wrong").measure(model)


# ------------------------------------------------------------------------ 413
def test_oversized_upload_is_413_before_the_body_is_read(server):
    before = measurements_done(server)
    # Headers only: had the server waited for the body it would answer 408 after its upload timeout.
    answer = raw_exchange(server, post_head(10**9))
    assert answer.startswith(b"HTTP/1.0 413"), answer[:200]
    assert b"limit of 1048576 bytes" in answer
    assert measurements_done(server) == before


def test_client_refuses_a_model_over_the_device_limit(server):
    before = measurements_done(server)
    big = b"\0" * (2**20 + 1)  # the client checks the size before it uploads anything
    with pytest.raises(DeviceError, match="over the upload limit"):
        RemoteMeasurer(server.address, LIGHT, token=TOKEN).measure(big)
    assert measurements_done(server) == before


# ------------------------------------------------------------------------ 400
def _model_without_nodes() -> bytes:
    graph = onnx.helper.make_graph([], "empty", [], [])
    return onnx.helper.make_model(graph).SerializeToString()


def _model_with_external_data(model: bytes) -> bytes:
    proto = onnx.load_from_string(model)
    tensor = proto.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "/etc/hostname"
    return proto.SerializeToString()


def _model_with_dynamic_size(model: bytes) -> bytes:
    proto = onnx.load_from_string(model)
    proto.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    return proto.SerializeToString()


def _model_with_a_huge_input(model: bytes) -> bytes:
    proto = onnx.load_from_string(model)
    for dim in proto.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_value = 65536  # 1x1x65536x65536 floats: 16 GiB, allocated before the first run
    return proto.SerializeToString()


@pytest.mark.parametrize(
    "make_body, reason",
    [
        (lambda model: b"definitely not a protobuf", "not an ONNX model"),
        (lambda model: b"\x80\x03cos\nsystem\n." + model[:10], "not an ONNX model"),  # a pickle is never unpickled
        (lambda model: _model_without_nodes(), "no nodes"),
        (_model_with_dynamic_size, "dimension 2 is not fixed"),
        (_model_with_external_data, "uses external data"),  # would make the device open a local file
        (_model_with_a_huge_input, "takes 16384 MiB, over this server's --max-input-mb 1024"),
    ],
)
def test_a_body_that_is_not_a_measurable_onnx_model_is_400_with_the_reason(server, model, make_body, reason):
    before = measurements_done(server)
    status, answer = request(server, "POST", "/measure", body=make_body(model), headers=HEADERS)
    assert status == 400 and reason in answer["error"]
    assert measurements_done(server) == before


@pytest.mark.parametrize(
    "query, named",
    [
        ("threads=many", "'threads'"),
        ("min_seconds=soon", "'min_seconds'"),
        ("allow_spinning=maybe", "'allow_spinning'"),
        ("colour=blue", "'colour'"),
        ("optimization_level=turbo", "optimization_level"),
        ("provider=NoSuchExecutionProvider", "NoSuchExecutionProvider"),
        ("min_runs=0", "min_runs"),
    ],
)
def test_a_bad_setting_is_400_naming_it(server, model, query, named):
    status, answer = request(server, "POST", f"/measure?{query}", body=model, headers=HEADERS)
    assert status == 400 and named in answer["error"]


def test_a_device_refusal_is_not_retried(server, caplog):
    measurer = RemoteMeasurer(server.address, LIGHT, token=TOKEN, retries=3, backoff_s=0.01)
    with caplog.at_level(logging.WARNING, logger="netadapt.device.client"):
        with pytest.raises(DeviceError, match=r"HTTP 400\): body is not an ONNX model"):
            measurer.measure(b"junk")
    assert "retrying" not in caplog.text


# ------------------------------------------------------- dropped / stalled uploads
def test_a_client_that_drops_mid_upload_does_not_wedge_the_queue(server, model):
    raw_exchange(server, post_head(len(model)), model[: len(model) // 2], close_early=True)
    # Bounded only so a wedged queue fails the test instead of hanging it.
    result = RemoteMeasurer(server.address, LIGHT, token=TOKEN, timeout_s=30, retries=0).measure(model)
    assert result.runs >= 3
    deadline = time.monotonic() + 30
    while "disconnected after" not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"client disconnected after {len(model) // 2} of {len(model)} bytes" in server.log_text()


def test_a_stalled_upload_holds_no_lock_and_is_dropped(server, model):
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as stalled:
        stalled.sendall(post_head(len(model)) + model[:100])
        # Measured while the stalled upload is still open.
        assert RemoteMeasurer(server.address, LIGHT, token=TOKEN, timeout_s=30, retries=0).measure(model).runs >= 3
        answer = stalled.recv(65536)  # the server gives up after its 2 s upload timeout
    assert answer.startswith(b"HTTP/1.0 408"), answer[:200]


# ---------------------------------------------------------- concurrent clients
def test_two_concurrent_clients_are_measured_one_after_the_other(server, model):
    barrier = threading.Barrier(2)
    results: dict[int, tuple] = {}
    errors: list[BaseException] = []
    # Long enough (0.3 s each) that two unserialised measurements would overlap.
    target = LIGHT.with_settings(min_seconds=0.3)

    def client(index: int) -> None:
        try:
            measurer = RemoteMeasurer(server.address, target, token=TOKEN)
            measurer.fingerprint()
            barrier.wait(timeout=60)
            result = measurer.measure(model)
            results[index] = (result, measurer.last_server_timing)
        except BaseException as error:  # re-raised below in the main thread
            errors.append(error)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(results) == 2 and all(r.runs >= 3 for r, _ in results.values())
    (_, first), (_, second) = sorted(results.values(), key=lambda item: item[1]["start_s"])
    assert first["sequence"] != second["sequence"]
    assert first["end_s"] <= second["start_s"], "measurements overlapped"


# ---------------------------------------------------------------- client retries
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_client_retries_until_the_device_comes_up(tmp_path, model, caplog):
    port = _free_port()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    started: list[Server] = []

    def start_later() -> None:
        time.sleep(0.5)  # the client's first attempt finds nothing listening
        started.append(start_server(tmp_path / "late.log", "--token-file", str(token_file), token_env=False, port=port))

    launcher = threading.Thread(target=start_later)
    launcher.start()
    try:
        measurer = RemoteMeasurer(f"127.0.0.1:{port}", LIGHT, token=TOKEN, retries=12, backoff_s=0.1)
        with caplog.at_level(logging.WARNING, logger="netadapt.device.client"):
            result = measurer.measure(model)
        assert result.runs >= 3
        assert "retrying" in caplog.text
    finally:
        launcher.join(timeout=180)
        for running in started:
            stop(running)


def test_client_gives_up_on_a_dead_port_with_a_clear_error():
    port = _free_port()
    measurer = RemoteMeasurer(f"127.0.0.1:{port}", LIGHT, token=TOKEN, retries=2, backoff_s=0.01)
    with pytest.raises(DeviceError, match=rf"127\.0\.0\.1:{port} unreachable after 3 attempt\(s\)") as error:
        measurer.fingerprint()
    assert "last error" in str(error.value)


def test_an_answer_from_an_older_server_is_a_clear_error(model):
    # A server from before the "min" statistic answers without min_ms.
    fingerprint = LocalMeasurer(LIGHT).fingerprint()
    old_answer = {"median_ms": 1.0, "p10_ms": 0.9, "p90_ms": 1.2, "mean_ms": 1.0, "cv": 0.1, "runs": 3,
                  "quiet_ms": 1.0, "latency_ms": 1.0, "fingerprint": fingerprint}

    class OldServer(http.server.BaseHTTPRequestHandler):
        def _answer(self, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._answer({"fingerprint": fingerprint, "max_upload_bytes": 0})

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self._answer(old_answer)

        def log_message(self, *args) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), OldServer) as old:
        threading.Thread(target=old.serve_forever, daemon=True).start()
        try:
            measurer = RemoteMeasurer(f"127.0.0.1:{old.server_address[1]}", LIGHT, token=TOKEN)
            with pytest.raises(DeviceError, match=r"without \['min_ms'\].*older netadapt"):
                measurer.measure(model)
        finally:
            old.shutdown()


# ------------------------------------------------------------ config and CLI
@pytest.mark.parametrize(
    "device, expected",
    [
        ("local", ("local", None)),
        ("remote://127.0.0.1:8765", ("remote", ("127.0.0.1", 8765))),
        ("remote://phone.lan:9000", ("remote", ("phone.lan", 9000))),
        ("remote://[::1]:8765", ("remote", ("::1", 8765))),
    ],
)
def test_parse_device(device, expected):
    assert parse_device(device) == expected


@pytest.mark.parametrize(
    "device",
    ["remote", "http://127.0.0.1:8765", "remote://127.0.0.1", "remote://:8765", "remote://h:99999", "remote://h:0",
     "remote://h:80/path", "remote://user:pw@h:80", "Local"],
)
def test_parse_device_rejects_malformed_devices_naming_the_key(device):
    with pytest.raises(ConfigError, match="target.device"):
        parse_device(device)


def test_make_measurer_picks_local_or_remote(tmp_path, monkeypatch):
    monkeypatch.delenv("NETADAPT_DEVICE_TOKEN", raising=False)
    shape = (1, 1, 32, 32)
    assert isinstance(make_measurer(TargetConfig(), MeasureConfig(), shape), LocalMeasurer)
    with pytest.raises(ConfigError, match="NETADAPT_DEVICE_TOKEN"):
        make_measurer(TargetConfig(device="remote://127.0.0.1:8765"), MeasureConfig(), shape)
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    remote = make_measurer(
        TargetConfig(device="remote://127.0.0.1:8765", token_file=str(token_file), threads=2, retries=1),
        MeasureConfig(min_runs=5),
        shape,
    )
    assert isinstance(remote, RemoteMeasurer)
    assert (remote.host, remote.port, remote.token, remote.retries) == ("127.0.0.1", 8765, "from-file", 1)
    assert remote.target.session.threads == 2 and remote.target.measuring.min_runs == 5
    assert "from-file" not in repr(remote)
    with pytest.raises(ConfigError, match="target.token_file"):
        make_measurer(TargetConfig(device="remote://h:1", token_file=str(tmp_path / "missing")), MeasureConfig(), shape)


def test_serve_refuses_to_start_without_a_token(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("NETADAPT_DEVICE_TOKEN", raising=False)
    assert main(["device", "serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "NETADAPT_DEVICE_TOKEN" in err and "--token-file" in err
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert main(["device", "serve", "--port", "0", "--token-file", str(empty)]) == 2
    assert "token file is empty" in capsys.readouterr().err


def test_ping_prints_the_fingerprint(server, monkeypatch, capsys):
    monkeypatch.setenv("NETADAPT_DEVICE_TOKEN", TOKEN)
    assert main(["device", "ping", f"remote://{server.address}"]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and '"onnxruntime"' in out


def test_bench_measures_on_the_remote_target(server, monkeypatch, capsys):
    monkeypatch.setenv("NETADAPT_DEVICE_TOKEN", TOKEN)
    before = measurements_done(server)
    assert main(["bench", "--preset", "small", "--width", "0.35", "--classes", "10", "--input", "1x1x32x32",
                 "--target", f"remote://{server.address}", "--min-runs", "3", "--min-seconds", "0.01",
                 "--warmup", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["median_ms"] > 0 and result["fingerprint"]["onnxruntime"]
    assert measurements_done(server) == before + 1, "the measurement must happen on the device"


# ------------------------------------------------------- external data anywhere
def _external_tensor(location: str, name: str = "leak") -> onnx.TensorProto:
    tensor = onnx.helper.make_tensor(name, onnx.TensorProto.FLOAT, [4], [0.0] * 4)
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return tensor


def _external_sparse(location: str) -> onnx.SparseTensorProto:
    indices = onnx.helper.make_tensor("leak_indices", onnx.TensorProto.INT64, [4], [0, 1, 2, 3])
    return onnx.helper.make_sparse_tensor(_external_tensor(location), indices, [4])


def _constant(location: str, name: str = "leak") -> onnx.NodeProto:
    return onnx.helper.make_node("Constant", [], [name], value=_external_tensor(location))


def _subgraph(*nodes: onnx.NodeProto, name: str = "sub") -> onnx.GraphProto:
    output = onnx.helper.make_tensor_value_info(nodes[-1].output[0], onnx.TensorProto.FLOAT, [4])
    return onnx.helper.make_graph(list(nodes), name, [], [output])


def _custom(**attributes) -> onnx.NodeProto:
    return onnx.helper.make_node("Leak", [], ["leak"], domain="test.leak", **attributes)


def _in_function(proto: onnx.ModelProto, location: str) -> None:
    proto.functions.append(onnx.helper.make_function(
        "test.leak", "Leak", [], ["leak"], [_constant(location)], [onnx.helper.make_opsetid("", 17)]))


def _in_function_default(proto: onnx.ModelProto, location: str) -> None:
    _in_function(proto, location)
    proto.functions[0].node[0].attribute[0].t.CopyFrom(onnx.helper.make_tensor("ok", onnx.TensorProto.FLOAT, [1], [0.0]))
    proto.functions[0].attribute_proto.append(onnx.helper.make_attribute("value", _external_tensor(location)))


# Every place ONNX can keep a tensor; each adds one tensor whose data lives in `location`.
EXTERNAL_DATA_PLACES = {
    "initializer": lambda proto, loc: proto.graph.initializer.append(_external_tensor(loc)),
    "sparse initializer": lambda proto, loc: proto.graph.sparse_initializer.append(_external_sparse(loc)),
    "Constant value": lambda proto, loc: proto.graph.node.append(_constant(loc)),
    "Constant sparse_value": lambda proto, loc: proto.graph.node.append(
        onnx.helper.make_node("Constant", [], ["leak"], sparse_value=_external_sparse(loc))),
    "tensor list attribute": lambda proto, loc: proto.graph.node.append(_custom(tensors=[_external_tensor(loc)])),
    "sparse tensor list attribute": lambda proto, loc: proto.graph.node.append(
        _custom(sparse_tensors=[_external_sparse(loc)])),
    "If branch inside a Loop body": lambda proto, loc: proto.graph.node.append(onnx.helper.make_node(
        "Loop", ["", ""], ["leak"], body=_subgraph(onnx.helper.make_node(
            "If", ["cond"], ["leak"], then_branch=_subgraph(_constant(loc)), else_branch=_subgraph(_constant("x.bin")))))),
    "graph list attribute": lambda proto, loc: proto.graph.node.append(_custom(graphs=[_subgraph(_constant(loc))])),
    "model-local function": _in_function,
    "function default attribute": _in_function_default,
    "training graph": lambda proto, loc: proto.training_info.add().initialization.initializer.append(_external_tensor(loc)),
}


@pytest.mark.parametrize("place", sorted(EXTERNAL_DATA_PLACES))
def test_external_data_is_refused_anywhere_with_one_message_whether_or_not_the_file_exists(server, model, place):
    before = measurements_done(server)
    answers = []
    for location in (CANARY, "absent.bin"):  # the canary exists in the server's cwd, the other file nowhere
        proto = onnx.load_from_string(model)
        EXTERNAL_DATA_PLACES[place](proto, location)
        answers.append(request(server, "POST", "/measure", body=proto.SerializeToString(), headers=HEADERS))
    (status, present), (status_absent, absent) = answers
    assert status == status_absent == 400
    assert "uses external data" in present["error"]
    assert present == absent, "the answer must not tell whether the file exists"
    assert measurements_done(server) == before


# ------------------------------------------------------------ capped settings
@pytest.mark.parametrize(
    "query, named",
    [
        ("min_seconds=inf", "'min_seconds'"),
        ("min_seconds=nan", "'min_seconds'"),
        ("min_seconds=60", "--measure-timeout"),
        ("max_runs=1000000000000", "cap of 1000000"),
        ("warmup_runs=1000000000000", "'warmup_runs'"),
        ("windows=1000000000", "'windows'"),
        (f"threads={(os.cpu_count() or 1) + 1}", "'threads'"),
        ("batch=100000000", "'batch'"),
        ("min_runs=1000000000000", "'min_runs'"),
        (f"inter_op_threads={(os.cpu_count() or 1) + 1}", "'inter_op_threads'"),
        ("priority=realtime", "--allow-priority"),
    ],
)
def test_a_setting_over_the_servers_cap_is_400_before_the_upload(server, query, named):
    # Headers only: had the server waited for the body it would answer 408 after its upload timeout.
    answer = raw_exchange(server, post_head(1000, query=query))
    assert answer.startswith(b"HTTP/1.0 400"), answer[:300]
    assert named.encode() in answer
    assert b"cap" in answer or b"not allowed" in answer


@pytest.mark.parametrize("batch", ["0", "-3"])
def test_a_batch_under_one_is_400_before_the_upload(server, batch):
    answer = raw_exchange(server, post_head(1000, query=f"batch={batch}"))
    assert answer.startswith(b"HTTP/1.0 400"), answer[:300]
    assert b"'batch'" in answer and b">= 1" in answer


# ------------------------------------------------- whole-request deadline
def trickle(server: Server, head: bytes, drip: bytes, interval_s: float = 0.25) -> tuple[float, bytes]:
    """Send `head`, then `drip` one byte per `interval_s`, until the server closes or `drip` runs out.

    Returns the seconds from connecting to the close (inf if it never closed) and what the server sent.
    """
    started = time.monotonic()
    received = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        for byte in drip:
            sock.settimeout(interval_s)
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    return time.monotonic() - started, received
                received += chunk
            except socket.timeout:
                pass
            except OSError:
                return time.monotonic() - started, received
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return time.monotonic() - started, received
    return float("inf"), received


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_trickling_client_is_dropped_at_the_request_deadline(server, phase):
    # One byte every 0.25 s never trips a per-read timeout; the fixture's 2 s deadline covers the whole request.
    if phase == "headers":
        head, drip = b"GET / HTTP/1.1\r\n", b"X-Slow: " + b"a" * 40
    else:
        head, drip = post_head(1000), b"\0" * 40
    elapsed, answer = trickle(server, head, drip)
    assert elapsed < 4.0, f"still open after {len(drip) * 0.25:g} s of trickling"
    if phase == "body":
        assert answer.startswith(b"HTTP/1.0 408") and b"--upload-timeout" in answer, answer[:300]


# ---------------------------------------------------- connection cap
def test_idle_connections_cannot_lock_out_clients_under_a_low_file_limit(tmp_path):
    # The reported case: 80 files, 78 idle connections, and health checks timed out.
    running = start_server(tmp_path / "server.log", "--max-connections", "16", "--upload-timeout", "20",
                           max_open_files=80)
    idle: list[socket.socket] = []
    try:
        authenticated = socket.create_connection(("127.0.0.1", running.port), timeout=10)
        idle.append(authenticated)
        authenticated.sendall(post_head(1000) + b"\0" * 10)
        time.sleep(0.5)  # its handler reads the headers and checks the token meanwhile
        for _ in range(78):
            idle.append(socket.create_connection(("127.0.0.1", running.port), timeout=10))
        status, answer = request(running, "GET", "/", headers=HEADERS)
        assert status == 200 and "fingerprint" in answer
        assert is_waiting(authenticated), "an authenticated upload was dropped before the idle connections"
        assert "dropped the unauthenticated connection" in running.log_text()
    finally:
        for sock in idle:
            sock.close()
        stop(running)


def test_failed_accepts_are_logged_and_backed_off(caplog):
    # In-process, with the listener replaced: running out of file descriptors for real would take the test with it.
    server = DeviceServer("127.0.0.1", 0, TOKEN, ServerLimits())
    listener = server.socket
    tries: list[float] = []

    class Exhausted:
        """The listener of a process out of file descriptors: readable, but every accept fails."""

        def fileno(self) -> int:
            return listener.fileno()

        def accept(self):
            tries.append(time.monotonic())
            raise OSError(errno.EMFILE, "Too many open files")

        def close(self) -> None:
            listener.close()

    server.socket = Exhausted()
    waiting = socket.create_connection(server.address, timeout=10)  # keeps the listener readable
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    try:
        with caplog.at_level(logging.WARNING, logger="netadapt.device"):
            thread.start()
            time.sleep(1.0)
            server.shutdown()
            thread.join(timeout=10)
    finally:
        server.server_close()
        waiting.close()
    # Pauses doubling from 0.05 s allow about five tries in that second; a spinning loop makes thousands.
    assert 1 <= len(tries) <= 15, f"{len(tries)} accepts in a second"
    assert "accepting a connection failed" in caplog.text and "Too many open files" in caplog.text


# ------------------------------------------------ framing and memory held
@pytest.mark.parametrize(
    "extra, reason",
    [
        ("Content-Length: 20\r\n", b"Content-Length given 2 times"),
        ("Transfer-Encoding: chunked\r\n", b"Transfer-Encoding is not accepted"),
    ],
)
def test_ambiguous_framing_is_400(server, extra, reason):
    before = measurements_done(server)
    answer = raw_exchange(server, post_head(10, extra=extra), b"\0" * 20)
    assert answer.startswith(b"HTTP/1.0 400"), answer[:300]
    assert reason in answer
    assert measurements_done(server) == before


def test_uploads_held_at_once_are_capped_in_total(server, model, caplog):
    junk = b"\0" * 600_000  # under the 1 MiB upload limit, but not beside a 1 MiB upload within 1.5 MiB
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as held:
        held.sendall(post_head(2**20) + b"\0" * 100)
        time.sleep(0.2)  # its handler reserves the 1 MiB meanwhile
        answer = raw_exchange(server, post_head(len(junk)))  # headers only: answered before any body
        assert answer.startswith(b"HTTP/1.0 503") and b"--max-buffered-mb" in answer, answer[:300]
        measurer = RemoteMeasurer(server.address, LIGHT, token=TOKEN, retries=1, backoff_s=0.01)
        with caplog.at_level(logging.WARNING, logger="netadapt.device.client"):
            with pytest.raises(DeviceError, match=r"busy after 2 attempt\(s\).*HTTP 503\): .*--max-buffered-mb"):
                measurer.measure(junk)
        assert "retrying" in caplog.text  # busy is worth retrying, unlike a refusal
    # Released with the connection: the next upload is measured (a 503 in the gap is retried).
    result = RemoteMeasurer(server.address, LIGHT, token=TOKEN, retries=5, backoff_s=0.1).measure(model)
    assert result.runs >= 3


# ---------------------------------------------- measure timeout and Ctrl-C
def _model_that_never_finishes() -> bytes:
    """A checker-valid model with a `Loop` of 2^62 iterations: onnxruntime runs it for ever."""
    helper, T = onnx.helper, onnx.TensorProto
    shape = [1, 1, 2, 2]
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "v_in"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", T.INT64, []), helper.make_tensor_value_info("cond_in", T.BOOL, []),
         helper.make_tensor_value_info("v_in", T.FLOAT, shape)],
        [helper.make_tensor_value_info("cond_out", T.BOOL, []), helper.make_tensor_value_info("v_out", T.FLOAT, shape)],
    )
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["trips"], value=helper.make_tensor("trips", T.INT64, [], [2**62])),
         helper.make_node("Constant", [], ["go"], value=helper.make_tensor("go", T.BOOL, [], [True])),
         helper.make_node("Loop", ["trips", "go", "x"], ["y"], body=body)],
        "forever",
        [helper.make_tensor_value_info("x", T.FLOAT, shape)],
        [helper.make_tensor_value_info("y", T.FLOAT, shape)],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def test_a_measurement_over_the_timeout_is_stopped_and_the_queue_goes_on(server, model, caplog):
    measurer = RemoteMeasurer(server.address, LIGHT, token=TOKEN, retries=3, backoff_s=0.01, timeout_s=60)
    with caplog.at_level(logging.WARNING, logger="netadapt.device.client"):
        with pytest.raises(DeviceError, match=r"HTTP 504\): .*--measure-timeout"):
            measurer.measure(_model_that_never_finishes())
    assert "retrying" not in caplog.text  # the same model would overrun again
    assert measurer.measure(model).runs >= 3  # a fresh measuring process took over
    assert "killed: over --measure-timeout" in server.log_text()


def test_ctrl_c_ends_the_server_during_a_measurement(tmp_path):
    running = start_server(tmp_path / "server.log", "--measure-timeout", "600")
    forever = _model_that_never_finishes()
    try:
        deadline = time.monotonic() + 120
        while "measuring process pid" not in running.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)  # the server starts its measuring process at start-up
        child = int(running.log_text().split("measuring process pid ")[1].split()[0])
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as busy:
            busy.sendall(post_head(len(forever)) + forever)
            time.sleep(1.0)  # the model reaches the measuring process and runs
            running.process.send_signal(signal.SIGINT)
            try:
                code = running.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the server outlived Ctrl-C by 30 s; its state:\n{post_mortem(running)}")
            assert code in (0, 130)  # ended, rather than hung on the measurement
    finally:
        if running.process.poll() is None:
            running.process.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the measuring process outlived the server")


def test_ctrl_c_ends_the_server_even_when_an_exit_hook_hangs(tmp_path):
    # A library's exit hook that never returns (an unbounded join at interpreter exit) must
    # not keep a stopped server alive: `device serve` leaves without running exit hooks.
    hang = "import atexit, threading\natexit.register(threading.Event().wait)"
    running = start_server(tmp_path / "server.log", prelude=hang)
    try:
        running.process.send_signal(signal.SIGINT)
        try:
            code = running.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server outlived Ctrl-C by 30 s; its state:\n{post_mortem(running)}")
    finally:
        if running.process.poll() is None:
            running.process.kill()
    assert code == 0 and "stopped" in running.log_text()


# ------------------------------------------------------------ server flags
@pytest.mark.parametrize(
    "flags, named",
    [
        (["--upload-timeout", "nan"], "--upload-timeout"),
        (["--upload-timeout", "inf"], "--upload-timeout"),
        (["--upload-timeout", "0"], "--upload-timeout"),
        (["--max-upload-mb", "nan"], "--max-upload-mb"),
        (["--max-upload-mb", "4096"], "--max-upload-mb"),
        (["--max-upload-mb", "8", "--max-buffered-mb", "4"], "--max-buffered-mb"),
        (["--max-buffered-mb", "inf"], "--max-buffered-mb"),
        (["--measure-timeout", "-1"], "--measure-timeout"),
        (["--measure-timeout", "nan"], "--measure-timeout"),
        (["--max-connections", "0"], "--max-connections"),
        (["--max-input-mb", "0"], "--max-input-mb"),
        (["--port", "70000"], "--port"),
        (["--allow-priority", "normal,turbo"], "--allow-priority"),
        (["--allow-priority", ""], "--allow-priority"),
    ],
)
def test_serve_refuses_a_bad_flag_before_starting(monkeypatch, capsys, flags, named):
    monkeypatch.setenv("NETADAPT_DEVICE_TOKEN", TOKEN)

    def started(self, *args, **kwargs):
        raise AssertionError("the server started")  # instead of serving for ever

    monkeypatch.setattr(DeviceServer, "serve_forever", started)
    assert main(["device", "serve", "--port", "0", *flags]) == 2
    assert named in capsys.readouterr().err


def test_serve_refuses_more_connections_than_the_file_limit_allows(monkeypatch, capsys):
    monkeypatch.setenv("NETADAPT_DEVICE_TOKEN", TOKEN)
    monkeypatch.setattr("netadapt.device.server._fd_limit", lambda: 80)
    assert main(["device", "serve", "--port", "0", "--max-connections", "64"]) == 2
    err = capsys.readouterr().err
    assert "--max-connections" in err and "ulimit -n" in err
