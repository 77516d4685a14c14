import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mobilenetv3 import PRESETS, build, count, large, small
from mobilenetv3.model import ConvNormActivation, InvertedResidual, SqueezeExcitation

FIXTURES = Path(__file__).parent / "fixtures"
TORCHVISION_KEYS = json.loads((FIXTURES / "torchvision_mobilenetv3_keys.json").read_text())["models"]


@pytest.mark.parametrize("name", ["large", "small"])
@pytest.mark.parametrize("width", [1.0, 0.75, 0.5])
def test_state_dict_keys_and_shapes_match_torchvision(name, width):
    expected = TORCHVISION_KEYS[f"mobilenet_v3_{name}@{width}"]
    model = build(PRESETS[name](width=width))
    actual = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert actual == expected


def test_named_shapes_from_the_issue():
    state = build(large()).state_dict()
    assert list(state["features.4.block.2.fc1.weight"].shape) == [24, 72, 1, 1]
    assert list(state["classifier.3.weight"].shape) == [1000, 1280]
    assert "features.16.0.weight" in state
    assert "features.12.0.weight" in build(small()).state_dict()


def test_loads_a_torchvision_state_dict_strictly_and_computes_the_same_logits():
    # Fixture: torchvision 0.29.1 MobileNetV3-Small at width 0.5, 10 classes, with
    # randomised BN statistics, its input and its eval-mode logits.
    reference = torch.load(FIXTURES / "torchvision_small_0.5_c10.pt", weights_only=True)
    model = build(small(width=0.5, num_classes=10))
    model.load_state_dict(reference["state_dict"], strict=True)
    with torch.no_grad():
        logits = model.eval()(reference["input"])
    torch.testing.assert_close(logits, reference["logits"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("width", [1.0, 0.35])
def test_forward_backward_without_nan(name, width):
    model = build(PRESETS[name](width=width, num_classes=7, in_channels=1))
    x = torch.randn(2, 1, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.isfinite(logits).all()


def test_params_match_counts(tiny_spec):
    model = build(tiny_spec)
    assert model.num_params() == sum(r.params for r in count(tiny_spec, 32))
    assert model.spec is tiny_spec


def test_trunk_and_head_are_separable(tiny_spec):
    model = build(tiny_spec).eval()
    x = torch.randn(1, 1, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (1, tiny_spec.last_conv, 8, 8)
    torch.testing.assert_close(model.forward_head(features), model(x))


def test_architecture_details():
    model = build(large())
    for module in model.modules():
        if isinstance(module, ConvNormActivation):
            assert module[0].bias is None, "a conv that feeds BN must have no bias"
            assert module[1].eps == 1e-3 and module[1].momentum == 0.01
        if isinstance(module, InvertedResidual):
            projection = module.block[-1]
            assert len(projection) == 2, "projection conv must have BN and no activation"
        if isinstance(module, SqueezeExcitation):
            assert isinstance(module.scale_activation, nn.Hardsigmoid)
    classifier = model.classifier
    assert [type(m) for m in classifier] == [nn.Linear, nn.Hardswish, nn.Dropout, nn.Linear]
    assert classifier[2].p == 0.2
    # Small's last 1x1 conv has no SE: just conv, BN, hardswish.
    last = build(small()).features[-1]
    assert [type(m) for m in last] == [nn.Conv2d, nn.BatchNorm2d, nn.Hardswish]
    # Large's first block has expanded == in and therefore no expansion conv.
    assert len(model.features[1].block) == 2


def test_residual_flag_is_explicit(tiny_spec):
    # Block 2 of tiny_spec is residual; switching the flag off must remove the skip
    # even though in == out and stride == 1.
    with_skip = build(tiny_spec).eval()
    without = build(tiny_spec.replace_block(2, residual=False)).eval()
    without.load_state_dict(with_skip.state_dict())
    x = torch.randn(1, 1, 32, 32)
    features = with_skip.features[:3](x)
    torch.testing.assert_close(with_skip.features[3](features) - features, without.features[3](features))


def test_kaiming_fan_out_init():
    torch.manual_seed(0)
    conv = build(large()).features[16][0]  # 160 -> 960 1x1
    expected_std = (2.0 / 960) ** 0.5
    assert abs(conv.weight.std().item() - expected_std) / expected_std < 0.05


def test_constructor_prints_nothing(capsys, tiny_spec):
    build(tiny_spec)
    build(large())
    assert capsys.readouterr() == ("", "")


def test_a_seeded_build_does_not_depend_on_earlier_draws_and_leaves_them_alone():
    spec = small(num_classes=10, in_channels=1)
    first = build(spec, seed=3).state_dict()
    torch.manual_seed(123)
    torch.rand(1000)  # earlier work in the process drew from the global generator
    state = torch.random.get_rng_state()
    again = build(spec, seed=3).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is untouched
    assert all(torch.equal(first[key], again[key]) for key in first)
    other = build(spec, seed=4).state_dict()
    assert not all(torch.equal(first[key], other[key]) for key in first)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_named_parts_are_the_layers_the_spec_describes(name):
    spec = PRESETS[name]()
    model = build(spec)
    named = {id(module): key for key, module in model.named_modules()}
    assert named[id(model.stem)] == "features.0" and model.stem[0].out_channels == spec.stem
    assert named[id(model.last_conv)] == f"features.{len(spec.blocks) + 1}"
    assert model.last_conv[0].out_channels == spec.last_conv
    assert named[id(model.head_hidden)] == "classifier.0" and model.head_hidden.out_features == spec.head_hidden
    assert named[id(model.head_output)] == "classifier.3" and model.head_output.out_features == spec.num_classes
    assert len(model.blocks) == len(spec.blocks)
    for index, (block, block_spec) in enumerate(zip(model.blocks, spec.blocks)):
        prefix = f"features.{index + 1}.block"
        parts = [block.expand, block.depthwise, block.se, block.project]
        present = [part for part in parts if part is not None]
        # In order, every layer of the block once: the parts are the block.
        assert [named[id(part)] for part in present] == [f"{prefix}.{i}" for i in range(len(present))]
        assert (block.expand is None) == (not block_spec.has_expansion)
        assert (block.se is None) == (not block_spec.se)
        assert block.depthwise[0].groups == block_spec.expanded and block.depthwise[0].kernel_size[0] == block_spec.kernel
        assert block.project[0].out_channels == block_spec.out and len(block.project) == 2  # linear bottleneck
        if block.se is not None:
            assert block.se.fc1.out_channels == block_spec.se_squeeze
