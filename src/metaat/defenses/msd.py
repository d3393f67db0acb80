"""MSD — multi steepest descent (Maini, Wong, Kolter 2020, "Adversarial Robustness Against the
Union of Multiple Perturbation Models", ICML).

One attack for the union of the threats: each of its K steps takes the gradient once, forms one
candidate per threat (that norm's steepest-ascent step — sign for L∞, normalised gradient for L2, a
sparse top-k direction for L1 — projected onto that threat's ball ∩ [0, 1]) and keeps, per
example, the candidate with the largest loss. The example with the largest loss over all steps is
the one trained on (the paper's ``max_delta``).

Threats: two or more of linf / l2 / l1 (one also works: it is then PGD from zero).
Options: ``steps`` (10), ``step_sizes`` (one per threat, default 2.5·eps/steps), ``l1_sparsity``
(0.99: the L1 step moves the top 1 % coordinates by |gradient|). The attack starts from zero, as
in the paper.
Cost per example: each step is 1 forward+backward plus T candidate forwards, then the update —
``passes_per_example`` = K·(T + 2)/2 + 1, e.g. 26 for three threats and K = 10.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metaat.attacks.base import attack_mode
from metaat.defenses.base import (
    DEFENSES,
    Defense,
    DefenseConfig,
    ThreatsArg,
    TrainContext,
    accuracy,
    check_steps,
    step_sizes_for,
)
from metaat.threats import ThreatModel, project, threat_ascent


@dataclasses.dataclass(frozen=True)
class MSDConfig(DefenseConfig):
    steps: int = 10
    step_sizes: tuple[float, ...] | None = None
    l1_sparsity: float = 0.99

    def __post_init__(self) -> None:
        if self.step_sizes is not None:
            sizes = (self.step_sizes,) if isinstance(self.step_sizes, int | float) else tuple(self.step_sizes)
            object.__setattr__(self, "step_sizes", tuple(float(s) for s in sizes))
        check_steps("msd", self.steps)
        for s in self.step_sizes or ():
            if not s > 0:
                raise ValueError(f"defense msd: step_sizes must all be > 0, got {self.step_sizes}")


def msd_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: tuple[ThreatModel, ...],
    step_sizes: tuple[float, ...],
    steps: int,
    l1_sparsity: float = 0.99,
) -> torch.Tensor:
    """Multi steepest descent from ``δ = 0``; returns the highest-loss iterate per example."""
    b, t = x.shape[0], len(threats)
    rows = torch.arange(b, device=x.device)
    delta = torch.zeros_like(x)
    best = delta.clone()
    best_loss = torch.full((b,), float("-inf"), device=x.device)
    with attack_mode(model):
        for _ in range(steps):
            delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y, reduction="sum"), delta)
            delta = delta.detach()
            candidates = torch.stack(
                [
                    project(
                        delta + size * threat_ascent(grad, threat, x_adv=x + delta, l1_sparsity=l1_sparsity),
                        x,
                        threat,
                    )
                    for threat, size in zip(threats, step_sizes, strict=True)
                ]
            )  # (T, B, C, H, W)
            with torch.no_grad():
                logits = model((x.unsqueeze(0) + candidates).flatten(0, 1))
                losses = F.cross_entropy(logits, y.repeat(t), reduction="none").reshape(t, b)
            step_loss, which = losses.max(dim=0)
            delta = candidates[which, rows]
            improved = step_loss > best_loss
            best[improved] = delta[improved]
            best_loss = torch.where(improved, step_loss, best_loss)
    return (x + best).clamp(*threats[0].box).detach()


@DEFENSES.register("msd", help="multi steepest descent over the union of threats (Maini et al. 2020)")
class MSD(Defense):
    """Cross-entropy on the MSD example: per step, the best of the norm-specific steps."""

    name = "msd"
    config_class = MSDConfig
    config: MSDConfig
    multi_threat = True

    def __init__(self, threats: ThreatsArg, **options: Any) -> None:
        super().__init__(threats, **options)
        self.step_sizes = step_sizes_for(self.name, self.threats, self.config.steps, self.config.step_sizes)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        with ctx.timed("attack"):
            x_adv = msd_attack(model, x.detach(), y, self.threats, self.step_sizes, cfg.steps, cfg.l1_sparsity)
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": float(loss.detach()), "acc": accuracy(logits, y)}
