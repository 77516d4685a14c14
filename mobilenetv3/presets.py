"""The MobileNetV3 presets of Howard et al. (ICCV 2019), as torchvision builds them.

At width 1.0 these reproduce torchvision's `mobilenet_v3_large` and
`mobilenet_v3_small` exactly (parameters, multiply-adds and state-dict keys);
other widths scale every channel count the way torchvision's `width_mult` does.
"""

from __future__ import annotations

from typing import Callable

from mobilenetv3.spec import BlockSpec, NetSpec, make_divisible

__all__ = ["PRESETS", "large", "preset", "small"]

# Columns: kernel, expanded, out, SE, activation, stride (input = previous out).
# MobileNetV3 paper Table 1 (Large); first block's input is the 16-channel stem.
_LARGE_ROWS = [
    (3, 16, 16, False, "relu", 1),  # C1
    (3, 64, 24, False, "relu", 2),  # C2
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),  # C3
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hardswish", 2),  # C4
    (3, 200, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 480, 112, True, "hardswish", 1),
    (3, 672, 112, True, "hardswish", 1),
    (5, 672, 160, True, "hardswish", 2),  # C5
    (5, 960, 160, True, "hardswish", 1),
    (5, 960, 160, True, "hardswish", 1),
]
_LARGE_HEAD_HIDDEN = 1280

# MobileNetV3 paper Table 2 (Small).
_SMALL_ROWS = [
    (3, 16, 16, True, "relu", 2),  # C1
    (3, 72, 24, False, "relu", 2),  # C2
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hardswish", 2),  # C3
    (5, 240, 40, True, "hardswish", 1),
    (5, 240, 40, True, "hardswish", 1),
    (5, 120, 48, True, "hardswish", 1),
    (5, 144, 48, True, "hardswish", 1),
    (5, 288, 96, True, "hardswish", 2),  # C4
    (5, 576, 96, True, "hardswish", 1),
    (5, 576, 96, True, "hardswish", 1),
]
_SMALL_HEAD_HIDDEN = 1024

_STEM = 16
_LAST_CONV_EXPANSION = 6  # last 1x1 conv: 6x the last block's output (960 = 6 * 160)


def _build(
    name: str,
    rows: list[tuple[int, int, int, bool, str, int]],
    head_hidden: int,
    width: float,
    num_classes: int,
    in_channels: int,
    dropout: float,
) -> NetSpec:
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")

    def scale(channels: int) -> int:
        return make_divisible(channels * width, 8)

    stem = scale(_STEM)
    blocks = []
    block_in = stem
    for kernel, expanded, out, se, activation, stride in rows:
        expanded, out = scale(expanded), scale(out)
        blocks.append(
            BlockSpec(
                kernel=kernel,
                expanded=expanded,
                out=out,
                se=se,
                # MobileNetV3 §5.3: SE bottleneck is a quarter of the expansion.
                se_squeeze=make_divisible(expanded // 4, 8) if se else 0,
                activation=activation,
                stride=stride,
                # torchvision's rule; a pruned spec keeps these flags as they were.
                has_expansion=expanded != block_in,
                residual=stride == 1 and block_in == out,
            )
        )
        block_in = out
    return NetSpec(
        name=f"{name}-{width:g}",
        in_channels=in_channels,
        stem=stem,
        blocks=tuple(blocks),
        last_conv=_LAST_CONV_EXPANSION * block_in,
        head_hidden=scale(head_hidden),
        num_classes=num_classes,
        dropout=dropout,
    )


def large(width: float = 1.0, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2) -> NetSpec:
    """MobileNetV3-Large (paper Table 1); 5,483,032 parameters at width 1.0 and 1000 classes."""
    return _build("large", _LARGE_ROWS, _LARGE_HEAD_HIDDEN, width, num_classes, in_channels, dropout)


def small(width: float = 1.0, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2) -> NetSpec:
    """MobileNetV3-Small (paper Table 2); 2,542,856 parameters at width 1.0 and 1000 classes."""
    return _build("small", _SMALL_ROWS, _SMALL_HEAD_HIDDEN, width, num_classes, in_channels, dropout)


PRESETS: dict[str, Callable[..., NetSpec]] = {"large": large, "small": small}


def preset(name: str, **kwargs) -> NetSpec:
    """Look a preset up by name; `kwargs` go to its constructor."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return factory(**kwargs)
