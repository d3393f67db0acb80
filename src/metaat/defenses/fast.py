"""'Fast' adversarial training: FGSM from a uniform random start with step 1.25·eps (Wong, Rice,
Kolter 2020, "Fast is better than free: Revisiting adversarial training", ICLR).

Threat: one of linf / l2 / l1 (for L2/L1 the step is the normalised / sparse top-k steepest-ascent
direction). Options: ``step_scale`` (1.25: the step is ``step_scale · eps``), ``random_start``
(True — without it single-step training overfits catastrophically almost at once),
``l1_sparsity`` (0.99).
Cost: 1 attack forward+backward + 1 update forward+backward (``passes_per_example`` = 2).
Single-step training can still collapse (catastrophic overfitting: FGSM robustness stays high while
PGD robustness falls to ~0); the training loop's guard watches per-epoch PGD accuracy and rolls
back (Wong et al.'s early stopping), on by default for this defense.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from metaat.defenses.base import DEFENSES, Defense, DefenseConfig, TrainContext, accuracy, pgd_attack


@dataclasses.dataclass(frozen=True)
class FastConfig(DefenseConfig):
    step_scale: float = 1.25
    random_start: bool = True
    l1_sparsity: float = 0.99

    def __post_init__(self) -> None:
        if not self.step_scale > 0:
            raise ValueError(f"defense fast: step_scale must be > 0, got {self.step_scale!r}")


@DEFENSES.register("fast", help="FGSM + random start, step 1.25·eps (Wong et al. 2020; 2 passes)")
class Fast(Defense):
    """FGSM adversarial training with a random start (one attack step per batch)."""

    name = "fast"
    config_class = FastConfig
    config: FastConfig
    single_step = True

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        threat, cfg = self.threats[0], self.config
        with ctx.timed("attack"):
            # One projected step from the random start = FGSM with random init.
            x_adv = pgd_attack(
                model,
                x,
                y,
                threat,
                ctx.generator,
                steps=1,
                step_size=cfg.step_scale * threat.eps,
                random_start=cfg.random_start,
                l1_sparsity=cfg.l1_sparsity,
            )
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": float(loss.detach()), "acc": accuracy(logits, y)}
