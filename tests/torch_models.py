"""Small ResNet- and MobileNet-v2-style models for the convgen.torch tests (and the CLI's
``--torch-model tests.torch_models:tiny_resnet``): the real block structure, few channels."""

from __future__ import annotations

import torch
from torch import nn

from convgen.torch.models import BasicBlock, Bottleneck, MobileNetV2, ResNet, randomize_batchnorm


def tiny_resnet() -> nn.Module:
    """ResNet with basic blocks, 8-64 channels (8 is off AVX-512's 16 lanes: padded)."""
    return randomize_batchnorm(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10, width=8), seed=1).eval()


def tiny_bottleneck() -> nn.Module:
    """ResNet with bottleneck blocks (1x1 reduce, 3x3, 1x1 expand, projection shortcut)."""
    return randomize_batchnorm(ResNet(Bottleneck, [2, 1, 1, 1], num_classes=10, width=8), seed=2).eval()


def tiny_mobilenet() -> nn.Module:
    """MobileNet-v2 blocks with its channel counts 16, 24, 32 (24: padded on 16 lanes)."""
    model = MobileNetV2(num_classes=10, settings=[(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2)], stem=16, last=64)
    return randomize_batchnorm(model, seed=3).eval()


class ReflectPadded(nn.Module):
    """One convolution convgen serves and one it cannot (reflection padding)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.reflect = nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reflect(torch.relu(self.conv(x)))


class DataDependent(nn.Module):
    """Control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if x.sum() > 0 else self.conv(-x)
