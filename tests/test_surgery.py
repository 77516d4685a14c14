"""Surgery: pruned weights are copied exactly, so a cut equals masking the cut channels.

The masking reference here is independent of `netadapt.surgery`'s internals:
it runs the *unpruned* model with forward hooks that zero the removed channels
where they are consumed (see the module docstring of `netadapt.surgery`):

- expanded channels: the depthwise ConvNormActivation's output;
- SE squeeze channels: fc2's input;
- bottleneck channels: the stem's and every producer block's output (after its
  residual add), plus the depthwise output of a consumer block that has no
  expansion conv;
- last conv channels: the last ConvNormActivation's output;
- head channels: the second Linear's input.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mobilenetv3 import MobileNetV3, NetSpec, build, large, make_divisible, small
from mobilenetv3.model import SqueezeExcitation
from netadapt.groups import STEM, ChannelGroup, prunable_groups, removable_blocks, removal_name, with_width, without_block
from netadapt.surgery import l2_norm_selection, prune, prune_indices, remove_block, se_squeeze_selection

SPECS = {"large": large(num_classes=10), "small": small(num_classes=10)}
GROUPS = {name: prunable_groups(spec) for name, spec in SPECS.items()}
INPUT = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _randomize(model: MobileNetV3, seed: int = 0) -> MobileNetV3:
    """Random BN statistics and affine, SE biases and head, so every copying error shows in the logits.

    BN statistics are first measured on a random batch (arbitrary ones make
    the activations die out, and then every input gives the same logits),
    then perturbed per channel so that a channel's statistics cannot be
    swapped with another's unnoticed.
    """
    generator = torch.Generator().manual_seed(seed)

    def uniform(shape: torch.Size, low: float, high: float) -> torch.Tensor:
        return torch.rand(shape, generator=generator) * (high - low) + low

    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(uniform(module.weight.shape, 0.5, 1.5))
                module.bias.copy_(uniform(module.bias.shape, -0.3, 0.3))
            elif isinstance(module, nn.Conv2d) and module.bias is not None:
                module.bias.copy_(uniform(module.bias.shape, -0.3, 0.3))
            elif isinstance(module, nn.Linear):
                # torchvision's N(0, 0.01) makes logits ~1e-3: too small for 1e-5 to mean anything.
                std = 0.5 / module.in_features**0.5
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                module.bias.copy_(uniform(module.bias.shape, -0.1, 0.1))
        for norm in norms:
            norm.momentum = 1.0  # running stats := this batch's stats
        batch = torch.randn(30, *INPUT.shape[1:], generator=generator)
        model.train()(torch.cat([INPUT, batch]))
        for norm in norms:
            norm.momentum = 0.01
            std = norm.running_var.sqrt()
            norm.running_mean.add_(0.05 * std * torch.randn(std.shape, generator=generator))
            norm.running_var.mul_(uniform(std.shape, 0.9, 1.1))
    return model.eval()


_MODELS: dict[str, MobileNetV3] = {}


def _model(name: str) -> MobileNetV3:
    # Built once per preset: the surgery must leave it untouched anyway.
    if name not in _MODELS:
        _MODELS[name] = _randomize(build(SPECS[name]))
    return _MODELS[name]


def _removed(kept: torch.Tensor, width: int) -> torch.Tensor:
    mask = torch.ones(width, dtype=torch.bool)
    mask[kept] = False
    return mask.nonzero().flatten()


def _zero_output(channels: torch.Tensor):
    def hook(module, args, output):
        output = output.clone()
        output[:, channels] = 0
        return output

    return hook


def _zero_input(channels: torch.Tensor):
    def hook(module, args):
        (x,) = args
        x = x.clone()
        x[:, channels] = 0
        return (x,)

    return hook


def _depthwise(model: MobileNetV3, spec: NetSpec, index: int) -> nn.Module:
    return model.features[index + 1].block[1 if spec.blocks[index].has_expansion else 0]


def _se(model: MobileNetV3, index: int) -> SqueezeExcitation:
    return next(m for m in model.features[index + 1].block if isinstance(m, SqueezeExcitation))


def masked_logits(
    model: MobileNetV3,
    spec: NetSpec,
    cuts: list[tuple[ChannelGroup, torch.Tensor, dict[int, torch.Tensor]]],
    x: torch.Tensor,
) -> torch.Tensor:
    """Logits of the unpruned `model` with each cut's removed channels zeroed where consumed.

    `cuts` holds (group, kept channels, {block: kept SE squeeze channels}) in
    `model`'s channel numbering; cuts of disjoint channel sets compose.
    """
    handles = []
    for group, kept, squeeze in cuts:
        zero = _zero_output(_removed(kept, group.width))
        if group.kind == "expanded":
            handles.append(_depthwise(model, spec, group.producers[0]).register_forward_hook(zero))
        elif group.kind == "bottleneck":
            for producer in group.producers:
                handles.append(model.features[producer + 1].register_forward_hook(zero))  # STEM + 1 == stem
                consumer = producer + 1
                if consumer < len(spec.blocks) and not spec.blocks[consumer].has_expansion:
                    handles.append(_depthwise(model, spec, consumer).register_forward_hook(zero))
        elif group.kind == "last_conv":
            handles.append(model.features[-1].register_forward_hook(zero))
        else:
            handles.append(model.classifier[3].register_forward_pre_hook(_zero_input(_removed(kept, group.width))))
        for index, squeeze_kept in squeeze.items():
            removed = _removed(squeeze_kept, spec.blocks[index].se_squeeze)
            handles.append(_se(model, index).fc2.register_forward_pre_hook(_zero_input(removed)))
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for handle in handles:
            handle.remove()


def _random_subset(width: int, keep: int, seed: int) -> torch.Tensor:
    # Random, not a prefix: a surgery that copies channels 0..keep-1 must fail.
    return torch.sort(torch.randperm(width, generator=torch.Generator().manual_seed(seed))[:keep]).values


def _squeeze_choice(spec: NetSpec, group: ChannelGroup, keep: int, seed: int) -> dict[int, torch.Tensor]:
    new_spec = with_width(spec, group, keep)
    return {
        index: _random_subset(old.se_squeeze, new.se_squeeze, seed + index)
        for index, (old, new) in enumerate(zip(spec.blocks, new_spec.blocks))
        if new.se_squeeze != old.se_squeeze
    }


def _cases() -> list:
    cases = []
    for name, groups in GROUPS.items():
        for group in groups:
            half = make_divisible(group.width / 2, group.granularity)
            for keep in sorted({half, group.minimum}):
                cases.append(pytest.param(name, group.name, keep, id=f"{name}-{group.name}-{keep}"))
    return cases


def _group(groups: list[ChannelGroup], name: str) -> ChannelGroup:
    return next(group for group in groups if group.name == name)


# ------------------------------------------------------------------ exactness
@pytest.mark.parametrize("preset_name, group_name, keep", _cases())
def test_pruned_logits_equal_masked_logits(preset_name, group_name, keep):
    spec, model = SPECS[preset_name], _model(preset_name)
    group = _group(GROUPS[preset_name], group_name)
    seed = sum(map(ord, group_name)) + keep
    kept = _random_subset(group.width, keep, seed)
    squeeze = _squeeze_choice(spec, group, keep, seed)

    pruned, new_spec = prune_indices(model, spec, group, kept, squeeze)

    assert new_spec == with_width(spec, group, keep)
    with torch.no_grad():
        logits = pruned(INPUT)
        full = model(INPUT)
    masked = masked_logits(model, spec, [(group, kept, squeeze)], INPUT)
    assert 0.1 < full.abs().max() < 20, "logits should be O(1) for a 1e-5 tolerance to be meaningful"
    # The cut must matter, or the equality below would prove nothing.
    assert (masked - full).abs().max() > 1e-4
    torch.testing.assert_close(logits, masked, rtol=0, atol=1e-5)


def test_default_selection_is_exact_and_keeps_nothing_else():
    spec, model = SPECS["large"], _model("large")
    group = _group(GROUPS["large"], "expanded[4]")  # an SE block: the squeeze is cut too
    pruned, new_spec = prune(model, spec, group, 32)
    kept = l2_norm_selection(model, spec, group, 32)
    squeeze = se_squeeze_selection(model, spec, group, kept)
    assert set(squeeze) == {4} and len(squeeze[4]) == new_spec.blocks[4].se_squeeze == 8
    with torch.no_grad():
        logits = pruned(INPUT)
    torch.testing.assert_close(logits, masked_logits(model, spec, [(group, kept, squeeze)], INPUT), rtol=0, atol=1e-5)


def test_keeping_every_channel_is_an_exact_copy():
    spec, model = SPECS["small"], _model("small")
    group = _group(GROUPS["small"], "bottleneck[3,4,5]")
    pruned, new_spec = prune(model, spec, group, group.width)
    assert new_spec == spec
    with torch.no_grad():
        assert torch.equal(pruned(INPUT), model(INPUT))


# ------------------------------------------------------------- copied weights
def test_kept_weights_are_copied_exactly():
    spec, model = SPECS["large"], _model("large")
    group = _group(GROUPS["large"], "expanded[4]")
    kept = _random_subset(group.width, 40, seed=1)
    squeeze = _squeeze_choice(spec, group, 40, seed=1)
    pruned, _ = prune_indices(model, spec, group, kept, squeeze)
    old, new = model.state_dict(), pruned.state_dict()
    (squeeze_kept,) = squeeze.values()
    prefix = "features.5.block"  # block 4: expansion 0, depthwise 1, SE 2, projection 3
    expected = {
        f"{prefix}.0.0.weight": old[f"{prefix}.0.0.weight"][kept],
        f"{prefix}.1.0.weight": old[f"{prefix}.1.0.weight"][kept],  # depthwise
        f"{prefix}.2.fc1.weight": old[f"{prefix}.2.fc1.weight"][squeeze_kept][:, kept],
        f"{prefix}.2.fc1.bias": old[f"{prefix}.2.fc1.bias"][squeeze_kept],
        f"{prefix}.2.fc2.weight": old[f"{prefix}.2.fc2.weight"][kept][:, squeeze_kept],
        f"{prefix}.2.fc2.bias": old[f"{prefix}.2.fc2.bias"][kept],
        f"{prefix}.3.0.weight": old[f"{prefix}.3.0.weight"][:, kept],
    }
    for bn in (f"{prefix}.0.1", f"{prefix}.1.1"):
        for name in ("weight", "bias", "running_mean", "running_var"):
            expected[f"{bn}.{name}"] = old[f"{bn}.{name}"][kept]
    for key, value in expected.items():
        assert torch.equal(new[key], value), key
    untouched = set(old) - set(expected)
    assert len(untouched) > 100
    for key in untouched:
        assert torch.equal(new[key], old[key]), key


def test_bottleneck_copies_every_producer_and_consumer():
    spec, model = SPECS["large"], _model("large")
    group = _group(GROUPS["large"], "bottleneck[stem,0]")  # block 0 has no expansion conv
    kept = torch.tensor([1, 4, 6, 7, 9, 10, 12, 15])
    pruned, new_spec = prune_indices(model, spec, group, kept, {})
    assert (new_spec.stem, new_spec.blocks[0].expanded, new_spec.blocks[0].out) == (8, 8, 8)
    old, new = model.state_dict(), pruned.state_dict()
    assert torch.equal(new["features.0.0.weight"], old["features.0.0.weight"][kept])  # stem
    assert torch.equal(new["features.0.1.running_var"], old["features.0.1.running_var"][kept])
    assert torch.equal(new["features.1.block.0.0.weight"], old["features.1.block.0.0.weight"][kept])  # depthwise
    projection = old["features.1.block.1.0.weight"]
    assert torch.equal(new["features.1.block.1.0.weight"], projection[kept][:, kept])
    assert torch.equal(new["features.2.block.0.0.weight"], old["features.2.block.0.0.weight"][:, kept])


# ------------------------------------------------------------- old model kept
def test_old_model_and_spec_are_untouched():
    spec = SPECS["small"]
    model = _randomize(build(spec), seed=3)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with torch.no_grad():
        logits = model(INPUT)
    for group in GROUPS["small"]:
        pruned, _ = prune(model, spec, group, group.minimum)
        with torch.no_grad():
            for parameter in pruned.parameters():
                parameter.add_(1.0)  # writing to the new model must not reach the old one
    assert model.spec is spec and spec == small(num_classes=10)
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)
    with torch.no_grad():
        assert torch.equal(model(INPUT), logits)


def test_mode_dtype_and_requires_grad_follow_the_old_model():
    spec = SPECS["small"]
    model = build(spec).double().train()
    model.features[3].block[0][1].eval()  # a BN held in eval inside a training model
    model.features[0][0].weight.requires_grad_(False)
    group = _group(GROUPS["small"], "bottleneck[stem]")
    pruned, _ = prune(model, spec, group, 8)
    assert pruned.training and not pruned.features[3].block[0][1].training
    assert pruned.features[3].block[0][0].training
    assert all(p.dtype == torch.float64 for p in pruned.parameters())
    assert not pruned.features[0][0].weight.requires_grad
    assert pruned.features[1].block[0][0].weight.requires_grad


# --------------------------------------------------------------- selection
def test_selection_ranks_bn_folded_filter_norms():
    spec = SPECS["large"]
    model = build(spec)
    group = _group(GROUPS["large"], "expanded[1]")  # 64 channels, conv features.2.block.0.0
    conv, bn = model.features[2].block[0][0], model.features[2].block[0][1]
    with torch.no_grad():
        conv.weight.fill_(0.1)
        conv.weight[:32] *= 10  # raw norm favours channels 0..31
        bn.weight.fill_(1.0)
        bn.weight[32:] = 100.0  # but BN scales 32..63 far more: their folded filters are larger
    kept = l2_norm_selection(model, spec, group, 32)
    assert kept.tolist() == list(range(32, 64))
    with torch.no_grad():
        bn.running_var[:32] = 1e-6  # now 0..31 win: the divided-out variance is folded in too
    assert l2_norm_selection(model, spec, group, 32).tolist() == list(range(32))


def test_bottleneck_selection_sums_every_writer():
    spec = SPECS["large"]
    model = build(spec)
    group = _group(GROUPS["large"], "bottleneck[1,2]")  # written by blocks 1 and 2's projections
    writers = [model.features[2].block[2][0], model.features[3].block[2][0]]
    with torch.no_grad():
        for conv in writers:
            conv.weight.fill_(1.0)
        writers[0].weight[3] *= 3  # channel 3 is strongest in one writer
        writers[0].weight[7] *= 2.5  # and 7 second there;
        writers[1].weight[5] *= 2  # in the other, 5 and 7 tie,
        writers[1].weight[7] *= 2  # so 7 (2.5 + 2) beats 3 (3 + 1) only by the sum
    assert l2_norm_selection(model, spec, group, 1).tolist() == [7]
    assert l2_norm_selection(model, spec, group, 3).tolist() == [3, 5, 7]


def test_head_and_last_conv_selection():
    spec = SPECS["small"]
    model = build(spec)
    with torch.no_grad():
        model.classifier[0].weight[[5, 900]] *= 100
        model.features[-1][0].weight[[2, 300]] *= 100
    assert l2_norm_selection(model, spec, _group(GROUPS["small"], "head"), 2).tolist() == [5, 900]
    assert l2_norm_selection(model, spec, _group(GROUPS["small"], "last_conv"), 2).tolist() == [2, 300]


def test_se_squeeze_keeps_the_strongest_fc1_filters_over_kept_channels():
    spec = SPECS["large"]
    model = build(spec)
    group = _group(GROUPS["large"], "expanded[3]")  # 72 channels, squeeze 24 -> 8 at width 32
    fc1 = model.features[4].block[2].fc1
    kept = torch.arange(32)
    with torch.no_grad():
        fc1.weight.fill_(0.01)
        fc1.weight[:8, 40] = 1000.0  # rows 0..7 are strong only through a removed channel
        fc1.weight[10:18, :32] = 1.0
    chosen = se_squeeze_selection(model, spec, group, kept)
    assert list(chosen) == [3] and chosen[3].tolist() == list(range(10, 18))
    # A cut that leaves the squeeze width alone (120 -> 112 keeps 32) selects nothing.
    assert se_squeeze_selection(model, spec, _group(GROUPS["large"], "expanded[4]"), torch.arange(112)) == {}


def test_pluggable_selector_is_honoured():
    spec, model = SPECS["small"], _model("small")
    group = _group(GROUPS["small"], "expanded[2]")  # 88 channels, no SE
    calls = []

    def last_channels(m, s, g, keep):
        calls.append((m, s, g, keep))
        return torch.arange(g.width - keep, g.width)

    pruned, _ = prune(model, spec, group, 24, select=last_channels)
    assert calls == [(model, spec, group, 24)]
    expected = model.state_dict()["features.3.block.0.0.weight"][64:]
    assert torch.equal(pruned.state_dict()["features.3.block.0.0.weight"], expected)


@pytest.mark.parametrize(
    "bad_selection, message",
    [
        (lambda m, s, g, k: torch.arange(k - 1), "returned 23 channels, expected 24"),
        (lambda m, s, g, k: torch.zeros(k, dtype=torch.long), "distinct"),
        (lambda m, s, g, k: torch.arange(k) + g.width, r"in \[0, 88\)"),
    ],
)
def test_bad_selector_output_is_refused(bad_selection, message):
    spec, model = SPECS["small"], _model("small")
    group = _group(GROUPS["small"], "expanded[2]")
    with pytest.raises(ValueError, match=message):
        prune(model, spec, group, 24, select=bad_selection)


# ----------------------------------------------------------------- refusals
@pytest.mark.parametrize("keep", [0, -8, 89, 2.5])
def test_keep_out_of_range_names_the_group(keep):
    spec, model = SPECS["small"], _model("small")
    group = _group(GROUPS["small"], "expanded[2]")
    with pytest.raises(ValueError, match=r"expanded\[2\].*keep"):
        prune(model, spec, group, keep)


@pytest.mark.parametrize("indices", [[], [0, 0, 1], [3, 88], [-1, 2], [[1, 2]], [0.5, 1.0]])
def test_bad_explicit_indices_name_the_group(indices):
    spec, model = SPECS["small"], _model("small")
    group = _group(GROUPS["small"], "expanded[2]")
    with pytest.raises(ValueError, match=r"expanded\[2\]"):
        prune_indices(model, spec, group, indices)


def test_squeeze_indices_must_match_the_squeeze_cut():
    spec, model = SPECS["large"], _model("large")
    group = _group(GROUPS["large"], "expanded[3]")
    with pytest.raises(ValueError, match="must name the blocks"):
        prune_indices(model, spec, group, torch.arange(32), {})
    with pytest.raises(ValueError, match="keep 8 channels"):
        prune_indices(model, spec, group, torch.arange(32), {3: torch.arange(9)})


def test_model_from_another_spec_is_refused():
    group = _group(GROUPS["small"], "head")
    with pytest.raises(ValueError, match="not built from spec"):
        prune(_model("large"), SPECS["small"], group, 8)


# ------------------------------------------------------------ repeated cuts
def test_repeated_pruning_of_the_same_group():
    spec, model = SPECS["large"], _model("large")
    group = _group(GROUPS["large"], "bottleneck[3,4,5]")
    first, first_spec = prune(model, spec, group, 32)
    with pytest.raises(ValueError, match="stale|re-enumerate"):
        prune(first, first_spec, group, 16)  # the old group's width no longer holds
    again = _group(prunable_groups(first_spec), "bottleneck[3,4,5]")
    assert again.width == 32
    second, second_spec = prune(first, first_spec, again, 16)
    assert second_spec == with_width(spec, group, 16)
    # Composed, the two cuts keep a subset of the original channels: mask them on the original.
    kept_first = l2_norm_selection(model, spec, group, 32)
    kept = kept_first[l2_norm_selection(first, first_spec, again, 16)]
    with torch.no_grad():
        logits = second(INPUT)
    torch.testing.assert_close(logits, masked_logits(model, spec, [(group, kept, {})], INPUT), rtol=0, atol=1e-5)


def test_pruning_after_pruning_another_group():
    spec, model = SPECS["large"], _model("large")
    # Disjoint channel sets that meet in block 4: its expanded channels and the bottleneck it reads and writes.
    expanded = _group(GROUPS["large"], "expanded[4]")
    kept_expanded = _random_subset(120, 48, seed=7)
    squeeze = _squeeze_choice(spec, expanded, 48, seed=7)
    first, first_spec = prune_indices(model, spec, expanded, kept_expanded, squeeze)
    bottleneck = _group(prunable_groups(first_spec), "bottleneck[3,4,5]")
    kept_bottleneck = _random_subset(40, 24, seed=8)
    second, second_spec = prune_indices(first, first_spec, bottleneck, kept_bottleneck)
    assert second_spec.blocks[4].expanded == 48 and second_spec.blocks[4].out == 24
    with torch.no_grad():
        logits = second(INPUT)
    cuts = [(expanded, kept_expanded, squeeze), (_group(GROUPS["large"], "bottleneck[3,4,5]"), kept_bottleneck, {})]
    torch.testing.assert_close(logits, masked_logits(model, spec, cuts, INPUT), rtol=0, atol=1e-5)


def test_stem_group_of_small_reaches_a_block_without_expansion():
    # Small's first block has no expansion conv and an SE: the stem cut reaches
    # its depthwise conv and its SE's input and output.
    spec = SPECS["small"]
    group = _group(GROUPS["small"], "bottleneck[stem]")
    assert group.producers == (STEM,)
    pruned, new_spec = prune(_model("small"), spec, group, 8)
    assert new_spec.blocks[0].expanded == 8
    assert pruned.features[1].block[1].fc1.in_channels == 8
    assert pruned.features[1].block[1].fc2.out_channels == 8


# ------------------------------------------------------------- block removal
def _removal_cases() -> list:
    return [pytest.param(name, index, id=f"{name}-remove[{index}]")
            for name, spec in SPECS.items() for index in removable_blocks(spec)]


@pytest.mark.parametrize("preset_name, index", _removal_cases())
def test_removed_block_logits_equal_its_residual_branch_zeroed(preset_name, index):
    spec, model = SPECS[preset_name], _model(preset_name)
    removed, new_spec = remove_block(model, spec, index)
    assert new_spec == without_block(spec, index) and len(new_spec.blocks) == len(spec.blocks) - 1
    branch = model.features[index + 1].block  # the residual branch: out = branch(x) + x
    hook = branch.register_forward_hook(lambda module, inputs, output: torch.zeros_like(output))
    try:
        with torch.no_grad():
            zeroed = model(INPUT)
    finally:
        hook.remove()
    with torch.no_grad():
        full, logits = model(INPUT), removed(INPUT)
    assert (zeroed - full).abs().max() > 1e-4  # the block matters, or the equality proves nothing
    torch.testing.assert_close(logits, zeroed, rtol=0, atol=1e-5)
    assert removed.training == model.training


def test_only_residual_blocks_can_be_removed():
    spec = SPECS["small"]
    assert removable_blocks(spec) == [i for i, block in enumerate(spec.blocks) if block.residual]
    assert removable_blocks(spec) and all(spec.block_inputs()[i] == spec.blocks[i].out and spec.blocks[i].stride == 1
                                          for i in removable_blocks(spec))
    with pytest.raises(ValueError, match="block 0 .* cannot be removed"):
        remove_block(_model("small"), spec, 0)  # Small's first block has a stride of 2
    assert removal_name(3) == "remove[3]"
