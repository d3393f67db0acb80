"""The meta-learners on text: ``l2l`` and ``metaat`` for the discrete threats ``syn:k`` / ``typo:k``.

Both own a learned substitution attacker (:mod:`.substitution_attacker`): a small network over the
target's token vectors, conditioned on the threat, that proposes at most ``k`` substitutions from
the threat's candidate sets and learns by gradient ascent on the target's loss at a continuous
relaxation of its proposal — one pass through the target, in attack mode (eval, no parameter
gradients). They are the discrete-edit variants of the core names (registered in
``DISCRETE_VARIANTS``): ``metaat.defenses.create("metaat", ["syn:2", "typo:2"])`` builds the text one.

* ``l2l`` — Learning to Defend by Learning to Attack (Jiang, Ma, Chen, Bailey, Wang, AISTATS 2021),
  one threat drawn uniformly per batch: the attacker ascends the relaxed loss, the target descends
  ``CE(f(x'))`` on the attacker's discrete proposal ``x'`` (``+ clean_weight · CE(f(x))``, as the
  image ``l2l``). Passes per example: 1 (attacker) + 1 (update; 2 with ``clean_weight > 0``).
* ``metaat`` — metaat's recipe: one threat per batch drawn adaptively (threats whose running robust
  accuracy on their own training batches is lowest more often; Croce & Hein 2022, "Adversarial
  Robustness against Multiple and Single lp-Threat Models via Quick Fine-Tuning of Robust
  Classifiers"; no L1 prior here); the attacker's relaxed point is the warm start, and
  ``refine_steps`` first-order rounds (HotFlip, Ebrahimi et al., ACL 2018) re-choose the ``k`` edits
  by their gain — the first from the input gradient of the attacker's own pass (no extra pass),
  each later one from a pass at the previous choice; the attacker is taught to propose where the
  refinement ended (``imitate`` · cross-entropy, no target pass); the target trains on
  ``CE(f(x')) + β · JS(p_clean, p_adv)`` (MNG-AC's consistency, Madaan, Shin, Hwang, ICML 2021,
  "Learning to Generate Noise for Multi-Attack Robustness"; β = ``consistency``). With
  ``refine_steps = 0`` it trains on the attacker's proposal. Passes per example:
  1 (attacker) + ``max(0, refine_steps − 1)`` + 1 (update) + 1 with consistency — 3 at the defaults,
  against ``K + 1`` for ``sat`` with K-step flips.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metaat.attacks.base import attack_mode
from metaat.defenses.base import DISCRETE_VARIANTS, Defense, DefenseConfig, TrainContext, accuracy
from metaat.domains.text.defenses.substitution_attacker import (
    KINDS,
    Candidates,
    Scores,
    SubstitutionAttacker,
    SubstitutionSpec,
    apply,
    candidates,
    flip_choice,
    imitation_loss,
    propose,
    relax,
    score,
)
from metaat.domains.text.space import active_space
from metaat.losses import consistency_js
from metaat.meta.sampling import adaptive_probabilities, ema, sample_index, uniform
from metaat.models import unwrap
from metaat.threats import ThreatModel


def _check(name: str, cfg: DefenseConfig, positive: tuple[str, ...], non_negative: tuple[str, ...]) -> None:
    for field in positive + non_negative:
        value = getattr(cfg, field)
        bad = isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
        if bad or (value <= 0 if field in positive else value < 0):
            need = "> 0" if field in positive else ">= 0"
            raise ValueError(f"defense {name} (text): {field} must be a finite number {need}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class TextL2LConfig(DefenseConfig):
    hidden: int = 64
    attacker_lr: float = 1e-3
    explore: float = 1.0
    clean_weight: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 1:
            raise ValueError(f"defense l2l (text): hidden must be an integer >= 1, got {self.hidden!r}")
        _check("l2l", self, ("attacker_lr",), ("explore", "clean_weight"))


@dataclasses.dataclass(frozen=True)
class TextMetaATConfig(DefenseConfig):
    hidden: int = 64
    attacker_lr: float = 1e-3
    explore: float = 1.0
    refine_steps: int = 1
    imitate: float = 1.0
    consistency: float = 1.0
    adaptive: bool = True
    adaptive_floor: float = 0.1
    ema_decay: float = 0.9

    def __post_init__(self) -> None:
        for name, low in (("hidden", 1), ("refine_steps", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"defense metaat (text): {name} must be an integer >= {low}, got {value!r}")
        _check("metaat", self, ("attacker_lr", "adaptive_floor"), ("explore", "imitate", "consistency"))
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"defense metaat (text): ema_decay must lie in [0, 1), got {self.ema_decay!r}")


class LearnedSubstitutions(Defense):
    """What both defenses share: the attacker, its optimizer, its relaxed pass and its state."""

    multi_threat = True
    discrete = True

    def __init__(self, threats: Any, **options: Any) -> None:
        super().__init__(threats, **options)
        bad = [str(t) for t in self.threats if t.continuous or t.norm not in KINDS]
        if bad:
            raise ValueError(
                f"defense {self.name} (text) learns word substitutions for {', '.join(KINDS)}; got {', '.join(bad)}"
            )
        self.attacker: SubstitutionAttacker | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.batches = 0

    def setup(self, model: nn.Module, device: torch.device, num_classes: int, input_shape: tuple[int, ...]) -> None:
        with torch.no_grad():
            dim = int(unwrap(model).embed(torch.ones(1, 1, dtype=torch.long, device=device)).shape[-1])  # type: ignore[operator]
        hidden = int(self.config.hidden)  # type: ignore[attr-defined]
        self.attacker = SubstitutionAttacker(SubstitutionSpec(dim, hidden)).to(device)
        self.optimizer = torch.optim.Adam(self.attacker.parameters(), lr=self.config.attacker_lr)  # type: ignore[attr-defined]

    def modules(self) -> dict[str, nn.Module]:
        return {"attacker": self.attacker} if self.attacker is not None else {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"attacker": self.optimizer} if self.optimizer is not None else {}

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"batches": self.batches, "threats": [str(t) for t in self.threats]}
        if self.attacker is not None:
            out["attacker"] = {"kind": self.attacker.kind, "spec": self.attacker.spec.to_dict()}
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("threats")
        if saved is not None and saved != [str(t) for t in self.threats]:
            raise ValueError(
                f"{self.name}: checkpoint trained on threats {saved}, this run has {[str(t) for t in self.threats]}"
            )
        self.batches = int(state.get("batches", 0))

    def relaxed_pass(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel
    ) -> tuple[Candidates, Scores, torch.Tensor, torch.Tensor]:
        """Candidates, the attacker's scores, its relaxed vectors and the target's mean CE there: one
        forward through ``model`` in attack mode (the target's parameters get no gradient)."""
        assert self.attacker is not None
        cands = candidates(model, x, threat, active_space())
        self.attacker.train()
        scores = score(self.attacker, x, cands, threat)
        relaxed = relax(scores, cands, int(threat.eps))
        with attack_mode(model):
            ce_relaxed = F.cross_entropy(model(x, embedded=relaxed), y)
        return cands, scores, relaxed, ce_relaxed

    def attacker_step(self, objective: torch.Tensor, ctx: TrainContext) -> None:
        """One step of the attacker's optimizer on ``objective`` (minimised)."""
        assert self.attacker is not None and self.optimizer is not None
        params = list(self.attacker.parameters())
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        ctx.sync_gradients(params)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


@DISCRETE_VARIANTS.register(
    "l2l", help="learned substitution attacker trained on a relaxation, target on its proposals (text; 2 passes)"
)
class TextL2L(LearnedSubstitutions):
    """L2L (Jiang et al. 2021) on word substitutions: alternating min-max with a learned attacker."""

    name = "l2l"
    config_class = TextL2LConfig
    config: TextL2LConfig

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        t = sample_index(uniform(len(self.threats)), ctx.generator)
        threat = self.threats[t]
        self.batches += 1
        with ctx.timed("attack"):
            cands, scores, _, ce_relaxed = self.relaxed_pass(model, x, y, threat)
            assert self.attacker is not None
            self.attacker_step(-ce_relaxed, ctx)
            chosen, which = propose(scores, cands, int(threat.eps), ctx.generator, cfg.explore)
            x_adv = apply(x, cands, chosen, which)
        b = x.shape[0]
        if cfg.clean_weight > 0:
            logits = model(torch.cat([x_adv, x]))
            adv = logits[:b]
            loss = F.cross_entropy(adv, y) + cfg.clean_weight * F.cross_entropy(logits[b:], y)
        else:
            adv = model(x_adv)
            loss = F.cross_entropy(adv, y)
        return loss, {
            "loss": float(loss.detach()),
            "acc": accuracy(adv, y),
            "threat": float(t),
            "relaxed_ce": float(ce_relaxed.detach()),
        }


@DISCRETE_VARIANTS.register(
    "metaat",
    help="learned substitution proposal + 1 first-order refinement, adaptive threat, JS consistency (text; 3 passes)",
)
class TextMetaAT(LearnedSubstitutions):
    """metaat's recipe on word substitutions: learned warm start, first-order refinement, imitation."""

    name = "metaat"
    config_class = TextMetaATConfig
    config: TextMetaATConfig

    def __init__(self, threats: Any, **options: Any) -> None:
        super().__init__(threats, **options)
        self.acc: list[float | None] = [None] * len(self.threats)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "acc": list(self.acc)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.acc = list(state.get("acc", [None] * len(self.threats)))

    def threat_probabilities(self) -> list[float]:
        """Sampling distribution over the training threats for the next batch."""
        if not self.config.adaptive:
            return uniform(len(self.threats))
        return adaptive_probabilities(self.acc, self.config.adaptive_floor)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        probs = self.threat_probabilities()
        t = sample_index(probs, ctx.generator)
        threat = self.threats[t]
        k = int(threat.eps)
        self.batches += 1
        metrics: dict[str, float] = {"threat": float(t)}
        with ctx.timed("attack"):
            cands, scores, relaxed, ce_relaxed = self.relaxed_pass(model, x, y, threat)
            # One backward through the target gives the input gradient at the relaxed point; the
            # attacker's ascent is its chain rule, Σ (∂CE/∂relaxed)·(∂relaxed/∂φ), taken below in one
            # backward through the attacker together with the imitation term.
            (grad,) = torch.autograd.grad(ce_relaxed, relaxed)
            objective = -(grad.detach() * relaxed).sum()
            proposed, which = propose(scores, cands, k, ctx.generator, cfg.explore)
            chosen = proposed
            for r in range(cfg.refine_steps):
                if r > 0:
                    grad = self._input_gradient(model, apply(x, cands, chosen, which), y)
                chosen, which = flip_choice(grad, cands, k)
            if cfg.refine_steps > 0 and cfg.imitate > 0:
                imitation = imitation_loss(scores, chosen, which)
                objective = objective + cfg.imitate * imitation
                metrics["imitation"] = float(imitation.detach())
                metrics["kept"] = float((proposed & chosen).sum()) / max(1, int(proposed.sum()))
            self.attacker_step(objective, ctx)
            x_adv = apply(x, cands, chosen, which)

        b = x.shape[0]
        if cfg.consistency > 0:
            logits = model(torch.cat([x_adv, x]))
            adv = logits[:b]
            js = consistency_js(logits[b:], adv).mean()
            loss = F.cross_entropy(adv, y) + cfg.consistency * js
            metrics["js"] = float(js.detach())
        else:
            adv = model(x_adv)
            loss = F.cross_entropy(adv, y)
        acc = accuracy(adv, y)
        self.acc[t] = ema(self.acc[t], acc, cfg.ema_decay)
        metrics.update(loss=float(loss.detach()), acc=acc, relaxed_ce=float(ce_relaxed.detach()))
        metrics.update({f"p/{threat_i}": p for threat_i, p in zip(self.threats, probs, strict=True)})
        return loss, metrics

    @staticmethod
    def _input_gradient(model: nn.Module, ids: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The target's loss gradient at the vectors of ``ids`` ``(B, L, D)``: one pass, attack mode."""
        with attack_mode(model), torch.enable_grad():
            emb = unwrap(model).embed(ids).detach().requires_grad_(True)  # type: ignore[operator]
            loss = F.cross_entropy(model(ids, embedded=emb), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, emb)
        return grad
