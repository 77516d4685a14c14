"""Shared tiny fixtures: keep the suite fast by testing on small specs."""

from __future__ import annotations

import pytest
import torch

from mobilenetv3 import BlockSpec, NetSpec


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # The CI machine has 2 cores; pinning torch to them avoids oversubscription
    # when onnxruntime sessions run in the same process.
    torch.set_num_threads(2)
    yield


@pytest.fixture
def tiny_spec() -> NetSpec:
    """A 3-block spec that still has every block feature: expansion, SE, residual, stride."""
    return NetSpec(
        name="tiny",
        in_channels=1,
        stem=8,
        blocks=(
            BlockSpec(3, 8, 8, True, 8, "relu", 1, has_expansion=False, residual=True),
            BlockSpec(3, 32, 16, False, 0, "relu", 2, has_expansion=True, residual=False),
            BlockSpec(5, 48, 16, True, 16, "hardswish", 1, has_expansion=True, residual=True),
        ),
        last_conv=64,
        head_hidden=32,
        num_classes=10,
        dropout=0.2,
    )
