"""Checkpoints: netadapt's own `.pt` files, and the import of torchvision MobileNetV3 weights.

A netadapt checkpoint is one `.pt` file holding plain data only - a format
tag, the spec as YAML text and a state dict - read back with
`torch.load(weights_only=True)`; never a pickled module (the official NetAdapt
code pickles whole modules). `import_torchvision` turns the state dict a
torchvision user saved (`torch.save(model.state_dict(), FILE)`) into such a
checkpoint, so a search can start from ImageNet-trained weights.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Mapping

import torch

from mobilenetv3 import MobileNetV3, NetSpec, build, preset
from netadapt.errors import NetadaptError, quote
from netadapt.io import atomic_write_bytes

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "import_torchvision", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "netadapt-checkpoint/1"

# torchvision's names for the parts the import reads: the stem conv gives the
# input channels, the head's last Linear the class count.
_STEM_WEIGHT = "features.0.0.weight"
_HEAD_OUTPUT = "classifier.3"


class CheckpointError(NetadaptError):
    """A checkpoint file is missing, corrupt, not a netadapt checkpoint, or does not fit its network."""


def save_checkpoint(path: str | Path, model: MobileNetV3) -> Path:
    """Write `model` as one `.pt` file: format tag, spec YAML text and state dict.

    The write is atomic (temporary file, fsync, rename), so a kill leaves the
    old checkpoint or the new one.

    Returns:
        The path written.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "spec": model.spec.to_yaml(),
        "state_dict": {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(path: str | Path) -> MobileNetV3:
    """Rebuild the model saved by `save_checkpoint` (in eval mode).

    Reads with `torch.load(weights_only=True)`: only tensors and plain data,
    never code.

    Raises:
        CheckpointError: the file is missing, unreadable, not a netadapt
            checkpoint, or its weights do not fit its spec.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; train one with `netadapt train`")
    payload = _torch_load(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not a netadapt checkpoint (format {quote(found)}, expected {CHECKPOINT_FORMAT!r})")
    for field, kind in (("spec", str), ("state_dict", dict)):
        if not isinstance(payload.get(field), kind):
            raise CheckpointError(f"{path}: field {field!r} must be {'YAML text' if kind is str else 'a mapping of tensors'}, "
                                  f"got {type(payload.get(field)).__name__}")
    try:
        spec = NetSpec.from_yaml(payload["spec"], where="field 'spec'")
    except ValueError as error:  # the YAML's bounds or the spec's validation; it names the field
        raise CheckpointError(f"{path}: {error}") from None
    model = build(spec)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: the weights do not fit the spec ({type(error).__name__}: "
                              f"{quote(str(error), 300)})") from None
    return model.eval()


def import_torchvision(
    path: str | Path,
    preset_name: str,
    width: float = 1.0,
    num_classes: int | None = None,
    seed: int = 0,
) -> MobileNetV3:
    """Build the netadapt preset that a torchvision MobileNetV3 state dict fits, with its weights.

    netadapt's presets keep torchvision's module names, so the weights load
    one to one (`strict=True`): the imported network computes the same
    logits as the torchvision model that saved them.

    Args:
        path: a file written by `torch.save(model.state_dict(), path)` for
            `torchvision.models.mobilenet_v3_large/small(width_mult=width)`;
            read with `weights_only=True`. A mapping that holds the state
            dict under "state_dict" is accepted too.
        preset_name: "large" or "small".
        width: torchvision's `width_mult`.
        num_classes: the new network's classes. None keeps the file's; a
            different count re-initialises the head's last Linear
            (`classifier.3`) for them, with `seed`, and keeps every other weight.
        seed: seeds the re-initialised head.

    Returns:
        The model, in eval mode, on the CPU.

    Raises:
        CheckpointError: the file is missing or unreadable, is not a state
            dict, or does not fit the preset (the first mismatching key is
            named with both shapes), or `num_classes`/`width` is invalid.
    """
    path = Path(path)
    state = _read_state_dict(path)
    if num_classes is not None and num_classes < 1:
        raise CheckpointError(f"--num-classes must be >= 1, got {num_classes}")
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise CheckpointError(f"--width must be a finite number > 0, got {quote(width)}")
    head = state.get(f"{_HEAD_OUTPUT}.weight")
    stem = state.get(_STEM_WEIGHT)
    file_classes = int(head.shape[0]) if head is not None and head.dim() == 2 else 1000
    in_channels = int(stem.shape[1]) if stem is not None and stem.dim() == 4 else 3
    what = f"MobileNetV3-{preset_name.capitalize()} at width {width:g}"
    try:
        spec = preset(preset_name, width=width, num_classes=file_classes, in_channels=in_channels)
    except ValueError as error:
        raise CheckpointError(f"{path}: {what}: {error}") from None
    model = build(spec, seed=seed)
    _check_fits(path, state, model.state_dict(), what)
    model.load_state_dict(state, strict=True)
    if num_classes is not None and num_classes != file_classes:
        model = _with_new_head(model, num_classes, seed)
    return model.eval()



def _torch_load(path: Path, what: str, hint: str = "") -> object:
    """`torch.load(path, weights_only=True)` on the CPU; a file torch cannot read raises CheckpointError
    naming `path` as not a readable `what`, then `hint`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt files (zip, pickle, EOF, runtime)
        raise CheckpointError(f"{path}: not a readable {what} ({type(error).__name__}: "
                              f"{quote(str(error), 200)}){hint}") from None

def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: state dict file not found")
    payload = _torch_load(path, "torch file", "; it must be loadable with weights_only=True")
    if isinstance(payload, Mapping) and payload.get("format") == CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: already a netadapt checkpoint; use it as model.checkpoint directly")
    if isinstance(payload, Mapping) and isinstance(payload.get("state_dict"), Mapping):
        payload = payload["state_dict"]
    if not isinstance(payload, Mapping) or not payload:
        raise CheckpointError(f"{path}: expected a state dict (a mapping of names to tensors, as "
                              f"torch.save(model.state_dict(), FILE) writes), got {type(payload).__name__}")
    for name, value in payload.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {quote(name)} is {type(value).__name__}, not a tensor; "
                                  "expected a state dict of tensors")
    return dict(payload)


def _check_fits(path: Path, state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise on the first key, in the network's order, that is missing or has another shape; then on extra keys."""
    hint = "check --preset and --width against the torchvision model that saved the file"
    for name, tensor in expected.items():
        if name not in state:
            raise CheckpointError(f"{path}: key {name!r} is missing from the file ({what} has it with shape "
                                  f"{list(tensor.shape)}); {hint}")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{path}: key {name!r} has shape {list(state[name].shape)} in the file but "
                                  f"{list(tensor.shape)} in {what}; {hint}")
    extra = [name for name in state if name not in expected]
    if extra:
        raise CheckpointError(f"{path}: key {extra[0]!r} (shape {list(state[extra[0]].shape)}) has no place in "
                              f"{what}{f' ({len(extra)} such keys)' if len(extra) > 1 else ''}; {hint}")


def _with_new_head(model: MobileNetV3, num_classes: int, seed: int) -> MobileNetV3:
    """`model` with `num_classes` outputs: every weight kept but the head's last Linear, freshly initialised."""
    fresh = build(model.spec.replace(num_classes=num_classes), seed=seed)
    kept = {name: tensor for name, tensor in model.state_dict().items() if not name.startswith(f"{_HEAD_OUTPUT}.")}
    kept.update({name: tensor for name, tensor in fresh.state_dict().items() if name.startswith(f"{_HEAD_OUTPUT}.")})
    fresh.load_state_dict(kept, strict=True)
    return fresh
