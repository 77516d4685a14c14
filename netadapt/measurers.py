"""Choose where latency is measured: in this process or on a remote device.

`make_measurer` is the one place that reads `target.device`; everything
downstream (lookup tables, `bench`, the search) sees only the `Measurer`
protocol, so a table built on a device is keyed by that device's
fingerprint and never mixed with local figures.
"""

from __future__ import annotations

from netadapt.benchmark import LocalMeasurer, Measurer, Target
from netadapt.config import MeasureConfig, TargetConfig
from netadapt.device.client import RemoteMeasurer, parse_device
from netadapt.device.protocol import load_token
from netadapt.latency.isolation import IsolatedMeasurer

__all__ = ["make_measurer"]


def make_measurer(
    target_cfg: TargetConfig,
    measure_cfg: MeasureConfig,
    input_shape: tuple[int, int, int, int],
    isolated: bool = False,
) -> Measurer:
    """A `LocalMeasurer`, `IsolatedMeasurer` or `RemoteMeasurer` for the config's target.

    Args:
        target_cfg: the `target` section; `device` is "local" or "remote://HOST:PORT".
        measure_cfg: the `measure` section (warm-up and run counts, sent to the device too).
        input_shape: (N, C, H, W) of the measured models; N is replaced by `target.batch`.
        isolated: for a local target, measure in a separate process (`measure.isolation`
            says whether a search wants it); call the measurer's `close()` when done.

    Raises:
        ConfigError: naming `target.device` or `target.token_file` when they are malformed,
            or when a remote target has no token.
    """
    kind, address = parse_device(target_cfg.device)
    target = Target.from_config(target_cfg, measure_cfg, input_shape)
    if kind == "local":
        return IsolatedMeasurer(target) if isolated else LocalMeasurer(target)
    assert address is not None
    host, port = address
    return RemoteMeasurer(
        f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        target,
        token=load_token(target_cfg.token_file, option="target.token_file"),
        retries=target_cfg.retries,
        timeout_s=target_cfg.timeout_s,
    )
