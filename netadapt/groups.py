"""Prunable channel groups of a MobileNetV3 spec.

A group is a set of channels that must be cut together for the network to
stay valid. They are derived from a `NetSpec`, never from hard-coded indices:

- `expanded[i]`: block i's expanded channels (expansion conv output, its BN,
  the depthwise conv, the SE's input and output, the projection's input).
  Only blocks with an expansion conv have one; otherwise the depthwise conv
  runs on the block's input and belongs to that tensor's bottleneck group.
- `bottleneck[...]`: the channels of tensors tied together by residual adds:
  a stage's bottleneck shared by its consecutive residual blocks (MobileNetV3
  §4.2, "shrink one bottleneck in all the blocks that share it"), and the stem
  when the first block's depthwise conv consumes it directly.
- `last_conv`: the final 1x1 conv's output.
- `head`: the classifier's hidden width.

The SE squeeze width follows its block's expanded width by the preset rule,
`make_divisible(expanded // 4, 8)`, but never grows: a cut keeps the SE's
bottleneck at a quarter of the expansion, as the paper designs it, and the
surgery keeps the strongest squeeze channels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from mobilenetv3 import BlockSpec, NetSpec, make_divisible

__all__ = [
    "STEM",
    "ChannelGroup",
    "candidate_widths",
    "lower_bound_spec",
    "prunable_groups",
    "removable_blocks",
    "removal_name",
    "require_group_of",
    "without_block",
    "se_squeeze_for",
    "with_width",
]

STEM = -1  # producer index of the stem conv in `ChannelGroup.producers`


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are cut together, and how far they may be cut."""

    name: str  # stable, readable id, e.g. "expanded[3]", "bottleneck[stem,0]", "head"
    kind: Literal["expanded", "bottleneck", "last_conv", "head"]
    # expanded: (block,). bottleneck: the producers of the tied tensors, STEM
    # for the stem conv and i for block i's projection. last_conv/head: ().
    producers: tuple[int, ...]
    width: int  # current channel count
    minimum: int = 8  # never cut below this many channels
    granularity: int = 8  # widths stay multiples of this (x86 kernels block by 8/16)

    @property
    def prunable(self) -> bool:
        return bool(candidate_widths(self))


def se_squeeze_for(expanded: int, current_squeeze: int) -> int:
    """SE bottleneck width after its block's expansion becomes `expanded` channels."""
    return min(current_squeeze, make_divisible(expanded // 4, 8))


def _bottleneck_sets(spec: NetSpec) -> list[list[int]]:
    """Producers of each set of residual-tied tensors, in network order."""
    sets: list[list[int]] = [[STEM]]
    for index, block in enumerate(spec.blocks):
        if block.residual:
            sets[-1].append(index)
        else:
            sets.append([index])
    return sets


def _consumers_without_expansion(spec: NetSpec, producers: list[int]) -> list[int]:
    """Blocks whose depthwise conv runs directly on a tensor these producers write."""
    return [i for i, block in enumerate(spec.blocks) if not block.has_expansion and (i - 1) in producers]


def prunable_groups(spec: NetSpec, min_channels: int = 8, granularity: int = 8) -> list[ChannelGroup]:
    """Every prunable group of `spec`, in network order.

    Args:
        spec: the network.
        min_channels: the smallest width any group may be cut to.
        granularity: cut widths are multiples of this.
    """
    if min_channels < 1 or granularity < 1:
        raise ValueError(f"min_channels and granularity must be >= 1, got {min_channels}, {granularity}")
    groups: list[ChannelGroup] = []
    # Network order: a group comes where its channels are first written, so
    # block i's expanded group precedes the bottleneck its projection starts.
    first_producer = {producers[0]: producers for producers in _bottleneck_sets(spec)}
    for index in [STEM, *range(len(spec.blocks))]:
        if index >= 0 and spec.blocks[index].has_expansion:
            width = spec.blocks[index].expanded
            groups.append(ChannelGroup(f"expanded[{index}]", "expanded", (index,), width, min_channels, granularity))
        if index in first_producer:
            producers = first_producer[index]
            width = spec.stem if producers[0] == STEM else spec.blocks[producers[0]].out
            label = ",".join("stem" if p == STEM else str(p) for p in producers)
            groups.append(
                ChannelGroup(f"bottleneck[{label}]", "bottleneck", tuple(producers), width, min_channels, granularity)
            )
    groups.append(ChannelGroup("last_conv", "last_conv", (), spec.last_conv, min_channels, granularity))
    groups.append(ChannelGroup("head", "head", (), spec.head_hidden, min_channels, granularity))
    return groups


def candidate_widths(group: ChannelGroup) -> list[int]:
    """Widths the group may be cut to: multiples of the granularity below its
    current width and at least its minimum, largest first."""
    step = group.granularity
    largest = (group.width - 1) // step * step
    smallest = -(-group.minimum // step) * step  # round the minimum up to the grid
    return list(range(largest, smallest - 1, -step))


def lower_bound_spec(spec: NetSpec, min_channels: int = 8, granularity: int = 8) -> NetSpec:
    """The smallest network of the search space: every group cut to its minimum."""
    smallest = spec
    for group in prunable_groups(spec, min_channels, granularity):
        widths = candidate_widths(group)
        if widths:
            smallest = with_width(smallest, group, widths[-1])
    return smallest


def with_width(spec: NetSpec, group: ChannelGroup, width: int) -> NetSpec:
    """The spec after cutting `group` to `width` channels (architecture only, no weights).

    Args:
        spec: the network `group` was enumerated from.
        group: one of `prunable_groups(spec, ...)`; a group kept from before an
            earlier cut is stale and refused, since its width no longer bounds
            the cut.
        width: the new channel count, in [1, group.width].
    """
    require_group_of(spec, group)
    if width < 1 or width > group.width:
        raise ValueError(f"{group.name}: width must be in [1, {group.width}], got {width}")
    if group.kind == "head":
        return spec.replace(head_hidden=width)
    if group.kind == "last_conv":
        return spec.replace(last_conv=width)
    blocks = list(spec.blocks)
    stem = spec.stem
    if group.kind == "expanded":
        (index,) = group.producers
        blocks[index] = _with_expanded(blocks[index], width)
    else:
        for producer in group.producers:
            if producer == STEM:
                stem = width
            else:
                blocks[producer] = dataclasses.replace(blocks[producer], out=width)
        for consumer in _consumers_without_expansion(spec, list(group.producers)):
            blocks[consumer] = _with_expanded(blocks[consumer], width)
    return spec.replace(stem=stem, blocks=tuple(blocks))


def require_group_of(spec: NetSpec, group: ChannelGroup) -> None:
    """Raise ValueError unless `group` is a current group of `spec`.

    Groups are values: after a cut, the cut group's width (and the SE squeeze of
    the blocks it feeds) changes, so a group enumerated from the old spec must
    not be applied to the new one.
    """
    current = {g.name: g for g in prunable_groups(spec, group.minimum, group.granularity)}
    found = current.get(group.name)
    if found is None:
        raise ValueError(
            f"{group.name}: not a prunable group of spec {spec.name!r} (its groups are {sorted(current)})"
        )
    if found != group:
        raise ValueError(
            f"{group.name}: group does not match spec {spec.name!r} (group width {group.width}, "
            f"spec width {found.width}); groups go stale after a cut, so re-enumerate them "
            "with prunable_groups(spec)"
        )


def _with_expanded(block: BlockSpec, expanded: int) -> BlockSpec:
    squeeze = se_squeeze_for(expanded, block.se_squeeze) if block.se else 0
    return dataclasses.replace(block, expanded=expanded, se_squeeze=squeeze)


# ------------------------------------------------------------ depth proposals
def removable_blocks(spec: NetSpec) -> list[int]:
    """Blocks that can be removed whole: residual ones (stride 1, input and output widths equal).

    Without such a block the network computes what it computes with that
    block's residual branch zeroed, so the removal keeps every other weight
    and shape. At small inputs latency is mostly per-layer overhead, which
    no channel cut removes; a removal does. A network keeps at least one block.
    """
    if len(spec.blocks) < 2:
        return []
    return [index for index, block in enumerate(spec.blocks) if block.residual]


def removal_name(index: int) -> str:
    """The proposal's name in `history.csv`: `remove[i]`."""
    return f"remove[{index}]"


def without_block(spec: NetSpec, index: int) -> NetSpec:
    """The spec with block `index` removed (architecture only, no weights).

    Raises:
        ValueError: the block is not removable (see `removable_blocks`).
    """
    if index not in removable_blocks(spec):
        raise ValueError(f"block {index} of {spec.name or 'the spec'} cannot be removed: only residual blocks "
                         f"can (removable: {removable_blocks(spec)})")
    return spec.replace(blocks=spec.blocks[:index] + spec.blocks[index + 1:])
