"""FGSM / FGM: one steepest-ascent step (Goodfellow, Shlens, Szegedy 2015, "Explaining and
Harnessing Adversarial Examples"), optionally from a random start (Wong, Rice, Kolter 2020, "Fast is
better than free").

Threat: any of linf / l2 / l1 — the step follows that norm's steepest-ascent direction (sign,
normalised gradient, sparse top-k) and the result is projected onto ball ∩ [0, 1].

Arguments: ``step_size`` (default eps; Wong et al. use 1.25·eps with ``random_start=True``),
``random_start``, ``targeted``, ``loss`` (ce / margin / dlr), ``l1_sparsity``.
Shapes: ``x`` (B, C, H, W) in [0, 1], ``y`` (B,) int64 → ``x_adv`` (B, C, H, W).

>>> import torch, metaat.attacks as A
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
>>> x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 2])
>>> x_adv = A.create("fgsm", threat="linf:0.1")(model, x, y)
>>> bool(((x_adv - x).abs() <= 0.1 + 1e-6).all())
True
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from metaat.attacks.base import ATTACKS, Attack, AttackConfig, chunks
from metaat.losses import get_loss
from metaat.threats import project, random_init, threat_ascent


@dataclasses.dataclass(frozen=True)
class FGSMConfig(AttackConfig):
    step_size: float | None = None
    random_start: bool = False
    targeted: bool = False
    loss: str = "ce"
    l1_sparsity: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        get_loss(self.loss)
        if self.step_size is not None and self.step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")


@ATTACKS.register("fgsm")
class FGSM(Attack):
    """One signed/normalised gradient step (FGSM; with random start, the 'fast' attack)."""

    name = "fgsm"
    config_class = FGSMConfig
    config: FGSMConfig

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cfg, threat = self.config, self.threat
        loss_fn = get_loss(cfg.loss)
        step = cfg.step_size if cfg.step_size is not None else threat.eps
        delta0 = random_init(x, threat, generator) if cfg.random_start else torch.zeros_like(x)
        out = torch.empty_like(x)
        for sl in chunks(x.shape[0], self.chunk_size(x)):
            xc, delta = x[sl], delta0[sl].clone().requires_grad_(True)
            loss = loss_fn(model(xc + delta), y[sl]).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            if cfg.targeted:
                grad = -grad
            direction = threat_ascent(grad, threat, x_adv=xc + delta.detach(), l1_sparsity=cfg.l1_sparsity)
            new = project(delta.detach() + step * direction, xc, threat)
            out[sl] = (xc + new).clamp(*threat.box)
        return out
