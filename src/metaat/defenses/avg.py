"""AVG — adversarial training on every threat at once, averaging the losses (Tramèr & Boneh 2019,
"Adversarial Training and Robustness for Multiple Perturbations", NeurIPS).

Each batch gets one PGD example per threat; the loss is the mean cross-entropy over all T·B
adversarial examples (one forward of the stacked batch).

Threats: one or more of linf / l2 / l1. Options: ``steps`` (10), ``step_sizes`` (one per threat,
default 2.5·eps/steps), ``random_start`` (True), ``l1_sparsity`` (0.99).
Cost per example: T·K attack passes plus T update passes (every example is trained on T times) —
``passes_per_example`` = T·(K + 1), e.g. 33 for three threats and K = 10.
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
class AvgConfig(MultiPGDConfig):
    pass


@DEFENSES.register("avg", help="PGD on every threat each batch, mean of the losses (Tramèr & Boneh 2019)")
class Avg(Defense):
    """Mean cross-entropy over the PGD examples of all threats."""

    name = "avg"
    config_class = AvgConfig
    config: AvgConfig
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
        loss = losses.mean()
        metrics = {"loss": float(loss.detach()), "acc": float(correct.float().mean())}
        metrics.update(
            {f"acc/{threat}": float(c.float().mean()) for threat, c in zip(self.threats, correct, strict=True)}
        )
        return loss, metrics
