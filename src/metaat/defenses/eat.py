"""E-AT — extreme-norm adversarial training (Croce & Hein 2022, "Adversarial robustness against
multiple and single lp-threat models via quick fine-tuning of robust classifiers", ICML).

Each batch trains on PGD examples of *one* threat, drawn with a probability that favours the threat
the model is currently weakest against: E-AT keeps a running average ``r_i`` of the robust accuracy
on the training batches attacked with threat ``i`` and samples L1 with probability
``r_∞ / (r_1 + r_∞)``. metaat generalises this to any number of threats as ``p_i ∝ 1 / r_i``
(identical for two threats). The paper trains on the two extreme norms, L∞ and L1, and relies on
their union covering L2 — the preset does the same; any threats are accepted.

Threats: one or more of linf / l2 / l1. Options: ``steps`` (10), ``step_sizes`` (one per threat,
default 2.5·eps/steps), ``random_start`` (True), ``l1_sparsity`` (0.99), ``momentum`` (0.9: the
running average's decay per batch), ``floor`` (0.01: ``r_i`` is clamped from below so ``p_i``
stays finite).
Cost: K + 1 passes per example (one threat per batch).
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
class EATConfig(MultiPGDConfig):
    momentum: float = 0.9
    floor: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"defense eat: momentum must lie in [0, 1), got {self.momentum!r}")
        if not 0.0 < self.floor <= 1.0:
            raise ValueError(f"defense eat: floor must lie in (0, 1], got {self.floor!r}")


def threat_probabilities(running_acc: list[float], floor: float) -> torch.Tensor:
    """E-AT's sampling law ``p_i ∝ 1 / max(r_i, floor)`` (for two threats: ``p_1 = r_2 / (r_1 + r_2)``)."""
    inv = 1.0 / torch.tensor(running_acc, dtype=torch.float64).clamp_min(floor)
    return inv / inv.sum()


@DEFENSES.register("eat", help="one threat per batch, favouring the weakest (Croce & Hein 2022; K+1 passes)")
class EAT(Defense):
    """PGD training on one threat per batch, drawn ∝ 1 / (running robust accuracy)."""

    name = "eat"
    config_class = EATConfig
    config: EATConfig
    multi_threat = True

    def __init__(self, threats: ThreatsArg, **options: Any) -> None:
        super().__init__(threats, **options)
        self.step_sizes = step_sizes_for(self.name, self.threats, self.config.steps, self.config.step_sizes)
        self.running_acc = [1.0] * len(self.threats)  # equal: the first draws are uniform

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        k = sample_index(threat_probabilities(self.running_acc, cfg.floor), ctx.generator)
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
        acc = accuracy(logits, y)
        self.running_acc[k] = cfg.momentum * self.running_acc[k] + (1 - cfg.momentum) * acc
        metrics = {"loss": float(loss.detach()), "acc": acc}
        metrics.update({f"picked/{t}": float(i == k) for i, t in enumerate(self.threats)})
        metrics.update({f"running_acc/{t}": r for t, r in zip(self.threats, self.running_acc, strict=True)})
        return loss, metrics

    def state_dict(self) -> dict[str, Any]:
        return {"threats": [str(t) for t in self.threats], "running_acc": list(self.running_acc)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("threats") != [str(t) for t in self.threats]:
            raise ValueError(
                f"defense eat: saved state is for threats {state.get('threats')}, not {[str(t) for t in self.threats]}"
            )
        self.running_acc = [float(r) for r in state["running_acc"]]
