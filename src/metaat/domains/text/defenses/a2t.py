"""A2T — adversarial training with a cheap word-substitution attack (Yoo & Qi, Findings of EMNLP 2021,
"Towards Improving Adversarial Training of NLP Models").

Each batch draws one of the discrete threats (``syn:k`` / ``typo:k``) uniformly and finds its
adversarial texts with the threat's cheap gradient-guided attack — first-order word flips
(:mod:`metaat.domains.text.flips`: HotFlip's ranking of every allowed substitution by the loss
gradient at the embeddings, ``steps`` rounds); the loss is ``CE(clean) + alpha · CE(adversarial)``,
the objective of A2T. A2T itself ranks words by gradient and picks each replacement by querying the
model; the flips take both choices from the gradient, one pass per round.

Options: ``steps`` (1: one round, all ``k`` flips at once), ``alpha`` (1.0).
Cost per example: ``min(steps, k)`` attack passes + 2 update passes (clean and adversarial).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metaat.defenses.base import DEFENSES, Defense, DefenseConfig, TrainContext, accuracy, check_steps, pgd_attack
from metaat.meta.sampling import sample_index


@dataclasses.dataclass(frozen=True)
class A2TConfig(DefenseConfig):
    steps: int = 1
    alpha: float = 1.0

    def __post_init__(self) -> None:
        check_steps("a2t", self.steps)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not self.alpha >= 0:
            raise ValueError(f"defense a2t: alpha must be a number >= 0, got {self.alpha!r}")


@DEFENSES.register("a2t", help="clean + cheap word-flip adversarial loss (A2T, Yoo & Qi 2021; text)")
class A2T(Defense):
    """``CE(x) + alpha · CE(x')`` with ``x'`` from first-order word flips on one drawn threat."""

    name = "a2t"
    config_class = A2TConfig
    config: A2TConfig
    multi_threat = True
    discrete = True

    def __init__(self, threats: Any, **options: Any) -> None:
        super().__init__(threats, **options)
        continuous = [str(t) for t in self.threats if t.continuous]
        if continuous:
            raise ValueError(
                f"defense a2t trains against discrete edits (syn:k, typo:k); {', '.join(continuous)} is continuous"
            )
        self.weights = torch.ones(len(self.threats), dtype=torch.float64)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        k = sample_index(self.weights, ctx.generator)
        with ctx.timed("attack"):
            x_adv = pgd_attack(model, x, y, self.threats[k], ctx.generator, steps=self.config.steps)
        logits = model(torch.cat([x, x_adv]))
        clean, adv = logits[: len(y)], logits[len(y) :]
        loss = F.cross_entropy(clean, y) + self.config.alpha * F.cross_entropy(adv, y)
        metrics = {"loss": float(loss.detach()), "acc": accuracy(adv, y), "clean_acc": accuracy(clean, y)}
        metrics.update({f"picked/{t}": float(i == k) for i, t in enumerate(self.threats)})
        return loss, metrics
