"""``sensor-augment``: the augmentation baseline for signals — cross-entropy on randomly corrupted
windows, no attack.

Each training window is, independently, with probability ``p`` per corruption: shifted by a random
drift (a per-channel constant + ramp with endpoint values uniform in ``[-drift, drift]``, the shape
of :mod:`metaat.domains.sensors.threats`' ``drift`` set), blanked on one random channel for
``dropout_span`` consecutive samples (the channel reads 0, its training mean), and time-warped (one
knot at ¼, ½ or ¾ of the window moved by ``d ~ U(-max_warp, max_warp)``). This is the data
augmentation a practitioner would try first (e.g. Um et al. 2017, "Data augmentation of wearable
sensor data for Parkinson's disease monitoring using convolutional neural networks"); it sees
dropout and warps in training, so its numbers on those unseen families are not unseen. Threat: none
(the threats only drive the loop's monitor). Cost: 1 forward + 1 backward pass per example.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from metaat.defenses.base import DEFENSES, Defense, DefenseConfig, TrainContext, accuracy
from metaat.domains.sensors.threats import drift_signal
from metaat.domains.sensors.unseen import warp_signal


@dataclasses.dataclass(frozen=True)
class AugmentConfig(DefenseConfig):
    """``p``: probability of each corruption; ``drift``: peak bias (σ); ``dropout_span``: samples;
    ``max_warp``: strength of the time warp (0 < max_warp < 1)."""

    p: float = 0.5
    drift: float = 0.5
    dropout_span: int = 25
    max_warp: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {self.p}")
        if self.drift < 0 or self.dropout_span < 1 or not 0.0 <= self.max_warp < 1.0:
            raise ValueError("need drift >= 0, dropout_span >= 1 and 0 <= max_warp < 1")


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """A randomly corrupted copy of ``x`` ``(B, C, T)``; the random draws come from ``generator``."""
    b, c, t = x.shape

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=generator.device).to(x.device, x.dtype)

    out = x.clone()
    use = uniform(3, b) < cfg.p  # (corruption, example)
    ends = (uniform(2, b, c) * 2 - 1) * cfg.drift
    out = out + use[0, :, None, None] * drift_signal(ends[0], ends[1], t).to(x.dtype)
    span = min(cfg.dropout_span, t)
    channel = (uniform(b) * c).long().clamp(max=c - 1)
    start = (uniform(b) * (t - span + 1)).long().clamp(max=t - span)
    steps = torch.arange(t, device=x.device)
    blank = (steps[None, :] >= start[:, None]) & (steps[None, :] < (start + span)[:, None])  # (B, T)
    mask = torch.zeros(b, c, t, dtype=torch.bool, device=x.device)
    mask[torch.arange(b, device=x.device), channel] = blank
    out = torch.where(mask & use[1, :, None, None], torch.zeros_like(out), out)
    knots, strength = uniform(b), uniform(b) * 2 - 1
    for i in use[2].nonzero().squeeze(1).tolist():
        knot = (0.25, 0.5, 0.75)[min(2, int(knots[i] * 3))]
        out[i] = warp_signal(out[i : i + 1], knot, float(strength[i]) * cfg.max_warp)[0]
    return out


@DEFENSES.register("sensor-augment", help="random drift, dropout and time warp on signals, no attack (1 pass)")
class SensorAugment(Defense):
    """Cross-entropy on randomly drifted, blanked and warped signals."""

    name = "sensor-augment"
    config_class = AugmentConfig
    config: AugmentConfig
    multi_threat = True  # the threats only drive the monitor

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if x.dim() != 3:
            raise ValueError(f"sensor-augment trains on signals (B, C, T); got inputs of shape {tuple(x.shape)}")
        low, high = ctx.threats[0].box if ctx.threats else (float("-inf"), float("inf"))
        x_aug = augment(x, self.config, ctx.generator).clamp(low, high)
        logits = model(x_aug)
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": float(loss.detach()), "acc": accuracy(logits, y)}
