"""`netadapt device serve` (on the target device) and `netadapt device ping` (from the host)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from netadapt.device.limits import ServerLimits, parse_priorities  # light: no onnx, no torch
from netadapt.errors import ConfigError
from netadapt.types import PRIORITIES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("device", help="measure latency on a remote target device")
    commands = parser.add_subparsers(dest="device_command", metavar="SUBCOMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the measurement server on the target device",
        description="Accept ONNX models over HTTP and measure them one at a time with onnxruntime. The bearer "
        "token is read from NETADAPT_DEVICE_TOKEN or --token-file, never from the command line.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 picks a free one)")
    serve.add_argument("--token-file", metavar="FILE", help="file holding the token (default: $NETADAPT_DEVICE_TOKEN)")
    defaults = ServerLimits()
    serve.add_argument(
        "--max-upload-mb", type=float, default=defaults.max_upload_mb, metavar="MB",
        help="larger uploads get 413 (MiB, default %(default)g)",
    )
    serve.add_argument(
        "--max-buffered-mb", type=float, default=None, metavar="MB",
        help="uploads held in memory at once, all clients together; over it 503 (MiB, default twice --max-upload-mb)",
    )
    serve.add_argument(
        "--upload-timeout", type=float, default=defaults.upload_timeout_s, metavar="S",
        help="a request's headers and body must arrive within this many seconds of connecting (default %(default)g)",
    )
    serve.add_argument(
        "--measure-timeout", type=float, default=defaults.measure_timeout_s, metavar="S",
        help="stop a validation and measurement that takes longer; the client gets 504 (default %(default)g)",
    )
    serve.add_argument(
        "--max-connections", type=int, default=defaults.max_connections, metavar="N",
        help="open connections at once; unauthenticated ones are dropped first (default %(default)d)",
    )
    serve.add_argument(
        "--max-input-mb", type=float, default=defaults.max_input_mb, metavar="MB",
        help="a model whose declared input (batch included) takes more memory in float32 gets 400 "
        "(MiB, default %(default)g)",
    )
    serve.add_argument(
        "--allow-priority", default=",".join(defaults.allow_priority), metavar="LEVELS",
        help=f"measure.priority levels clients may ask for, comma-separated, from {','.join(PRIORITIES)} "
        "(default %(default)s; realtime lets one model starve the device)",
    )
    serve.set_defaults(handler=serve_command)

    ping = commands.add_parser("ping", help="check a device server from the host and print its fingerprint")
    ping.add_argument("device", metavar="remote://HOST:PORT")
    ping.add_argument("--token-file", metavar="FILE", help="file holding the token (default: $NETADAPT_DEVICE_TOKEN)")
    ping.set_defaults(handler=ping_command)


def serve_command(args: argparse.Namespace) -> int:
    from netadapt.device.protocol import TOKEN_ENV, load_token  # onnx/onnxruntime only when needed
    from netadapt.device.server import serve

    # Every limit is checked (finite, positive, sane) before anything is bound or started.
    limits = ServerLimits(
        max_upload_mb=args.max_upload_mb,
        max_buffered_mb=args.max_buffered_mb,
        upload_timeout_s=args.upload_timeout,
        measure_timeout_s=args.measure_timeout,
        max_connections=args.max_connections,
        max_input_mb=args.max_input_mb,
        allow_priority=parse_priorities(args.allow_priority),
    )
    token = load_token(args.token_file)
    if not token:
        raise ConfigError(f"refusing to start without a token: set {TOKEN_ENV} or pass --token-file FILE")
    serve(args.host, args.port, token, limits)
    # The listener is closed and the measuring child killed. Leave at once: a
    # handler thread stuck on a slow client, or an exit hook joining a child,
    # must not keep a stopped server alive (it once outlived Ctrl-C).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def ping_command(args: argparse.Namespace) -> int:
    from netadapt.benchmark import Target
    from netadapt.device.client import RemoteMeasurer, parse_device
    from netadapt.device.protocol import load_token

    _, address = parse_device(args.device, key="device")
    assert address is not None
    host, port = address
    measurer = RemoteMeasurer(f"[{host}]:{port}" if ":" in host else f"{host}:{port}", Target(), token=load_token(args.token_file), retries=0)
    health = measurer.health()
    print(f"{args.device}: ok, {health['measurements']} measurement(s) so far, upload limit {health['max_upload_bytes']} bytes")
    print(json.dumps(health["fingerprint"], indent=2))
    return 0
