"""Latency measured on a remote device: the server that runs there, and the client a search uses.

- `protocol`: what both sides agree on (paths, token, settings' encoding);
- `server`: `netadapt device serve`, with `worker` (the measuring child it
  can kill) and `limits` (what an operator allows);
- `client`: `RemoteMeasurer`, a `Measurer` for `target.device: remote://HOST:PORT`.

The client imports neither the server nor its worker. Nothing is imported
here, so `import netadapt.device.limits` stays light for the CLI parser.
"""
