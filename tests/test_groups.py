"""Prunable groups: derived from the spec, with widths, bounds and cut specs that stay valid."""

from __future__ import annotations

import dataclasses

import pytest

from mobilenetv3 import NetSpec, large, small
from netadapt.groups import (
    STEM,
    ChannelGroup,
    candidate_widths,
    prunable_groups,
    require_group_of,
    se_squeeze_for,
    with_width,
)

# Expected from the paper's tables (REFERENCE.md), in network order: where a
# group's channels are first written. Large: block 0 has no expansion conv
# (16 -> 16) and is residual, so it shares the stem's channels.
LARGE_GROUPS = [
    ("bottleneck[stem,0]", 16),
    ("expanded[1]", 64),
    ("bottleneck[1,2]", 24),
    ("expanded[2]", 72),
    ("expanded[3]", 72),
    ("bottleneck[3,4,5]", 40),
    ("expanded[4]", 120),
    ("expanded[5]", 120),
    ("expanded[6]", 240),
    ("bottleneck[6,7,8,9]", 80),
    ("expanded[7]", 200),
    ("expanded[8]", 184),
    ("expanded[9]", 184),
    ("expanded[10]", 480),
    ("bottleneck[10,11]", 112),
    ("expanded[11]", 672),
    ("expanded[12]", 672),
    ("bottleneck[12,13,14]", 160),
    ("expanded[13]", 960),
    ("expanded[14]", 960),
    ("last_conv", 960),
    ("head", 1280),
]
# Small: block 0 has no expansion conv but has stride 2, so the stem is its
# own group (read by block 0's depthwise conv and SE) and block 0's output another.
SMALL_GROUPS = [
    ("bottleneck[stem]", 16),
    ("bottleneck[0]", 16),
    ("expanded[1]", 72),
    ("bottleneck[1,2]", 24),
    ("expanded[2]", 88),
    ("expanded[3]", 96),
    ("bottleneck[3,4,5]", 40),
    ("expanded[4]", 240),
    ("expanded[5]", 240),
    ("expanded[6]", 120),
    ("bottleneck[6,7]", 48),
    ("expanded[7]", 144),
    ("expanded[8]", 288),
    ("bottleneck[8,9,10]", 96),
    ("expanded[9]", 576),
    ("expanded[10]", 576),
    ("last_conv", 576),
    ("head", 1024),
]


def _by_name(groups: list[ChannelGroup]) -> dict[str, ChannelGroup]:
    return {group.name: group for group in groups}


def _widths(spec: NetSpec) -> dict[str, int]:
    return {group.name: group.width for group in prunable_groups(spec)}


# ---------------------------------------------------------------- enumeration
@pytest.mark.parametrize("factory, expected", [(large, LARGE_GROUPS), (small, SMALL_GROUPS)])
def test_preset_groups_names_widths_and_order(factory, expected):
    groups = prunable_groups(factory())
    assert [(group.name, group.width) for group in groups] == expected
    assert all(group.minimum == 8 and group.granularity == 8 for group in groups)


def test_group_kinds_and_producers():
    groups = _by_name(prunable_groups(large()))
    assert groups["bottleneck[stem,0]"].producers == (STEM, 0)
    assert groups["bottleneck[6,7,8,9]"].producers == (6, 7, 8, 9)
    assert groups["expanded[13]"].producers == (13,)
    assert groups["last_conv"].producers == groups["head"].producers == ()
    assert {group.kind for group in groups.values()} == {"bottleneck", "expanded", "last_conv", "head"}


def test_groups_follow_the_spec_flags_not_the_widths(tiny_spec):
    assert [(g.name, g.width) for g in prunable_groups(tiny_spec)] == [
        ("bottleneck[stem,0]", 8),
        ("expanded[1]", 32),
        ("bottleneck[1,2]", 16),
        ("expanded[2]", 48),
        ("last_conv", 64),
        ("head", 32),
    ]
    # A pruned spec can have expanded == in while keeping the expansion conv, and
    # in == out without a residual add: the groups follow the stored flags.
    spec = tiny_spec.replace_block(1, expanded=8).replace_block(2, residual=False)
    assert [g.name for g in prunable_groups(spec)] == [
        "bottleneck[stem,0]",
        "expanded[1]",
        "bottleneck[1]",
        "expanded[2]",
        "bottleneck[2]",
        "last_conv",
        "head",
    ]


def test_min_channels_and_granularity_are_passed_on():
    groups = prunable_groups(small(), min_channels=24, granularity=16)
    assert all(group.minimum == 24 and group.granularity == 16 for group in groups)
    by_name = _by_name(groups)
    assert candidate_widths(by_name["expanded[1]"]) == [64, 48, 32]  # 72 wide, at least 24 -> 32 on the grid
    assert not by_name["bottleneck[stem]"].prunable  # 16 wide: nothing in [24, 16)
    assert by_name["head"].prunable


@pytest.mark.parametrize("kwargs", [{"min_channels": 0}, {"granularity": 0}])
def test_bad_group_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="min_channels and granularity"):
        prunable_groups(large(), **kwargs)


# ------------------------------------------------------------ candidate widths
@pytest.mark.parametrize(
    "width, minimum, granularity, expected",
    [
        (72, 8, 8, [64, 56, 48, 40, 32, 24, 16, 8]),
        (72, 8, 16, [64, 48, 32, 16]),
        (72, 20, 8, [64, 56, 48, 40, 32, 24]),
        (20, 8, 8, [16, 8]),  # off-grid width: first cut lands on the grid
        (16, 8, 8, [8]),
        (8, 8, 8, []),
        (16, 16, 8, []),
    ],
)
def test_candidate_widths(width, minimum, granularity, expected):
    group = ChannelGroup("expanded[0]", "expanded", (0,), width, minimum, granularity)
    assert candidate_widths(group) == expected
    assert group.prunable == bool(expected)


# ------------------------------------------------------------------ with_width
@pytest.mark.parametrize("factory", [large, small])
def test_every_cut_gives_a_valid_spec_changing_only_that_group(factory):
    spec = factory()
    before = _widths(spec)
    for group in prunable_groups(spec):
        for width in (candidate_widths(group)[0], candidate_widths(group)[-1]):
            cut = with_width(spec, group, width)  # NetSpec validates on construction
            after = _widths(cut)
            assert after.pop(group.name) == width
            assert after == {name: w for name, w in before.items() if name != group.name}
            # The flags are the spec's, never re-derived from the new widths.
            flags = [(b.has_expansion, b.residual, b.se, b.stride, b.kernel) for b in cut.blocks]
            assert flags == [(b.has_expansion, b.residual, b.se, b.stride, b.kernel) for b in spec.blocks]


def test_bottleneck_cut_reaches_every_tied_tensor_and_consumer():
    spec = large()
    groups = _by_name(prunable_groups(spec))
    cut = with_width(spec, groups["bottleneck[stem,0]"], 8)
    # stem, block 0's depthwise (no expansion conv) and its residual output.
    assert (cut.stem, cut.blocks[0].expanded, cut.blocks[0].out) == (8, 8, 8)
    assert cut.block_inputs()[1] == 8
    cut = with_width(spec, groups["bottleneck[12,13,14]"], 96)
    assert [b.out for b in cut.blocks[12:]] == [96, 96, 96]
    assert cut.last_conv_in == 96 and cut.last_conv == 960
    assert [b.expanded for b in cut.blocks[13:]] == [960, 960]  # expansion convs absorb the change


def test_small_stem_cut_shrinks_the_first_blocks_depthwise_and_se():
    spec = small()
    cut = with_width(spec, _by_name(prunable_groups(spec))["bottleneck[stem]"], 8)
    block = cut.blocks[0]
    assert (cut.stem, block.expanded, block.out, block.se_squeeze) == (8, 8, 16, 8)


@pytest.mark.parametrize(
    "block, width, squeeze",
    [
        (3, 64, 16),  # 72 -> 64: make_divisible(16) = 16, down from 24
        (3, 32, 8),  # make_divisible(8) = 8
        (4, 112, 32),  # 120 -> 112: make_divisible(28) = 32, unchanged
        (11, 336, 88),  # 672 -> 336: make_divisible(84) = 88
        (6, 120, 0),  # block 6 has no SE
    ],
)
def test_se_squeeze_follows_the_preset_rule(block, width, squeeze):
    spec = large()
    cut = with_width(spec, _by_name(prunable_groups(spec))[f"expanded[{block}]"], width)
    assert cut.blocks[block].se_squeeze == squeeze


def test_se_squeeze_never_grows():
    spec = large().replace_block(4, se_squeeze=8)  # narrower than the rule's 32
    cut = with_width(spec, _by_name(prunable_groups(spec))["expanded[4]"], 112)
    assert cut.blocks[4].se_squeeze == 8
    assert se_squeeze_for(112, 8) == 8 and se_squeeze_for(112, 40) == 32


def test_head_and_last_conv_cuts():
    spec = small()
    groups = _by_name(prunable_groups(spec))
    assert with_width(spec, groups["head"], 512).head_hidden == 512
    assert with_width(spec, groups["last_conv"], 288).last_conv == 288


@pytest.mark.parametrize("width", [0, -8, 73])
def test_width_out_of_range_names_the_group(width):
    spec = large()
    with pytest.raises(ValueError, match=r"expanded\[3\]: width must be in \[1, 72\]"):
        with_width(spec, _by_name(prunable_groups(spec))["expanded[3]"], width)


def test_stale_and_foreign_groups_are_refused():
    spec = large()
    group = _by_name(prunable_groups(spec))["bottleneck[3,4,5]"]
    cut = with_width(spec, group, 32)
    # Without the check this would silently *grow* the bottleneck back to 40.
    with pytest.raises(ValueError, match=r"bottleneck\[3,4,5\].*re-enumerate"):
        with_width(cut, group, 40)
    with pytest.raises(ValueError, match="not a prunable group"):
        require_group_of(small(), _by_name(prunable_groups(spec))["bottleneck[stem,0]"])
    require_group_of(cut, _by_name(prunable_groups(cut))["bottleneck[3,4,5]"])  # a fresh one is fine
    wrong_kind = dataclasses.replace(group, width=40, kind="expanded")
    with pytest.raises(ValueError, match="does not match"):
        require_group_of(spec, wrong_kind)
