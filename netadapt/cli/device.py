"""`netadapt device serve` (on the target device) and `netadapt device ping` (from the host)."""

from __future__ import annotations

import argparse
import json

from netadapt.errors import ConfigError


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
    serve.add_argument(
        "--max-upload-mb", type=float, default=256.0, metavar="MB", help="larger uploads get 413 (MiB, default 256)"
    )
    serve.add_argument(
        "--upload-timeout", type=float, default=30.0, metavar="S", help="drop a client silent this long mid-upload (default 30)"
    )
    serve.set_defaults(handler=serve_command)

    ping = commands.add_parser("ping", help="check a device server from the host and print its fingerprint")
    ping.add_argument("device", metavar="remote://HOST:PORT")
    ping.add_argument("--token-file", metavar="FILE", help="file holding the token (default: $NETADAPT_DEVICE_TOKEN)")
    ping.set_defaults(handler=ping_command)


def serve_command(args: argparse.Namespace) -> int:
    from netadapt.device_server import TOKEN_ENV, load_token, serve  # onnx/onnxruntime only when needed

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0-65535, got {args.port}")
    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    token = load_token(args.token_file)
    if not token:
        raise ConfigError(f"refusing to start without a token: set {TOKEN_ENV} or pass --token-file FILE")
    serve(args.host, args.port, token, int(args.max_upload_mb * 2**20), args.upload_timeout)
    return 0


def ping_command(args: argparse.Namespace) -> int:
    from netadapt.benchmark import Target
    from netadapt.device_server import load_token
    from netadapt.remote import RemoteMeasurer, parse_device

    _, address = parse_device(args.device, key="device")
    assert address is not None
    host, port = address
    measurer = RemoteMeasurer(f"[{host}]:{port}" if ":" in host else f"{host}:{port}", Target(), token=load_token(args.token_file), retries=0)
    health = measurer.health()
    print(f"{args.device}: ok, {health['measurements']} measurement(s) so far, upload limit {health['max_upload_bytes']} bytes")
    print(json.dumps(health["fingerprint"], indent=2))
    return 0
