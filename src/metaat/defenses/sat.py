"""SAT — stochastic adversarial training over several threats: each batch draws one threat
uniformly at random and trains on its PGD examples (the "random norm per batch" baseline of
Madaan, Shin, Hwang 2021, "Learning to Generate Noise for Multi-Attack Robustness", ICML; see also
Tramèr & Boneh 2019).

Threats: one or more of linf / l2 / l1. Options: ``steps`` (10), ``step_sizes`` (one per threat,
default 2.5·eps/steps), ``random_start`` (True), ``l1_sparsity`` (0.99).
Cost: K + 1 passes per example, whatever the number of threats.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metaat.defenses.base import (
    DEFENSES,
    Defense,
    MultiPGDConfig,
    ThreatsArg,
    TrainContext,
    accuracy,
    pgd_attack,
    sample_index,
    step_sizes_for,
)


@dataclasses.dataclass(frozen=True)
class SATConfig(MultiPGDConfig):
    pass


@DEFENSES.register("sat", help="one random threat per batch, PGD-K (K+1 passes)")
class SAT(Defense):
    """PGD training on one uniformly drawn threat per batch."""

    name = "sat"
    config_class = SATConfig
    config: SATConfig
    multi_threat = True

    def __init__(self, threats: ThreatsArg, **options: Any) -> None:
        super().__init__(threats, **options)
        self.step_sizes = step_sizes_for(self.name, self.threats, self.config.steps, self.config.step_sizes)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        k = sample_index(torch.ones(len(self.threats)), ctx.generator)
        with ctx.timed("attack"):
            x_adv = pgd_attack(
                model,
                x,
                y,
                self.threats[k],
                ctx.generator,
                steps=cfg.steps,
                step_size=self.step_sizes[k],
                random_start=cfg.random_start,
                l1_sparsity=cfg.l1_sparsity,
            )
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        metrics = {"loss": float(loss.detach()), "acc": accuracy(logits, y)}
        metrics.update({f"picked/{t}": float(i == k) for i, t in enumerate(self.threats)})
        return loss, metrics
