"""MobileNetV3 architectures as values.

A `NetSpec` says everything that shapes a network: every block's channel
counts are absolute, so NetAdapt can change them one block at a time, and
a width multiplier is only one way to produce a spec (see `presets`).
Specs are frozen and validated on construction, so an impossible network
fails here with the block and field named, never as a shape error deep in
torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mobilenetv3.fileio import atomic_write_text, load_yaml, read_yaml
from mobilenetv3.messages import quote

__all__ = ["ACTIVATIONS", "BlockSpec", "MAX_BLOCKS", "MAX_CHANNELS", "MAX_CLASSES", "MAX_KERNEL", "NetSpec",
           "make_divisible"]

ACTIVATIONS = ("relu", "hardswish")
# Upper bounds of a spec. Real networks sit far below them (MobileNetV3-Large:
# 15 blocks, 1280 channels at most, kernel 5; width 8 stays under 16384); a spec
# past them is a typo or an attack, and building it would only fail later, in
# an allocation of gigabytes, without naming the field.
MAX_CHANNELS = 16384  # any channel count: stem, expanded, out, SE squeeze, last conv, head
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841
MAX_KERNEL = 15  # depthwise kernels in the MobileNet family are 3 to 7 (some searches try 9)
MAX_BLOCKS = 256


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of `divisor`, as MobileNet does.

    Never rounds down by more than 10%: a result below 0.9 * value is bumped up
    by one `divisor`. This is the one rounding rule for every channel count.

    Args:
        value: the unrounded channel count.
        divisor: the granularity.
        min_value: the smallest allowed result (default: `divisor`).
    """
    if divisor < 1:
        raise ValueError(f"divisor must be >= 1, got {divisor}")
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class BlockSpec:
    """One inverted-residual block (MobileNetV3 Table 1/2 row).

    A block's input width is not stored: it is the previous block's `out`
    (or the stem's width), so a spec cannot disagree with itself.
    """

    kernel: int  # depthwise kernel, odd
    expanded: int  # channels of the expansion conv output / depthwise conv
    out: int  # channels of the projection conv output
    se: bool  # squeeze-and-excitation after the depthwise conv
    se_squeeze: int  # SE bottleneck width; 0 when `se` is False
    activation: str  # "relu" or "hardswish"
    stride: int  # 1 or 2, carried by the depthwise conv
    # Stored, never re-derived from expanded != in: pruning can make a block's
    # expanded width equal its input width while it keeps its expansion conv.
    has_expansion: bool
    # Stored for the same reason: pruning a stage's bottleneck can make a
    # non-residual block's in and out equal, and that must not add a skip.
    residual: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_BLOCK_FIELDS = {f.name: f.type for f in dataclasses.fields(BlockSpec)}


@dataclass(frozen=True)
class NetSpec:
    """A whole MobileNetV3: stem, blocks, last 1x1 conv, classifier head."""

    in_channels: int  # image channels: 3 for RGB, 1 for grayscale
    stem: int  # output channels of the 3x3 stride-2 stem conv
    blocks: tuple[BlockSpec, ...]
    last_conv: int  # output channels of the final 1x1 conv
    head_hidden: int  # width of the classifier's hidden Linear layer
    num_classes: int
    dropout: float = 0.2  # between the head's two Linear layers
    name: str = ""  # free-form label, e.g. "large-1.0"; not part of the architecture

    def __post_init__(self) -> None:
        # Accept a list of blocks but store a tuple so the spec stays hashable.
        object.__setattr__(self, "blocks", tuple(self.blocks))
        self.validate()

    # ------------------------------------------------------------------ queries
    def block_inputs(self) -> list[int]:
        """Input channel count of each block."""
        inputs = [self.stem]
        for block in self.blocks[:-1]:
            inputs.append(block.out)
        return inputs

    @property
    def last_conv_in(self) -> int:
        return self.blocks[-1].out if self.blocks else self.stem

    def replace(self, **changes: Any) -> "NetSpec":
        return dataclasses.replace(self, **changes)

    def replace_block(self, index: int, **changes: Any) -> "NetSpec":
        blocks = list(self.blocks)
        blocks[index] = dataclasses.replace(blocks[index], **changes)
        return dataclasses.replace(self, blocks=tuple(blocks))

    # --------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ValueError naming the field (and block index) that is wrong."""
        if not isinstance(self.name, str):
            raise ValueError(f"name must be text, got {quote(self.name)}")
        for name in ("in_channels", "stem", "last_conv", "head_hidden"):
            _require_positive_int(getattr(self, name), name)
        _require_positive_int(self.num_classes, "num_classes", MAX_CLASSES, "classes")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {quote(self.dropout)}")
        if not self.blocks:
            raise ValueError("blocks: a MobileNetV3 needs at least one block")
        if len(self.blocks) > MAX_BLOCKS:
            raise ValueError(f"blocks: at most {MAX_BLOCKS} blocks, got {len(self.blocks)}")
        for index, (block, block_in) in enumerate(zip(self.blocks, self.block_inputs())):
            _validate_block(index, block, block_in)

    # ---------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in_channels": self.in_channels,
            "stem": self.stem,
            "blocks": [block.to_dict() for block in self.blocks],
            "last_conv": self.last_conv,
            "head_hidden": self.head_hidden,
            "num_classes": self.num_classes,
            "dropout": self.dropout,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NetSpec":
        """Build and validate a spec from its `to_dict` mapping.

        Raises:
            ValueError: a field is unknown, missing or invalid (named, with its block).
        """
        if not isinstance(data, dict):
            raise ValueError(f"a spec must be a mapping, got {type(data).__name__}")
        known = {"name", "in_channels", "stem", "blocks", "last_conv", "head_hidden", "num_classes", "dropout"}
        unknown = sorted(set(data) - known, key=str)
        if unknown:
            raise ValueError(f"unknown spec field(s) {quote(unknown)}; known fields are {sorted(known)}")
        missing = sorted(known - {"name", "dropout"} - set(data))
        if missing:
            raise ValueError(f"spec is missing field(s) {missing}")
        raw_blocks = data["blocks"]
        if not isinstance(raw_blocks, list):
            raise ValueError("blocks: must be a list of block mappings")
        if len(raw_blocks) > MAX_BLOCKS:
            raise ValueError(f"blocks: at most {MAX_BLOCKS} blocks, got {len(raw_blocks)}")
        blocks = tuple(_block_from_dict(i, raw) for i, raw in enumerate(raw_blocks))
        kwargs = {k: v for k, v in data.items() if k != "blocks"}
        if kwargs.get("name", "") is None:
            kwargs["name"] = ""  # `name:` left empty in a hand-written file
        return cls(blocks=blocks, **kwargs)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, where: str = "spec") -> "NetSpec":
        """Parse and validate a spec from YAML text (see `mobilenetv3.fileio.load_yaml` for its bounds).

        Args:
            text: the YAML.
            where: its source, starting every message (a file, "field 'spec'").

        Raises:
            ValueError: the text is not YAML text within bounds, or not a valid spec.
        """
        data = load_yaml(text, where)
        try:
            return cls.from_dict(data)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None

    def save(self, path: str | Path) -> None:
        """Write the spec as YAML, atomically."""
        atomic_write_text(Path(path), self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) -> "NetSpec":
        """Read and validate the spec YAML file at `path`.

        Raises:
            FileNotFoundError: there is no such file.
            ValueError: it is unreadable, not UTF-8, not YAML within bounds or
                not a valid spec; the message starts with `path`.
        """
        path = Path(path)
        data = read_yaml(path)
        try:
            return cls.from_dict(data)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None


def _require_positive_int(value: Any, where: str, high: int = MAX_CHANNELS, unit: str = "channels") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} must be an integer, got {quote(value)}")
    if value < 1:
        raise ValueError(f"{where} must be >= 1 channel, got {value}")
    if value > high:
        raise ValueError(f"{where} must be <= {high} {unit}, got {quote(value)}")


def _validate_block(index: int, block: BlockSpec, block_in: int) -> None:
    where = f"block {index}"
    for name in ("expanded", "out"):
        _require_positive_int(getattr(block, name), f"{where}: {name}")
    _require_positive_int(block.kernel, f"{where}: kernel", MAX_KERNEL, "pixels")
    if block.kernel % 2 == 0:
        raise ValueError(f"{where}: kernel must be odd (padding keeps the size), got {block.kernel}")
    if isinstance(block.stride, bool) or not isinstance(block.stride, int) or block.stride not in (1, 2):
        raise ValueError(f"{where}: stride must be 1 or 2, got {quote(block.stride)}")
    if not isinstance(block.activation, str) or block.activation not in ACTIVATIONS:
        raise ValueError(f"{where}: activation must be one of {ACTIVATIONS}, got {quote(block.activation)}")
    for name in ("se", "has_expansion", "residual"):
        if not isinstance(getattr(block, name), bool):
            raise ValueError(f"{where}: {name} must be true or false, got {quote(getattr(block, name))}")
    if block.se:
        _require_positive_int(block.se_squeeze, f"{where}: se_squeeze")
    elif isinstance(block.se_squeeze, bool) or block.se_squeeze != 0:
        raise ValueError(f"{where}: se_squeeze must be 0 when se is false, got {quote(block.se_squeeze)}")
    if not block.has_expansion and block.expanded != block_in:
        raise ValueError(
            f"{where}: has_expansion is false, so expanded ({block.expanded}) must equal "
            f"the block's input channels ({block_in})"
        )
    if block.residual:
        if block.stride != 1:
            raise ValueError(f"{where}: residual block must have stride 1, got {block.stride}")
        if block_in != block.out:
            raise ValueError(
                f"{where}: residual block's in ({block_in}) and out ({block.out}) channels differ"
            )


def _block_from_dict(index: int, raw: Any) -> BlockSpec:
    if not isinstance(raw, dict):
        raise ValueError(f"block {index}: must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_BLOCK_FIELDS), key=str)
    if unknown:
        raise ValueError(f"block {index}: unknown field(s) {quote(unknown)}; known fields are {sorted(_BLOCK_FIELDS)}")
    missing = sorted(set(_BLOCK_FIELDS) - set(raw))
    if missing:
        raise ValueError(f"block {index}: missing field(s) {missing}")
    return BlockSpec(**raw)
