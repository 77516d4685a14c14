"""Build a torch MobileNetV3 from a `NetSpec`.

Module names follow torchvision's (`features.N.block.M...`, `classifier.0/3`)
so a torchvision state dict loads with `strict=True` into the matching preset.
Code that addresses layers uses the named parts instead of those indices:
`model.stem`, `model.blocks[i].expand / .depthwise / .se / .project`,
`model.last_conv`, and `model.head` with its `head_hidden` and `head_output`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import nn

from mobilenetv3.spec import BlockSpec, NetSpec

__all__ = ["ConvNormActivation", "InvertedResidual", "MobileNetV3", "SqueezeExcitation", "activation", "build"]

# MobileNetV3 (and torchvision) use these BN settings throughout.
BatchNorm = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": partial(nn.ReLU, inplace=True),
    "hardswish": partial(nn.Hardswish, inplace=True),
}


def activation(name: str) -> Callable[[], nn.Module]:
    """The activation factory for a spec's activation name ("relu" or "hardswish")."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}") from None


class ConvNormActivation(nn.Sequential):
    """Conv -> BN -> optional activation, indexed 0/1/2 like torchvision's.

    The conv gets no bias because BN's shift makes it redundant.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        norm_layer: Callable[[int], nn.Module] = BatchNorm,
        activation_layer: Callable[[], nn.Module] | None = None,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=(kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            norm_layer(out_channels),
        ]
        if activation_layer is not None:
            layers.append(activation_layer())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """SE (Hu et al.) with MobileNetV3's hard-sigmoid gate; keys fc1/fc2 as torchvision."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


@dataclass(frozen=True)
class _BlockPositions:
    """Where each part of an InvertedResidual sits in its `.block` Sequential."""

    expand: int | None
    depthwise: int
    se: int | None
    project: int

    @classmethod
    def of(cls, spec: BlockSpec) -> _BlockPositions:
        expand = 0 if spec.has_expansion else None
        depthwise = 0 if expand is None else 1
        se = depthwise + 1 if spec.se else None
        return cls(expand, depthwise, se, depthwise + 1 + (se is not None))


class InvertedResidual(nn.Module):
    """Expansion 1x1 (optional) -> depthwise kxk -> SE (optional) -> projection 1x1.

    The projection has BN and no activation (linear bottleneck, MobileNetV2 §3.2).
    """

    def __init__(self, block_in: int, spec: BlockSpec) -> None:
        super().__init__()
        activation = _ACTIVATIONS[spec.activation]
        layers: list[nn.Module] = []
        if spec.has_expansion:
            layers.append(ConvNormActivation(block_in, spec.expanded, 1, activation_layer=activation))
        layers.append(
            ConvNormActivation(
                spec.expanded,
                spec.expanded,
                spec.kernel,
                stride=spec.stride,
                groups=spec.expanded,
                activation_layer=activation,
            )
        )
        if spec.se:
            layers.append(SqueezeExcitation(spec.expanded, spec.se_squeeze))
        layers.append(ConvNormActivation(spec.expanded, spec.out, 1, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = spec.residual
        self._positions = _BlockPositions.of(spec)

    # Named parts, for code that addresses layers (surgery, tests): views into
    # `.block`, whose indices keep torchvision's state-dict keys.
    @property
    def expand(self) -> ConvNormActivation | None:
        """The 1x1 expansion conv, BN and activation; None for a block without one."""
        return None if self._positions.expand is None else self.block[self._positions.expand]

    @property
    def depthwise(self) -> ConvNormActivation:
        """The kxk depthwise conv, BN and activation."""
        return self.block[self._positions.depthwise]

    @property
    def se(self) -> SqueezeExcitation | None:
        """The squeeze-and-excitation module; None for a block without one."""
        return None if self._positions.se is None else self.block[self._positions.se]

    @property
    def project(self) -> ConvNormActivation:
        """The 1x1 projection conv and BN (no activation: a linear bottleneck)."""
        return self.block[self._positions.project]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


class MobileNetV3(nn.Module):
    """MobileNetV3 built from a `NetSpec` (Howard et al., ICCV 2019, Tables 1-2)."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        self.spec = spec
        from mobilenetv3.units import block_unit, last_conv_unit, stem_unit  # the units share these builders

        layers: list[nn.Module] = [stem_unit(spec.in_channels, spec.stem)]
        layers.extend(block_unit(block_in, block) for block_in, block in zip(spec.block_inputs(), spec.blocks))
        layers.append(last_conv_unit(spec.last_conv_in, spec.last_conv))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(spec.last_conv, spec.head_hidden),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=spec.dropout, inplace=True),
            nn.Linear(spec.head_hidden, spec.num_classes),
        )
        self.apply(_init_weights)

    # Named parts, for code that addresses layers (surgery, tests): views into
    # `features` and `classifier`, whose indices keep torchvision's state-dict keys.
    @property
    def stem(self) -> ConvNormActivation:
        """The first 3x3 conv, BN and hardswish."""
        return self.features[0]

    @property
    def blocks(self) -> list[InvertedResidual]:
        """The inverted-residual blocks, in order: `blocks[i]` is built from `spec.blocks[i]`."""
        return list(self.features[1:-1])

    @property
    def last_conv(self) -> ConvNormActivation:
        """The 1x1 conv, BN and hardswish after the last block."""
        return self.features[-1]

    @property
    def head(self) -> nn.Sequential:
        """The classifier after pooling: head_hidden, hardswish, dropout, head_output."""
        return self.classifier

    @property
    def head_hidden(self) -> nn.Linear:
        """The head's first Linear: last_conv channels -> spec.head_hidden."""
        return self.classifier[0]

    @property
    def head_output(self) -> nn.Linear:
        """The head's last Linear: spec.head_hidden -> spec.num_classes."""
        return self.classifier[3]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk: stem, blocks and last conv, before pooling."""
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Global pooling and the classifier."""
        return self.classifier(torch.flatten(self.avgpool(features), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _init_weights(module: nn.Module) -> None:
    # torchvision's MobileNetV3 initialisation.
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0, 0.01)
        nn.init.zeros_(module.bias)


def build(spec: NetSpec, seed: int | None = None) -> MobileNetV3:
    """Build a freshly initialised model from a spec.

    With a `seed` the initial weights depend on it alone, not on what drew
    from torch's global generator before (which is left as it was): a
    network trained from scratch is the same whatever ran earlier in the
    process. Without one they come from the global generator.
    """
    if seed is None:
        return MobileNetV3(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MobileNetV3(spec)
