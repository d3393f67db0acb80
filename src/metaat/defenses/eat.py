"""E-AT — extreme-norm adversarial training (Croce & Hein 2022, "Adversarial robustness against
multiple and single lp-threat models via quick fine-tuning of robust classifiers", ICML).

Each batch trains on adversarial examples of *one* threat, drawn with a probability that favours
the threat the model is currently weakest against. As in the authors' code (fra31/robust-finetuning,
``train.py``): ``acc_i`` is the robust accuracy on *all* training examples attacked with threat ``i``
since training began (a cumulative average, not a moving one), the draw is uniform until every
threat has been seen once, and then ``p_i ∝ 1 − acc_i`` (uniform again if every ``acc_i`` is 1).
The paper trains on the two extreme norms, L∞ and L1, and relies on their union covering L2 — the
preset does the same; any number of threats is accepted.

One deliberate difference: the authors' inner attack is their APGD (10 iterations, adaptive step
and, at L1, adaptive sparsity); here it is the same PGD-K (random start, step 2.5·eps/K, top-1 %
L1 direction) every baseline of the benchmark uses, so that rows differ by their training rule
only. At L1 the reference APGD is stronger than this PGD at the same number of iterations
(``benchmarks/l1_probe.py`` measures the gap), so E-AT's L1 examples here are slightly weaker than
in the paper at equal cost.

Threats: one or more of linf / l2 / l1. Options: ``steps`` (10), ``step_sizes`` (one per threat,
default 2.5·eps/steps), ``random_start`` (True), ``l1_sparsity`` (0.99).
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
    step_sizes_for,
)
from metaat.meta.sampling import sample_index


@dataclasses.dataclass(frozen=True)
class EATConfig(MultiPGDConfig):
    pass


def threat_probabilities(robust: list[float], seen: list[float]) -> torch.Tensor:
    """E-AT's sampling law: uniform until every threat has been attacked once, then ``p_i ∝ 1 − acc_i``
    with ``acc_i = robust_i / seen_i`` (uniform when every threat is fully robust)."""
    n = len(seen)
    if min(seen) <= 0:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    err = 1.0 - torch.tensor(robust, dtype=torch.float64) / torch.tensor(seen, dtype=torch.float64)
    err = err.clamp_min(0.0)
    return err / err.sum() if float(err.sum()) > 0 else torch.full((n,), 1.0 / n, dtype=torch.float64)


@DEFENSES.register("eat", help="one threat per batch, favouring the weakest (Croce & Hein 2022; K+1 passes)")
class EAT(Defense):
    """PGD training on one threat per batch, drawn ∝ its robust error so far."""

    name = "eat"
    config_class = EATConfig
    config: EATConfig
    multi_threat = True

    def __init__(self, threats: ThreatsArg, **options: Any) -> None:
        super().__init__(threats, **options)
        self.step_sizes = step_sizes_for(self.name, self.threats, self.config.steps, self.config.step_sizes)
        # robust training examples and attacked training examples per threat, since training began
        self.robust = [0.0] * len(self.threats)
        self.seen = [0.0] * len(self.threats)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        k = sample_index(threat_probabilities(self.robust, self.seen), ctx.generator)
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
        self.robust[k] += acc * len(y)
        self.seen[k] += len(y)
        metrics = {"loss": float(loss.detach()), "acc": acc}
        metrics.update({f"picked/{t}": float(i == k) for i, t in enumerate(self.threats)})
        metrics.update(
            {f"robust_acc/{t}": r / n for t, r, n in zip(self.threats, self.robust, self.seen, strict=True) if n}
        )
        return loss, metrics

    def state_dict(self) -> dict[str, Any]:
        return {"threats": [str(t) for t in self.threats], "robust": list(self.robust), "seen": list(self.seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("threats") != [str(t) for t in self.threats]:
            raise ValueError(
                f"defense eat: saved state is for threats {state.get('threats')}, not {[str(t) for t in self.threats]}"
            )
        if "seen" not in state:
            raise ValueError(
                "defense eat: this checkpoint was saved by an earlier E-AT sampling law (a moving average); "
                "retrain from scratch"
            )
        self.robust = [float(r) for r in state["robust"]]
        self.seen = [float(n) for n in state["seen"]]
