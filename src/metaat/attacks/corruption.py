"""Common corruptions: Gaussian noise, Gaussian blur and contrast at five severities (Hendrycks &
Dietterich 2019, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations";
severities follow their CIFAR-10-C parameters, which suit 28–32 px images).

Threat: a corruption family and severity, not an Lp ball — the attack takes no ``threat`` and
refuses one (corrupted images are generally far outside small Lp balls). Not
adversarial: the corruption does not look at the model, except for ``corruption="worst"``, which
returns per point the first of the three corruptions (at the given severity) that fools the model,
else the one with the highest loss. Noise comes from the explicit generator, drawn for the whole
batch at once, so results do not depend on chunking.

Arguments: ``corruption`` (gaussian-noise / gaussian-blur / contrast / worst), ``severity`` (1–5),
``batch_size`` (chunk, for ``worst``).
Shapes: ``x`` (B, C, H, W) in [0, 1], ``y`` (B,) int64 → ``x_adv`` (B, C, H, W) in [0, 1].

>>> import torch, metaat.attacks as A
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
>>> x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 2])
>>> x_c = A.create("corruption", corruption="contrast", severity=5)(model, x, y)
>>> bool((x_c - x_c.mean(dim=(1, 2, 3), keepdim=True)).abs().max() < (x - x.mean()).abs().max())
True
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from metaat.attacks.base import ATTACKS, Attack, AttackConfig, chunks
from metaat.losses import ce

CORRUPTIONS: tuple[str, ...] = ("gaussian-noise", "gaussian-blur", "contrast")
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
# Parameters per severity (CIFAR-10-C): noise std, blur std in pixels, contrast factor.
NOISE_STD = (0.04, 0.06, 0.08, 0.09, 0.10)
BLUR_STD = (0.4, 0.6, 0.7, 0.8, 1.0)
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)


@dataclasses.dataclass(frozen=True)
class CorruptionConfig(AttackConfig):
    corruption: str = "gaussian-noise"
    severity: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        valid = (*CORRUPTIONS, "worst")
        if self.corruption not in valid:
            raise ValueError(f"unknown corruption {self.corruption!r}; valid corruptions: {', '.join(valid)}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of 1, 2, 3, 4, 5; got {self.severity!r}")


def gaussian_noise(x: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """``clip(x + N(0, std²))``; the noise is drawn on the generator's device, then moved."""
    noise = torch.randn(x.shape, generator=generator, device=generator.device)
    return (x + std * noise.to(device=x.device, dtype=x.dtype)).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, std: float) -> torch.Tensor:
    """Separable Gaussian blur with a ``2·ceil(3·std) + 1`` tap kernel and reflected borders."""
    radius = max(1, math.ceil(3 * std))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(taps**2) / (2 * std**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    out = x
    for shape in ((1, 1, 1, 2 * radius + 1), (1, 1, 2 * radius + 1, 1)):
        weight = kernel.reshape(shape).repeat(c, 1, 1, 1)
        pad = (radius, radius, 0, 0) if shape[3] > 1 else (0, 0, radius, radius)
        mode = "reflect" if min(x.shape[-2:]) > radius else "replicate"
        out = F.conv2d(F.pad(out, pad, mode=mode), weight, groups=c)
    return out.clamp(0, 1)


def contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Shrink each image towards its mean intensity: ``(x - mean) · factor + mean``."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * factor + mean).clamp(0, 1)


def corrupt(x: torch.Tensor, corruption: str, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Apply one named corruption at ``severity`` (1–5) to a batch."""
    k = severity - 1
    if corruption == "gaussian-noise":
        return gaussian_noise(x, NOISE_STD[k], generator)
    if corruption == "gaussian-blur":
        return gaussian_blur(x, BLUR_STD[k])
    if corruption == "contrast":
        return contrast(x, CONTRAST[k])
    raise ValueError(f"unknown corruption {corruption!r}; valid corruptions: {', '.join(CORRUPTIONS)}")


@ATTACKS.register("corruption")
class Corruption(Attack):
    """Gaussian noise / blur / contrast at severity 1–5 (or the worst of them); takes no threat."""

    name = "corruption"
    config_class = CorruptionConfig
    bounded = False
    config: CorruptionConfig

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cfg = self.config
        if cfg.corruption != "worst":
            return corrupt(x, cfg.corruption, cfg.severity, generator)
        # All candidates are drawn up front (one generator stream, independent of chunking).
        candidates = [corrupt(x, name, cfg.severity, generator) for name in CORRUPTIONS]
        out = candidates[0].clone()
        with torch.no_grad():
            for sl in chunks(x.shape[0], self.chunk_size(x)):
                yc = y[sl]
                best_loss = torch.full((yc.shape[0],), -math.inf, device=x.device)
                fooled = torch.zeros(yc.shape[0], dtype=torch.bool, device=x.device)
                for cand in candidates:
                    logits = model(cand[sl])
                    loss = ce(logits, yc)
                    wrong = logits.argmax(dim=1) != yc
                    take = ~fooled & (wrong | (loss > best_loss))
                    out[sl][take] = cand[sl][take]  # out[sl] is a view: this writes into out
                    best_loss = torch.where(take, loss, best_loss)
                    fooled |= wrong
        return out
