"""PGD adversarial training (Madry, Makelov, Schmidt, Tsipras, Vladu 2018, "Towards Deep Learning
Models Resistant to Adversarial Attacks", ICLR): minimise the cross-entropy on the final iterate of
a K-step projected gradient ascent from a random start.

Threat: one of linf / l2 / l1. Options: ``steps`` (10), ``step_size`` (default 2.5·eps/steps),
``random_start`` (True), ``l1_sparsity`` (0.99, the L1 step's top-k share).
Cost: K attack forward+backward + 1 update forward+backward (``passes_per_example`` = K + 1).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from metaat.defenses.base import (
    DEFENSES,
    Defense,
    DefenseConfig,
    TrainContext,
    accuracy,
    check_steps,
    pgd_attack,
)


@dataclasses.dataclass(frozen=True)
class PGDTrainConfig(DefenseConfig):
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True
    l1_sparsity: float = 0.99

    def __post_init__(self) -> None:
        check_steps("pgd", self.steps, self.step_size)


@DEFENSES.register("pgd", help="PGD-K adversarial training (Madry et al. 2018; K+1 passes)")
class PGDTraining(Defense):
    """Cross-entropy on K-step PGD examples of one threat."""

    name = "pgd"
    config_class = PGDTrainConfig
    config: PGDTrainConfig

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        with ctx.timed("attack"):
            x_adv = pgd_attack(
                model,
                x,
                y,
                self.threats[0],
                ctx.generator,
                steps=cfg.steps,
                step_size=cfg.step_size,
                random_start=cfg.random_start,
                l1_sparsity=cfg.l1_sparsity,
            )
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": float(loss.detach()), "acc": accuracy(logits, y)}
