"""Where training runs: device names, their resolution on this machine, precision and determinism.

`train.device` names a device ("auto", "cpu", "cuda", "cuda:N", "mps"); the
name is checked when the config is read (`check_device_name`), and resolved
against this machine's hardware by `resolve_device` when a command starts
to train, so a missing GPU is refused before any work. Latency is never
measured here: it stays on the target (see `netadapt.benchmark`).

Determinism: on the CPU a fixed seed and thread count give bit-identical
weights. On CUDA, cuDNN and atomics-based kernels (scatter-add in the
backward of some ops) can change float summation order between runs;
`train.deterministic` turns on `torch.use_deterministic_algorithms` (and
turns off cuDNN's autotuner), which makes runs on the same GPU, driver and
torch build repeat, at a speed cost. Different GPUs still differ.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager, nullcontext
from typing import ContextManager, Iterator

from netadapt.errors import ConfigError, quote
from netadapt.types import PRECISIONS

__all__ = ["autocast", "check_device_name", "deterministic_algorithms", "grad_scaler", "resolve_device"]

_DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")
_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def check_device_name(name: object, key: str = "train.device") -> str:
    """`name` if it is auto, cpu, cuda, cuda:N or mps; else ConfigError naming `key`. Needs no hardware."""
    if not isinstance(name, str) or not _DEVICE_NAME.fullmatch(name):
        raise ConfigError(f"{key} must be auto, cpu, cuda, cuda:N or mps, got {quote(name)}")
    return name


def resolve_device(name: str, key: str = "train.device"):
    """The `torch.device` that `name` means on this machine.

    "auto" is the first CUDA device when torch sees one, else the CPU (never
    MPS: its kernels still miss ops and differ in results, so it is asked for
    by name).

    Raises:
        ConfigError: the name is malformed, or names a device this machine
            lacks; the message names `key` and what was found.
    """
    import torch

    check_device_name(name, key)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{key} is 'mps' but this machine has no usable Apple MPS device; use auto or cpu")
        return torch.device("mps")
    if not torch.cuda.is_available():
        why = (f"torch {torch.__version__} is built without CUDA" if torch.version.cuda is None
               else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: check the driver and "
                    f"CUDA_VISIBLE_DEVICES={quote(os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)'))}")
        raise ConfigError(f"{key} is {name!r} but this machine has no CUDA device ({why}); use auto or cpu")
    device = torch.device(name)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"{key} is {name!r} but this machine has {count} CUDA device{'s' if count != 1 else ''} "
                          f"(cuda:0 to cuda:{count - 1})")
    return device


def autocast(device, precision: str) -> ContextManager:
    """Mixed precision for the block: `torch.autocast` to bf16/fp16 on `device`, or nothing for fp32."""
    import torch

    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {quote(precision)}")
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, _DTYPES[precision]))


def grad_scaler(device, precision: str):
    """A loss scaler, enabled for fp16 only: fp16 gradients underflow without one; bf16 has fp32's range."""
    import torch

    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Deterministic kernels inside the block when `enabled` (see the module docstring), restored after."""
    import torch

    if not enabled:
        yield
        return
    # cuBLAS needs a fixed workspace to be deterministic; the variable is read
    # when cuBLAS starts, so it is set here only if the user has not set it.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    previous = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]
