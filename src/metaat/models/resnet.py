"""PreAct ResNet-18 (He et al. 2016, "Identity Mappings in Deep Residual Networks")."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metaat.models.base import MODELS


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-Conv3x3-BN-ReLU-Conv3x3 plus (projected) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """PreAct ResNet for small images: 3x3 stem (stride 1), four stages, global average pooling.

    Works on any image size >= 8 and any number of input channels.
    """

    def __init__(self, num_blocks: tuple[int, int, int, int], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@MODELS.register("preact-resnet18", help="PreAct ResNet-18 (11.2M parameters)")
def preact_resnet18(num_classes: int, in_channels: int, image_size: int, **kwargs: Any) -> nn.Module:
    """Standard PreAct ResNet-18 with a final BN-ReLU.

    11,172,170 parameters for 3x32x32 input and 10 classes.
    """
    if kwargs:
        raise TypeError(f"model 'preact-resnet18' takes no extra options; got {', '.join(sorted(kwargs))}")
    if image_size < 8:
        raise ValueError(f"preact-resnet18 needs images of at least 8x8; got {image_size}")
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)
