"""WideResNet (Zagoruyko & Komodakis 2016), as used in the adversarial-robustness literature."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metaat.models.base import MODELS


class WideBasic(nn.Module):
    """Pre-activation wide block: BN-ReLU-Conv3x3-(dropout)-BN-ReLU-Conv3x3 plus shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``: 3x3 stem, three stages of width 16k/32k/64k, global pooling."""

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...); got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1; got {widen_factor}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        blocks: list[nn.Module] = []
        in_planes = widths[0]
        for stage, stride in zip(range(1, 4), (1, 2, 2), strict=True):
            for i in range(n):
                blocks.append(WideBasic(in_planes, widths[stage], stride if i == 0 else 1, dropout))
                in_planes = widths[stage]
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.conv1(x))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


@MODELS.register("wrn-28-10", help="WideResNet-28-10 (36.5M parameters; depth/widen_factor adjustable)")
def wrn_28_10(
    num_classes: int,
    in_channels: int,
    image_size: int,
    depth: int = 28,
    widen_factor: int = 10,
    dropout: float = 0.0,
    **kwargs: Any,
) -> nn.Module:
    """WideResNet-28-10 by default (36,479,194 parameters for 3 input channels and 10 classes);
    ``depth`` (6n + 4) and ``widen_factor`` select other members of the family."""
    if kwargs:
        raise TypeError(f"model 'wrn-28-10' takes depth, widen_factor, dropout; got {', '.join(sorted(kwargs))}")
    if image_size < 4:
        raise ValueError(f"wrn needs images of at least 4x4; got {image_size}")
    return WideResNet(depth, widen_factor, num_classes, in_channels, dropout)
