"""A bank of universal perturbations per threat, meta-learned with REPTILE (Metzen, Finnie,
Hutmacher 2021, "Meta Adversarial Training against Universal Patches").

Each threat owns ``size`` perturbations of the image's shape. A universal perturbation ``u`` is
one tensor shared by a whole batch; it lives in the threat's ball intersected with the box
[-1, 1] (the widest box any image allows), and the attacked input is ``clip(x + u, 0, 1)`` — a
coordinate-wise shrink of ``u`` towards ``x``, hence in the threat set around every ``x``.

Shapes: the bank tensor is ``(T, size, C, H, W)``; ``x`` is ``(B, C, H, W)``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from metaat.attacks.base import attack_mode
from metaat.attacks.patch import apply_universal, project_universal
from metaat.losses import LossFn, ce
from metaat.threats import ThreatModel, random_init, threat_ascent


def refine_universal(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    u: torch.Tensor,
    threat: ThreatModel,
    *,
    steps: int,
    step_size: float,
    loss_fn: LossFn = ce,
    l1_sparsity: float = 0.99,
) -> torch.Tensor:
    """``steps`` projected ascent steps on the batch's summed loss for one shared ``u`` ``(1, C, H, W)``."""
    u = u.detach()
    for _ in range(steps):
        u.requires_grad_(True)
        with torch.enable_grad(), attack_mode(model):
            (grad,) = torch.autograd.grad(loss_fn(model(apply_universal(x, u, threat.box)), y).sum(), u)
        u = project_universal(u.detach() + step_size * threat_ascent(grad, threat, l1_sparsity=l1_sparsity), threat)
    return u.detach()


class PerturbationBank(nn.Module):
    """``size`` universal perturbations per threat, stored as a buffer (checkpointed with the run)."""

    bank: torch.Tensor

    def __init__(self, threats: tuple[ThreatModel, ...], size: int, shape: tuple[int, ...]) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"bank size must be >= 1, got {size}")
        self.threats = tuple(threats)
        self.size = size
        self.register_buffer("bank", torch.zeros((len(self.threats), size, *shape)))

    def initialise(self, generator: torch.Generator) -> None:
        """Fill every entry with a perturbation drawn uniformly from its threat's ball."""
        shape = self.bank.shape[2:]
        for t, threat in enumerate(self.threats):
            low, high = threat.box
            centre = torch.full((self.size, *shape), 0.5 if threat.box == (0.0, 1.0) else low + (high - low) / 2)
            half = dataclasses.replace(threat, eps=threat.eps / 2)
            draw = 2 * random_init(centre, half, generator)
            self.bank[t] = project_universal(draw.to(self.bank), threat)

    def entry(self, t: int, j: int) -> torch.Tensor:
        """Entry ``j`` of threat ``t`` as ``(1, C, H, W)`` (a copy)."""
        return self.bank[t, j].unsqueeze(0).clone()

    @torch.no_grad()
    def reptile_update(self, t: int, j: int, refined: torch.Tensor, meta_lr: float) -> None:
        """REPTILE: move entry ``(t, j)`` a fraction ``meta_lr`` toward ``refined`` ``(1, C, H, W)``."""
        moved = self.bank[t, j] + meta_lr * (refined[0].to(self.bank) - self.bank[t, j])
        self.bank[t, j] = project_universal(moved.unsqueeze(0), self.threats[t])[0]
