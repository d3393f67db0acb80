"""Projected gradient descent (Madry, Makelov, Schmidt, Tsipras, Vladu 2018, "Towards Deep
Learning Models Resistant to Adversarial Attacks"), for L∞, L2 and L1.

Each step moves along the threat's steepest-ascent direction (sign for L∞, normalised gradient for
L2, sparse top-k for L1 as in SLIDE, Tramèr & Boneh 2019, skipping coordinates stuck on the box as
in Croce & Hein 2021) and projects *exactly* onto ball ∩ [0, 1] — clamping only the model's input
instead leaves ≈5 points of attack strength on the table.

Arguments: ``steps`` (10), ``step_size`` (default 2.5·eps/steps), ``random_start`` (True),
``restarts`` (1; later restarts only attack the points still correctly classified, and each point
keeps the first restart that fooled the model), ``targeted`` (``y`` are then the target labels and
the loss is minimised), ``loss`` (ce / margin / dlr), ``momentum`` (0: plain PGD; μ > 0 steps
along the accumulated gradient g ← μ·g + ∇/‖∇‖₁ as in MI-FGSM, Dong et al. 2018, "Boosting
Adversarial Attacks with Momentum": examples that transfer better to other models),
``return_best`` (True: a point that was misclassified at any step returns that iterate; training
objectives set False to get Madry's final iterate), ``l1_sparsity`` (0.99: the top 1 %
coordinates), ``batch_size`` (chunk; None = auto).
Shapes: ``x`` (B, C, H, W) in [0, 1], ``y`` (B,) int64 → ``x_adv`` (B, C, H, W).

>>> import torch, metaat.attacks as A
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
>>> x, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
>>> x_adv = A.create("pgd", threat="l2:0.5", steps=5)(model, x, y)
>>> bool(((x_adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-6).all())
True
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from metaat.attacks.base import ATTACKS, Attack, AttackConfig, chunks
from metaat.losses import LossFn, get_loss
from metaat.threats import ThreatModel, default_step_size, project, random_init, threat_ascent


@dataclasses.dataclass(frozen=True)
class PGDConfig(AttackConfig):
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True
    restarts: int = 1
    targeted: bool = False
    loss: str = "ce"
    return_best: bool = True
    l1_sparsity: float = 0.99
    momentum: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        get_loss(self.loss)
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.restarts < 1:
            raise ValueError(f"restarts must be >= 1, got {self.restarts}")
        if self.step_size is not None and self.step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")
        if not (self.momentum >= 0 and math.isfinite(self.momentum)):
            raise ValueError(f"momentum must be a finite number >= 0, got {self.momentum}")


def pgd_steps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    delta: torch.Tensor,
    *,
    threat: ThreatModel,
    steps: int,
    step_size: float,
    loss_fn: LossFn,
    targeted: bool = False,
    return_best: bool = True,
    l1_sparsity: float = 0.99,
    momentum: float = 0.0,
) -> torch.Tensor:
    """Run ``steps`` projected steps from ``delta``; return ``x_adv``. Costs ``steps`` forward+backward.

    With ``return_best``, a point whose logits at some step already showed success (misclassified,
    or the target reached) keeps that iterate — free, the logits are computed anyway. With
    ``momentum`` μ > 0 each step follows the accumulated ``g ← μ·g + ∇/‖∇‖₁`` (per point) instead of
    the current gradient (MI-FGSM); μ = 0 is plain PGD, bit for bit.
    """
    sign = -1.0 if targeted else 1.0
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    best = delta.detach().clone()
    delta = delta.detach()
    accumulated = torch.zeros_like(delta) if momentum > 0 else None
    for _ in range(steps):
        delta.requires_grad_(True)
        logits = model(x + delta)
        (grad,) = torch.autograd.grad(loss_fn(logits, y).sum(), delta)
        delta = delta.detach()
        if return_best:
            pred = logits.detach().argmax(dim=1)
            success = (pred == y) if targeted else (pred != y)
            new = success & ~found
            best[new] = delta[new]
            found |= success
        if accumulated is not None:
            l1 = grad.abs().flatten(1).sum(dim=1).clamp_min(1e-12).reshape(-1, *([1] * (grad.dim() - 1)))
            accumulated = momentum * accumulated + grad / l1
            grad = accumulated
        direction = threat_ascent(sign * grad, threat, x_adv=x + delta, l1_sparsity=l1_sparsity)
        delta = project(delta + step_size * direction, x, threat)
    if return_best:
        delta = torch.where(found.reshape(-1, *([1] * (x.dim() - 1))), best, delta)
    return (x + delta).clamp(*threat.box)


@ATTACKS.register("pgd")
class PGD(Attack):
    """Projected gradient descent for L∞ / L2 / L1 with random start, restarts, targeted mode and momentum."""

    name = "pgd"
    config_class = PGDConfig
    config: PGDConfig

    def _one_restart(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta0: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        step = cfg.step_size if cfg.step_size is not None else default_step_size(self.threat, cfg.steps)
        out = torch.empty_like(x)
        for sl in chunks(x.shape[0], self.chunk_size(x)):
            out[sl] = pgd_steps(
                model,
                x[sl],
                y[sl],
                delta0[sl],
                threat=self.threat,
                steps=cfg.steps,
                step_size=step,
                loss_fn=get_loss(cfg.loss),
                targeted=cfg.targeted,
                return_best=cfg.return_best,
                l1_sparsity=cfg.l1_sparsity,
                momentum=cfg.momentum,
            )
        return out

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cfg = self.config
        # Draw every restart's start up front: the result is then independent of chunking and of
        # which points earlier restarts already broke.
        starts = [
            random_init(x, self.threat, generator) if cfg.random_start else torch.zeros_like(x)
            for _ in range(cfg.restarts)
        ]
        x_adv = self._one_restart(model, x, y, starts[0])
        if cfg.restarts == 1:
            return x_adv
        with torch.no_grad():
            pending = self._still_robust(model, x_adv, y)
        for delta0 in starts[1:]:
            idx = pending.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            cand = self._one_restart(model, x[idx], y[idx], delta0[idx])
            with torch.no_grad():
                robust = self._still_robust(model, cand, y[idx])
            x_adv[idx[~robust]] = cand[~robust]
            pending[idx[~robust]] = False
        return x_adv

    def _still_robust(self, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pred = torch.cat([model(x_adv[sl]).argmax(dim=1) for sl in chunks(x_adv.shape[0], self.chunk_size(x_adv))])
        return (pred != y) if self.config.targeted else (pred == y)
