"""The model registry and the ``Normalize`` input layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from metaat.registry import Registry

MODELS: Registry[nn.Module] = Registry[nn.Module]("model")
"""Model registry. A factory is called as ``factory(num_classes, in_channels, image_size, **kwargs)``
and returns an ``nn.Module`` mapping [0, 1] NCHW images to logits. Use :func:`metaat.models.create`
rather than the registry directly: it adds normalisation and records the spec for checkpoints."""


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with ``mean`` and ``std`` stored as buffers.

    Keeps normalisation inside the model so that every input, and every attack budget, stays in
    pixel space [0, 1].
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor([float(m) for m in mean], dtype=torch.float32)
        std_t = torch.as_tensor([float(s) for s in std], dtype=torch.float32)
        if mean_t.numel() == 0 or mean_t.numel() != std_t.numel():
            raise ValueError(
                f"mean and std must be non-empty and of equal length; got {mean_t.numel()} and {std_t.numel()}"
            )
        if not bool(torch.isfinite(mean_t).all()) or not bool((std_t > 0).all()):
            raise ValueError(f"mean must be finite and std positive; got mean {mean}, std {std}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a batch of [0, 1] images."""
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def flat_features(features: nn.Module, in_channels: int, image_size: int) -> int:
    """Number of features ``features`` outputs for one ``in_channels x image_size x image_size`` image."""
    with torch.no_grad():
        out = features(torch.zeros(1, in_channels, image_size, image_size))
    return int(out.numel())
