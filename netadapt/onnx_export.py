"""Model -> ONNX: the graph every latency figure of this project is measured on.

BatchNorm is folded into the preceding conv before tracing, HardSwish and
HardSigmoid stay native ONNX ops (opset >= 14), and eval mode removes
Dropout, so the graph holds only the ops onnxruntime will actually run.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from netadapt.errors import ConfigError
from netadapt.io import atomic_write_bytes

__all__ = ["OPSET", "check_fits_in_memory", "export_onnx", "fold_batchnorm", "onnx_bytes"]

OPSET = 17  # HardSwish needs >= 14; 17 is well supported by onnxruntime >= 1.14


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Return an eval-mode copy of `model` with every Conv2d->BatchNorm2d pair fused.

    A BN is fused when it directly follows a conv inside an `nn.Sequential`,
    which is how every conv+BN pair of the generator is laid out. The BN is
    replaced by an `nn.Identity`, which tracing drops from the graph.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    return folded


def onnx_bytes(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """Export `model` (BN folded, eval mode) to an ONNX model held in memory.

    Args:
        model: any module; it is copied, never modified.
        input_shape: the fixed input shape, e.g. (1, 3, 224, 224).
    """
    check_fits_in_memory(model, input_shape)
    folded = fold_batchnorm(model)
    example = torch.zeros(*input_shape)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export, but it
        # is far faster for the hundreds of tiny graphs a lookup table needs and
        # does not pull in onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            folded,
            (example,),
            buffer,
            input_names=["input"],
            output_names=["output"],
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = _drop_identities(onnx.load_from_string(buffer.getvalue()))
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def check_fits_in_memory(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """Refuse a MobileNetV3 whose export at `input_shape` needs more than half this machine's memory.

    Tracing holds the weights, a copy of them and a few activations at once.
    Without this a spec within every per-field bound still ends in an
    allocation traceback, or the kernel's OOM killer, minutes in.

    Raises:
        ConfigError: naming the input, the largest activation and the memory.
    """
    spec = getattr(model, "spec", None)
    if spec is None or len(input_shape) != 4 or input_shape[2] != input_shape[3]:
        return  # a unit or a non-square input: small by construction
    from mobilenetv3.counts import peak_activation

    activation = input_shape[0] * peak_activation(spec, input_shape[2])
    parameters = sum(p.numel() for p in model.parameters())
    needed = 4 * (3 * activation + 2 * parameters)  # float32: input, output and one more; weights twice (folded copy)
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on Linux or macOS: no bound to check against
        return
    if needed > memory / 2:
        raise ConfigError(
            f"{spec.name or 'the spec'} at input {'x'.join(map(str, input_shape))} needs about {needed / 2**30:.1f} GiB "
            f"to export (its largest activation holds {activation:,} elements, {parameters:,} parameters), more "
            f"than half of this machine's {memory / 2**30:.1f} GiB; use a smaller input, batch or width")


def _drop_identities(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Remove Identity nodes by wiring their consumers to their input.

    The exporter deduplicates equal initializers (e.g. the zero biases that
    folding a freshly initialised BN leaves) and links the copies with Identity
    nodes; they cost nothing after onnxruntime's optimiser but clutter the graph.
    """
    graph = proto.graph
    graph_outputs = {output.name for output in graph.output}
    renamed: dict[str, str] = {}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and node.output[0] not in graph_outputs:
            renamed[node.output[0]] = renamed.get(node.input[0], node.input[0])
        else:
            kept.append(node)
    for node in kept:
        for index, name in enumerate(node.input):
            if name in renamed:
                node.input[index] = renamed[name]
    del graph.node[:]
    graph.node.extend(kept)
    return proto


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...]) -> Path:
    """Export `model` to `path` atomically; returns the path."""
    path = Path(path)
    atomic_write_bytes(path, onnx_bytes(model, input_shape))
    return path
