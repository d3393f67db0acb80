"""1-d convolutional classifiers for ``(B, C, T)`` signals.

* ``fcn`` and ``resnet1d`` — the fully convolutional network and the residual network of Wang, Yan &
  Oates, "Time Series Classification from Scratch with Deep Neural Networks: A Strong Baseline"
  (IJCNN 2017): three convolution blocks (kernels 8, 5, 3; batch norm; ReLU), global average pooling
  over time and a linear layer; the ResNet stacks three such blocks with shortcuts (1×1 convolution
  + batch norm where the width changes).
* ``inception-time`` — one InceptionTime network (Ismail Fawaz et al., "InceptionTime: Finding
  AlexNet for Time Series Classification", DMKD 2020): inception modules (a bottleneck 1×1
  convolution, three parallel convolutions of long, medium and short kernels, and a max-pool branch),
  a residual shortcut every third module, global average pooling (the paper ensembles five; one here).

Every factory takes ``(num_classes, in_channels, image_size=T)`` and sets ``input_rank = 1``; the
networks pool globally, so they work for any length ``T``. Inputs are in the data's σ units
(already standardised), so no normalisation layer is needed.
"""

from __future__ import annotations

import torch
from torch import nn

from metaat.models.base import MODELS


def _same_conv(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    """A convolution that keeps the length ("same" padding; an even kernel pads one more on the right)."""
    return nn.Sequential(
        nn.ConstantPad1d(((kernel - 1) // 2, kernel // 2), 0.0), nn.Conv1d(c_in, c_out, kernel, bias=False)
    )


def _conv_bn(c_in: int, c_out: int, kernel: int, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [_same_conv(c_in, c_out, kernel), nn.BatchNorm1d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class FCN(nn.Module):
    """Conv(128, 8) → Conv(256, 5) → Conv(128, 3), each with batch norm and ReLU; GAP; linear."""

    def __init__(self, num_classes: int, in_channels: int, widths: tuple[int, int, int] = (128, 256, 128)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(in_channels, widths[0], 8), _conv_bn(widths[0], widths[1], 5), _conv_bn(widths[1], widths[2], 3)
        )
        self.head = nn.Linear(widths[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=2))


class ResBlock1d(nn.Module):
    """Three conv-BN layers (kernels 8, 5, 3) plus a shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c_in, c_out, 8), _conv_bn(c_out, c_out, 5), _conv_bn(c_out, c_out, 3, False))
        self.shortcut = _conv_bn(c_in, c_out, 1, relu=False) if c_in != c_out else nn.BatchNorm1d(c_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet1d(nn.Module):
    """Three residual blocks of widths 64, 128, 128; GAP; linear."""

    def __init__(self, num_classes: int, in_channels: int, widths: tuple[int, int, int] = (64, 128, 128)) -> None:
        super().__init__()
        blocks, c = [], in_channels
        for w in widths:
            blocks.append(ResBlock1d(c, w))
            c = w
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=2))


class InceptionModule(nn.Module):
    """Bottleneck, three parallel convolutions (kernels ``kernels``) and a max-pool branch; BN; ReLU."""

    def __init__(self, c_in: int, filters: int, kernels: tuple[int, int, int], bottleneck: int) -> None:
        super().__init__()
        self.bottleneck = nn.Conv1d(c_in, bottleneck, 1, bias=False) if c_in > 1 else nn.Identity()
        width = bottleneck if c_in > 1 else c_in
        self.branches = nn.ModuleList(_same_conv(width, filters, k) for k in kernels)
        self.pool = nn.Sequential(nn.MaxPool1d(3, stride=1, padding=1), nn.Conv1d(c_in, filters, 1, bias=False))
        self.out = nn.Sequential(nn.BatchNorm1d(4 * filters), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.bottleneck(x)
        return self.out(torch.cat([*(b(z) for b in self.branches), self.pool(x)], dim=1))


class InceptionTime(nn.Module):
    """``depth`` inception modules with a residual shortcut every third; GAP; linear."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        filters: int = 32,
        depth: int = 6,
        kernels: tuple[int, int, int] = (39, 19, 9),
        bottleneck: int = 32,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.modules_ = nn.ModuleList()
        self.shortcuts = nn.ModuleList()
        c, res_in = in_channels, in_channels
        for i in range(depth):
            self.modules_.append(InceptionModule(c, filters, kernels, bottleneck))
            c = 4 * filters
            if i % 3 == 2:
                self.shortcuts.append(_conv_bn(res_in, c, 1, relu=False))
                res_in = c
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = x
        for i, module in enumerate(self.modules_):
            x = module(x)
            if i % 3 == 2:
                x = self.relu(x + self.shortcuts[i // 3](res))
                res = x
        return self.head(x.mean(dim=2))


def _check_length(image_size: int, name: str) -> None:
    if image_size < 2:
        raise ValueError(f"{name} needs signals of length T >= 2, got image_size={image_size}")


@MODELS.register("fcn", help="fully convolutional 1-d network (Wang et al. 2017) for (C, T) signals")
def fcn(num_classes: int, in_channels: int, image_size: int, **kwargs: object) -> nn.Module:
    _check_length(image_size, "fcn")
    return FCN(num_classes, in_channels, **kwargs)  # type: ignore[arg-type]


@MODELS.register("resnet1d", help="1-d residual network (Wang et al. 2017) for (C, T) signals")
def resnet1d(num_classes: int, in_channels: int, image_size: int, **kwargs: object) -> nn.Module:
    _check_length(image_size, "resnet1d")
    return ResNet1d(num_classes, in_channels, **kwargs)  # type: ignore[arg-type]


@MODELS.register("inception-time", help="one InceptionTime network (Ismail Fawaz et al. 2020) for (C, T) signals")
def inception_time(num_classes: int, in_channels: int, image_size: int, **kwargs: object) -> nn.Module:
    _check_length(image_size, "inception-time")
    return InceptionTime(num_classes, in_channels, **kwargs)  # type: ignore[arg-type]


@MODELS.register("fcn-small", help="FCN (Wang et al. 2017) at widths 32-64-32: ~1/16 of fcn's compute")
def fcn_small(num_classes: int, in_channels: int, image_size: int, **kwargs: object) -> nn.Module:
    """The sensor benchmark's model: FCN's architecture with 32, 64, 32 filters."""
    _check_length(image_size, "fcn-small")
    return FCN(num_classes, in_channels, **{"widths": (32, 64, 32), **kwargs})  # type: ignore[arg-type]


for _factory in (fcn, fcn_small, resnet1d, inception_time):
    _factory.input_rank = 1  # type: ignore[attr-defined]
