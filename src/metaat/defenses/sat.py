"""SAT — stochastic adversarial training over several threats: each batch draws one threat
uniformly at random and trains on its PGD examples (the "random norm per batch" baseline of
Madaan, Shin, Hwang 2021, "Learning to Generate Noise for Multi-Attack Robustness", ICML; see also
Tramèr & Boneh 2019).

Threats: one or more of linf / l2 / l1. Options: ``steps`` (10), ``step_sizes`` (one per threat,
default 2.5·eps/steps), ``random_start`` (True), ``l1_sparsity`` (0.99), ``weights`` (one per
threat, default equal: the draw is ∝ these — e.g. ``[1, 1, 2]`` draws L1 twice as often, the prior
metaat's recipe uses, so that a benchmark can tell that prior from the rest of the recipe).
Cost: K + 1 passes per example, whatever the number of threats.
"""

from __future__ import annotations

import dataclasses
import math
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
    step_sizes_for,
)
from metaat.meta.sampling import sample_index


@dataclasses.dataclass(frozen=True)
class SATConfig(MultiPGDConfig):
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weights is not None:
            ws = (self.weights,) if isinstance(self.weights, int | float) else tuple(self.weights)
            if any(isinstance(w, bool) or not isinstance(w, int | float) for w in ws):
                raise ValueError(f"defense sat: weights must be numbers, got {self.weights!r}")
            if not ws or not all(math.isfinite(w) and w > 0 for w in ws):
                raise ValueError(f"defense sat: weights must all be finite and > 0, got {self.weights!r}")
            object.__setattr__(self, "weights", tuple(float(w) for w in ws))


@DEFENSES.register("sat", help="one random threat per batch, PGD-K (K+1 passes)")
class SAT(Defense):
    """PGD training on one uniformly drawn threat per batch."""

    name = "sat"
    config_class = SATConfig
    config: SATConfig
    multi_threat = True
    discrete = True  # text's syn:k / typo:k through their kind's training attack

    def __init__(self, threats: ThreatsArg, **options: Any) -> None:
        super().__init__(threats, **options)
        self.step_sizes = step_sizes_for(self.name, self.threats, self.config.steps, self.config.step_sizes)
        weights = self.config.weights or (1.0,) * len(self.threats)
        if len(weights) != len(self.threats):
            raise ValueError(
                f"defense sat: weights has {len(weights)} value(s) but there are {len(self.threats)} threats "
                f"({', '.join(map(str, self.threats))}); give one per threat, in the same order"
            )
        self.weights = torch.tensor(weights, dtype=torch.float64)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        k = sample_index(self.weights, ctx.generator)
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
