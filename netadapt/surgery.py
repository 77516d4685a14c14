"""Channel surgery: cut one prunable group and carry the surviving weights over.

`prune` is NetAdapt's "choose which filters" step (Yang et al., ECCV 2018,
Alg. 1): it asks a `ChannelSelector` which channels of a `ChannelGroup` to
keep, builds a fresh model from `groups.with_width(spec, group, keep)` and
copies every kept channel's weights exactly: conv filters and their input
slices, depthwise filters, BN affine parameters and running statistics, the
SE's fc1/fc2 (weights and biases) and the head's Linear rows and columns.

Exactness, the property the tests check for every group of both presets:
the pruned model computes what the unpruned model computes when the removed
channels are zeroed *where they are consumed*, i.e. at the first point where
they mix with other channels:

- expanded channels: at the depthwise ConvNormActivation's output (before the
  SE and the projection). Expansion conv, BN, activation, depthwise conv, BN
  and activation are all per channel, so a removed channel only matters from
  the SE's average pool and the projection on. Zeroing it any earlier is not
  equivalent: BN's shift would make the zero non-zero again.
- SE squeeze channels: at fc2's input (after fc1's ReLU).
- bottleneck channels: at the stem's and each producer block's output (after
  the residual add), which feeds the next expansion conv, the next residual
  add and finally the last conv; and, for a block without an expansion conv,
  at its depthwise ConvNormActivation's output as for expanded channels.
- last conv channels: at the last ConvNormActivation's output (before pooling).
- head channels: at the head's hardswish output (the second Linear's input).

A dropped channel contributes exactly zero at those points because every
consumer there is linear in it (1x1 convs, the SE's average pool, the SE's
gate multiplying a zero, Linear) and each add of a zero is exact.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Callable

import torch
from torch import nn

from mobilenetv3 import MobileNetV3, NetSpec, build
from mobilenetv3.model import ConvNormActivation, InvertedResidual
from netadapt.groups import STEM, ChannelGroup, require_group_of, with_width, without_block

__all__ = [
    "ChannelSelector",
    "l2_norm_selection",
    "prune",
    "prune_indices",
    "remove_block",
    "se_squeeze_selection",
]

# (model, spec, group, keep) -> sorted LongTensor of `keep` channel indices.
ChannelSelector = Callable[[MobileNetV3, NetSpec, ChannelGroup, int], torch.Tensor]


# --------------------------------------------------------------------- layout
def _writers(model: MobileNetV3, group: ChannelGroup) -> list[ConvNormActivation]:
    """The conv-BN parts whose conv (with its BN) writes the group's channels."""
    if group.kind == "expanded":
        (index,) = group.producers
        return [model.blocks[index].expand]
    if group.kind == "bottleneck":
        return [model.stem if producer == STEM else model.blocks[producer].project for producer in group.producers]
    if group.kind == "last_conv":
        return [model.last_conv]
    return []  # head: a Linear, no BN


# ------------------------------------------------------------------ selection
def _folded_filter_norms(part: ConvNormActivation) -> torch.Tensor:
    """L2 norm of each output filter of the part's conv after folding its BN."""
    conv, bn = part[0], part[1]
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return conv.weight.flatten(1).norm(dim=1) * scale.abs()


def l2_norm_selection(model: MobileNetV3, spec: NetSpec, group: ChannelGroup, keep: int) -> torch.Tensor:
    """Keep the `keep` channels whose filters have the largest L2 norm.

    NetAdapt §3.2 keeps the filters with the largest L2 norm. For a bottleneck
    group the score of a channel is the sum of its filter norms over every conv
    that writes it (the stem conv and each producer block's projection), since
    a residual add ties them into one tensor. Expanded channels are scored by
    the expansion conv's filters, last-conv channels by the last conv's, head
    channels by the rows of the head's first Linear.

    Filters are scored *after folding their BN*: `|gamma| / sqrt(var + eps)`
    times the raw filter norm, i.e. the norm of the filter the deployed network
    holds once BN is folded into the conv (as onnxruntime does). The raw norm
    of a conv followed by BN says nothing about the channel: BN divides the
    scale of the filter away, so two filters that differ only in norm produce
    the same output. The folded norm is the paper's criterion applied to the
    network as it runs. On a freshly built model (gamma = 1, var = 1) both
    rankings agree.

    Ties are broken towards the lower channel index, so the choice is
    deterministic.

    Args:
        model: the model to prune, built from `spec`.
        spec: its spec.
        group: the group to cut, one of `prunable_groups(spec, ...)`.
        keep: how many channels to keep.

    Returns:
        The kept channel indices, ascending.
    """
    with torch.no_grad():
        if group.kind == "head":
            scores = model.head_hidden.weight.norm(dim=1)
        else:
            scores = sum(_folded_filter_norms(part) for part in _writers(model, group))
        return _top(scores, keep)


def _top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    order = torch.argsort(scores.detach().cpu(), descending=True, stable=True)
    return torch.sort(order[:keep]).values


def _squeeze_cuts(spec: NetSpec, new_spec: NetSpec) -> dict[int, int]:
    """Blocks whose SE squeeze the cut shrinks: block index -> new squeeze width."""
    return {
        index: new.se_squeeze
        for index, (old, new) in enumerate(zip(spec.blocks, new_spec.blocks))
        if new.se_squeeze != old.se_squeeze
    }


def se_squeeze_selection(
    model: MobileNetV3, spec: NetSpec, group: ChannelGroup, indices: Sequence[int] | torch.Tensor
) -> dict[int, torch.Tensor]:
    """The SE squeeze channels `prune_indices` keeps by default when it cuts `group` to `indices`.

    When a cut shrinks a block's expanded channels, its SE squeeze follows the
    preset rule (`groups.se_squeeze_for`); the squeeze channels kept are those
    whose fc1 filters, restricted to the kept expanded channels (the filters
    the pruned fc1 holds), have the largest L2 norm (NetAdapt §3.2's rule one
    layer down; fc1 feeds no BN, so there is nothing to fold).

    Args:
        model: the model to prune, built from `spec`.
        spec: its spec.
        group: the group being cut.
        indices: the group's kept channels.

    Returns:
        Block index -> kept squeeze channel indices (ascending), for every block
        whose squeeze width the cut changes; empty when none does.
    """
    kept = _as_indices(group, indices, group.width)
    new_spec = with_width(spec, group, len(kept))
    selection = {}
    with torch.no_grad():
        for index, squeeze in _squeeze_cuts(spec, new_spec).items():
            fc1 = model.blocks[index].se.fc1
            scores = fc1.weight[:, kept.to(fc1.weight.device)].flatten(1).norm(dim=1)
            selection[index] = _top(scores, squeeze)
    return selection


# -------------------------------------------------------------------- surgery
def prune(
    model: MobileNetV3,
    spec: NetSpec,
    group: ChannelGroup,
    keep: int,
    select: ChannelSelector = l2_norm_selection,
) -> tuple[MobileNetV3, NetSpec]:
    """Cut `group` to `keep` channels, keeping the ones `select` picks.

    Args:
        model: the model to prune, built from `spec`; it is not modified.
        spec: its spec.
        group: the group to cut, one of `prunable_groups(spec, ...)`.
        keep: how many of the group's channels survive, in [1, group.width].
        select: picks which channels survive; NetAdapt's largest-L2-norm rule
            by default.

    Returns:
        A new model built from the new spec with the kept weights copied
        exactly (same device, dtype, train/eval mode and `requires_grad`),
        and the new spec, `groups.with_width(spec, group, keep)`.

    Raises:
        ValueError: `keep` is out of range, `group` is not a current group of
            `spec`, `model` was not built from `spec`, or `select` returned
            something other than `keep` distinct valid indices.
    """
    require_group_of(spec, group)
    _check_model(model, spec)
    keep = _check_keep(group, keep)
    indices = select(model, spec, group, keep)
    kept = _as_indices(group, indices, group.width)
    if len(kept) != keep:
        raise ValueError(f"{group.name}: the selector returned {len(kept)} channels, expected {keep}")
    return prune_indices(model, spec, group, kept)


def prune_indices(
    model: MobileNetV3,
    spec: NetSpec,
    group: ChannelGroup,
    indices: Sequence[int] | torch.Tensor,
    squeeze_indices: Mapping[int, Sequence[int] | torch.Tensor] | None = None,
) -> tuple[MobileNetV3, NetSpec]:
    """Cut `group` to exactly the channels `indices`, keeping their weights.

    Args:
        model: the model to prune, built from `spec`; it is not modified.
        spec: its spec.
        group: the group to cut, one of `prunable_groups(spec, ...)`.
        indices: the group's channels to keep (distinct, in [0, group.width));
            kept in ascending order whatever order they come in.
        squeeze_indices: for each block whose SE squeeze the cut shrinks, the
            squeeze channels to keep; `se_squeeze_selection` by default. Must
            name exactly the blocks whose squeeze changes.

    Returns:
        The new model and the new spec, as `prune`.
    """
    require_group_of(spec, group)
    _check_model(model, spec)
    kept = _as_indices(group, indices, group.width)
    new_spec = with_width(spec, group, len(kept))
    squeeze_cuts = _squeeze_cuts(spec, new_spec)
    if squeeze_indices is None:
        squeeze_kept = se_squeeze_selection(model, spec, group, kept)
    else:
        if set(squeeze_indices) != set(squeeze_cuts):
            raise ValueError(
                f"{group.name}: squeeze_indices must name the blocks whose SE squeeze the cut "
                f"shrinks, {sorted(squeeze_cuts)}; got {sorted(squeeze_indices)}"
            )
        squeeze_kept = {}
        for index, chosen in squeeze_indices.items():
            where = f"{group.name}: SE squeeze of block {index}"
            squeeze_kept[index] = _as_indices(group, chosen, spec.blocks[index].se_squeeze, where)
            if len(squeeze_kept[index]) != squeeze_cuts[index]:
                raise ValueError(f"{where}: keep {squeeze_cuts[index]} channels, got {len(squeeze_kept[index])}")

    plan = _Plan(model)
    plan.cut(spec, group, kept)
    for index, squeeze in squeeze_kept.items():
        se = model.blocks[index].se
        plan.keep(se.fc1.weight, 0, squeeze)
        plan.keep(se.fc1.bias, 0, squeeze)
        plan.keep(se.fc2.weight, 1, squeeze)

    new_state = {}
    for key, tensor in model.state_dict().items():
        for dim, dim_kept in plan.slices.get(key, {}).items():
            tensor = tensor.index_select(dim, dim_kept.to(tensor.device))
        new_state[key] = tensor  # load_state_dict copies, so the old model shares nothing

    reference = next(model.parameters())
    new_model = build(new_spec).to(device=reference.device, dtype=reference.dtype)
    new_model.load_state_dict(new_state, strict=True)
    old_parameters = dict(model.named_parameters())
    for name, parameter in new_model.named_parameters():
        parameter.requires_grad_(old_parameters[name].requires_grad)
    old_modules = dict(model.named_modules())
    for name, module in new_model.named_modules():
        # Per module, not model-wide: a caller may hold some BN layers in eval.
        module.training = old_modules[name].training
    return new_model, new_spec


def remove_block(model: MobileNetV3, spec: NetSpec, index: int) -> tuple[MobileNetV3, NetSpec]:
    """Remove residual block `index`, carrying every other weight over unchanged.

    Exact: the new model computes what `model` computes with that block's
    residual branch zeroed (its output is then its input).

    Returns:
        A new model built from `groups.without_block(spec, index)` (same
        device, dtype, modes and `requires_grad`), and that spec.

    Raises:
        ValueError: the block is not removable, or `model` was not built from `spec`.
    """
    _check_model(model, spec)
    new_spec = without_block(spec, index)
    reference = next(model.parameters())
    new_model = build(new_spec).to(device=reference.device, dtype=reference.dtype)
    # Part by part, old to new: every part but the removed block, which the blocks after it replace in order.
    kept_blocks = [block for position, block in enumerate(model.blocks) if position != index]
    pairs = [(model.stem, new_model.stem), *zip(kept_blocks, new_model.blocks), (model.last_conv, new_model.last_conv),
             (model.head, new_model.head)]
    for old, new in pairs:
        new.load_state_dict(old.state_dict(), strict=True)
        for old_parameter, parameter in zip(old.parameters(), new.parameters(), strict=True):
            parameter.requires_grad_(old_parameter.requires_grad)
        for old_module, module in zip(old.modules(), new.modules(), strict=True):
            module.training = old_module.training
    for old_module, module in ((model, new_model), (model.features, new_model.features)):
        module.training = old_module.training  # the containers the parts sit in: the model and its trunk
    return new_model, new_spec


class _Plan:
    """Which indices survive along which dim, for every weight a cut touches.

    Weights are named by the parameters and buffers of the model's parts; the
    plan turns them into that model's state-dict keys.
    """

    def __init__(self, model: MobileNetV3) -> None:
        self._model = model
        self.slices: dict[str, dict[int, torch.Tensor]] = defaultdict(dict)
        # id(): tensors compare elementwise, so they cannot be dictionary keys themselves.
        self._keys = {id(tensor): key for key, tensor in model.state_dict(keep_vars=True).items()}

    def keep(self, tensor: torch.Tensor, dim: int, kept: torch.Tensor) -> None:
        self.slices[self._keys[id(tensor)]][dim] = kept

    def writes(self, part: ConvNormActivation, kept: torch.Tensor) -> None:
        """A conv-BN part producing the channels: its filters and every BN vector."""
        conv, bn = part[0], part[1]
        self.keep(conv.weight, 0, kept)
        for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            self.keep(tensor, 0, kept)

    def reads(self, weight: torch.Tensor, kept: torch.Tensor) -> None:
        """A 1x1 conv or Linear consuming the channels: its input columns."""
        self.keep(weight, 1, kept)

    def depthwise_chain(self, block: InvertedResidual, kept: torch.Tensor) -> None:
        """A block running its depthwise conv, SE and projection on the channels."""
        self.writes(block.depthwise, kept)  # depthwise: one filter per channel, dim 0
        if block.se is not None:
            self.reads(block.se.fc1.weight, kept)
            self.keep(block.se.fc2.weight, 0, kept)
            self.keep(block.se.fc2.bias, 0, kept)
        self.reads(block.project[0].weight, kept)

    def cut(self, spec: NetSpec, group: ChannelGroup, kept: torch.Tensor) -> None:
        """Everything that writes or reads the group's channels."""
        model_blocks = self._model.blocks
        if group.kind == "head":
            self.keep(self._model.head_hidden.weight, 0, kept)
            self.keep(self._model.head_hidden.bias, 0, kept)
            self.reads(self._model.head_output.weight, kept)
            return
        for part in _writers(self._model, group):
            self.writes(part, kept)
        if group.kind == "last_conv":
            self.reads(self._model.head_hidden.weight, kept)
        elif group.kind == "expanded":
            self.depthwise_chain(model_blocks[group.producers[0]], kept)
        else:
            # Bottleneck: whatever reads a tensor the producers write. The residual
            # adds need nothing: every tensor they add is in the group.
            for producer in group.producers:
                consumer = producer + 1  # STEM + 1 == block 0
                if consumer == len(spec.blocks):
                    self.reads(self._model.last_conv[0].weight, kept)
                elif model_blocks[consumer].expand is not None:
                    self.reads(model_blocks[consumer].expand[0].weight, kept)
                else:
                    self.depthwise_chain(model_blocks[consumer], kept)


# ----------------------------------------------------------------- validation
def _check_keep(group: ChannelGroup, keep: int) -> int:
    try:
        keep = operator.index(keep)
    except TypeError:
        raise ValueError(f"{group.name}: keep must be an integer, got {keep!r}") from None
    if not 1 <= keep <= group.width:
        raise ValueError(f"{group.name}: keep must be in [1, {group.width}] channels, got {keep}")
    return keep


def _as_indices(
    group: ChannelGroup, indices: Sequence[int] | torch.Tensor, width: int, where: str | None = None
) -> torch.Tensor:
    """Validate a list of channel indices and return them sorted, as a CPU LongTensor."""
    where = where or group.name
    tensor = torch.as_tensor(indices).detach().cpu()
    if tensor.dim() != 1 or tensor.numel() == 0 or tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
        raise ValueError(f"{where}: channel indices must be a non-empty 1-D list of integers, got {indices!r}")
    tensor = torch.sort(tensor.long()).values
    if tensor[0] < 0 or tensor[-1] >= width:
        raise ValueError(f"{where}: channel indices must be in [0, {width}), got {tensor.tolist()}")
    if (tensor[1:] == tensor[:-1]).any():
        raise ValueError(f"{where}: channel indices must be distinct, got {tensor.tolist()}")
    return tensor


def _check_model(model: MobileNetV3, spec: NetSpec) -> None:
    built_from = getattr(model, "spec", None)
    if not isinstance(built_from, NetSpec) or built_from.replace(name="") != spec.replace(name=""):
        raise ValueError(
            f"the model was not built from spec {spec.name!r}; pass the spec the model reports (model.spec)"
        )
