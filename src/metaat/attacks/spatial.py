"""Worst-of-grid spatial attack: rotations and translations (Engstrom, Tran, Tsipras, Schmidt, Madry
2019, "Exploring the Landscape of Spatial Robustness").

Threat: a transformation budget, not an Lp ball — every rotation in ``±max_rotation`` degrees and
every translation in ``±max_translation`` pixels (each axis) on a regular grid. The attack takes no
``threat`` (the result is generally *not* inside any small Lp ball) and refuses one. The search is
gradient-free (exhaustive over the grid), which makes it immune to gradient masking: each point
gets the first grid transformation (in a fixed order, identity first) that changes the prediction,
else the one with the highest loss.

Images are resampled bilinearly with ``affine_grid`` / ``grid_sample``; pixels that enter from
outside the frame are black (0), so the output stays in [0, 1].

Arguments: ``max_rotation`` (30 degrees), ``max_translation`` (3 pixels), ``rotation_steps`` (7:
-30, -20, ..., 30), ``translation_steps`` (5: -3, -1.5, 0, 1.5, 3 per axis), ``loss`` (ce / margin,
used to rank transformations that do not fool the model), ``batch_size`` (chunk).
Cost: ``rotation_steps * translation_steps**2`` forward passes per point (175 by default).
Shapes: ``x`` (B, C, H, W) in [0, 1], ``y`` (B,) int64 → ``x_adv`` (B, C, H, W).

>>> import torch, metaat.attacks as A
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
>>> x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
>>> x_adv = A.create("spatial", rotation_steps=3, translation_steps=3)(model, x, y)
>>> tuple(x_adv.shape), bool(((x_adv >= 0) & (x_adv <= 1)).all())
((4, 1, 8, 8), True)
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from metaat.attacks.base import ATTACKS, Attack, AttackConfig, chunks
from metaat.losses import get_loss


@dataclasses.dataclass(frozen=True)
class SpatialConfig(AttackConfig):
    max_rotation: float = 30.0
    max_translation: float = 3.0
    rotation_steps: int = 7
    translation_steps: int = 5
    loss: str = "ce"

    def __post_init__(self) -> None:
        super().__post_init__()
        get_loss(self.loss)
        if self.max_rotation < 0 or self.max_translation < 0:
            raise ValueError("max_rotation and max_translation must be >= 0")
        if self.rotation_steps < 1 or self.translation_steps < 1:
            raise ValueError("rotation_steps and translation_steps must be >= 1")


def symmetric_grid(limit: float, steps: int) -> list[float]:
    """``steps`` evenly spaced values in ``[-limit, limit]`` (just ``[0.0]`` for one step)."""
    if steps == 1:
        return [0.0]
    return [-limit + 2 * limit * k / (steps - 1) for k in range(steps)]


def transformation_grid(cfg: SpatialConfig) -> list[tuple[float, float, float]]:
    """Every ``(degrees, dx_pixels, dy_pixels)`` of the grid, sorted so the identity comes first and
    smaller transformations before larger ones (the first one that fools the model is kept)."""
    grid = [
        (a, dx, dy)
        for a in symmetric_grid(cfg.max_rotation, cfg.rotation_steps)
        for dx in symmetric_grid(cfg.max_translation, cfg.translation_steps)
        for dy in symmetric_grid(cfg.max_translation, cfg.translation_steps)
    ]
    return sorted(grid, key=lambda t: (abs(t[0]) / max(cfg.max_rotation, 1e-12) + abs(t[1]) + abs(t[2]), t))


def rotate_translate(x: torch.Tensor, degrees: float, dx: float, dy: float) -> torch.Tensor:
    """Rotate ``x`` (B, C, H, W) about its centre by ``degrees`` and shift it by ``(dx, dy)`` pixels."""
    b, _, h, w = x.shape
    rad = math.radians(degrees)
    cos, sin = math.cos(rad), math.sin(rad)
    # affine_grid maps output coordinates to input coordinates in [-1, 1] (align_corners=False), so a
    # shift of dx pixels to the right samples from dx pixels to the left: -2 dx / W.
    theta = torch.tensor(
        [[cos, -sin, -2.0 * dx / w], [sin, cos, -2.0 * dy / h]], dtype=x.dtype, device=x.device
    ).expand(b, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)


@ATTACKS.register("spatial")
class Spatial(Attack):
    """Worst of a grid of rotations (±30°) and translations (±3 px); takes no threat."""

    name = "spatial"
    config_class = SpatialConfig
    bounded = False
    config: SpatialConfig

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        loss_fn = get_loss(self.config.loss)
        grid = transformation_grid(self.config)
        out = x.clone()
        with torch.no_grad():
            for sl in chunks(x.shape[0], self.chunk_size(x)):
                xc, yc = x[sl], y[sl]
                best = xc.clone()
                best_loss = torch.full((xc.shape[0],), -math.inf, device=x.device)
                fooled = torch.zeros(xc.shape[0], dtype=torch.bool, device=x.device)
                for degrees, dx, dy in grid:
                    cand = rotate_translate(xc, degrees, dx, dy)
                    logits = model(cand)
                    loss = loss_fn(logits, yc)
                    wrong = logits.argmax(dim=1) != yc
                    # Keep the first fooling transformation; until then the highest-loss one.
                    take = ~fooled & (wrong | (loss > best_loss))
                    best[take] = cand[take]
                    best_loss = torch.where(take, loss, best_loss)
                    fooled |= wrong
                    if bool(fooled.all()):
                        break
                out[sl] = best
        return out
