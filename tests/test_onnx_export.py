from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from mobilenetv3 import PRESETS, build
from netadapt.onnx_export import export_onnx, fold_batchnorm, onnx_bytes


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BN non-trivial statistics and the head O(1) logits, so folding errors show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
            if isinstance(module, nn.Linear):
                module.weight.normal_(0, 0.05, generator=generator)
    return model.eval()


def run_onnx(data: bytes, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("width, size", [(1.0, 224), (0.5, 64)])
def test_onnxruntime_matches_torch(name, width, size):
    model = trained_like(build(PRESETS[name](width=width)))
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(expected).max() > 0.1, "logits too small for the comparison to mean anything"
    actual = run_onnx(onnx_bytes(model, (1, 3, size, size)), x)
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_graph_is_clean(name):
    model = build(PRESETS[name](width=0.5, num_classes=10, in_channels=1))
    proto = onnx.load_from_string(onnx_bytes(model, (1, 1, 32, 32)))
    onnx.checker.check_model(proto)
    ops = Counter(node.op_type for node in proto.graph.node)
    for banned in ("BatchNormalization", "Identity", "Dropout"):
        assert ops[banned] == 0, f"{banned} left in the graph"
    assert ops["HardSwish"] > 0 and ops["HardSigmoid"] > 0
    # one Conv per conv module: BN folding never adds nodes
    assert ops["Conv"] == sum(isinstance(m, nn.Conv2d) for m in model.modules())


def test_fold_batchnorm_leaves_the_original_untouched(tiny_spec):
    model = trained_like(build(tiny_spec))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)


def test_export_to_file_is_exported_in_eval_mode(tmp_path, tiny_spec):
    model = trained_like(build(tiny_spec)).train()
    path = export_onnx(model, tmp_path / "tiny.onnx", (1, 1, 32, 32))
    assert path.exists() and model.training, "export must not switch the caller's model to eval"
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    np.testing.assert_allclose(run_onnx(path.read_bytes(), x), expected, atol=1e-4, rtol=0)
    assert not list(tmp_path.glob(".*tmp")), "no temporary file may be left behind"
