"""MAX — adversarial training on the worst threat per example (Tramèr & Boneh 2019, "Adversarial
Training and Robustness for Multiple Perturbations", NeurIPS).

Each batch gets one PGD example per threat; each example contributes the largest of its T
cross-entropies, a direct surrogate of the union (worst-case) risk.

Threats: one or more of linf / l2 / l1. Options: ``steps`` (10), ``step_sizes`` (one per threat,
default 2.5·eps/steps), ``random_start`` (True), ``l1_sparsity`` (0.99).
Cost per example: T·K attack passes plus T update passes — ``passes_per_example`` = T·(K + 1)
(the max picks one loss per example, but choosing it needs all T forwards, and the backward runs
through all of them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from metaat.defenses.base import (
    DEFENSES,
    Defense,
    MultiPGDConfig,
    ThreatsArg,
    TrainContext,
    pgd_for_each_threat,
    stacked_losses,
    step_sizes_for,
)


@dataclasses.dataclass(frozen=True)
class MaxConfig(MultiPGDConfig):
    pass


@DEFENSES.register("max", help="PGD on every threat each batch, per-example max of the losses (Tramèr & Boneh 2019)")
class Max(Defense):
    """Mean over examples of the largest cross-entropy over threats."""

    name = "max"
    config_class = MaxConfig
    config: MaxConfig
    multi_threat = True
    discrete = True  # text's syn:k / typo:k through their kind's training attack

    def __init__(self, threats: ThreatsArg, **options: Any) -> None:
        super().__init__(threats, **options)
        self.step_sizes = step_sizes_for(self.name, self.threats, self.config.steps, self.config.step_sizes)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x_adv = pgd_for_each_threat(model, x, y, self.threats, self.step_sizes, self.config, ctx)
        losses, correct = stacked_losses(model, x_adv, y)  # (T, B) each
        worst, which = losses.max(dim=0)
        loss = worst.mean()
        metrics = {"loss": float(loss.detach()), "acc": float(correct.all(dim=0).float().mean())}
        metrics.update({f"worst/{threat}": float((which == i).float().mean()) for i, threat in enumerate(self.threats)})
        return loss, metrics
