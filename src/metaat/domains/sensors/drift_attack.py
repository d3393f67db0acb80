"""Drift search: many random restarts, then PGD over the endpoint values, for the ``drift:b`` threat.

Threat: a per-channel linear bias ``δ[c, t] = (1 - s_t) u_c + s_t v_c`` with ``|u_c|, |v_c| <= b``
(σ units), inside the saturation box (:mod:`metaat.domains.sensors.threats`). The set has only
``2C`` parameters, so a wide random search is cheap and guards PGD against poor local optima and
gradient masking (the advice of Carlini et al. 2019 for low-dimensional threat models):

1. **Random restarts** — ``restarts`` drifts with every endpoint at a random extreme ``±b`` (the
   vertices of the parameter square, where a locally linear model's loss peaks), projected into the
   box; each costs one forward pass;
2. **PGD** — from the ``pgd_starts`` best of them (and from ``δ = 0``), ``steps`` projected steps on
   the cross-entropy along the drift kind's ascent (the endpoints move by ``sign(Lᵀ∇)``), projecting
   exactly (:func:`~metaat.domains.sensors.threats.project_drift`).

Each example keeps the point of highest margin loss seen (the clean input included), so robust
accuracy never exceeds clean accuracy. Costs ``restarts`` forward passes and ``(pgd_starts + 1) ·
steps`` forward+backward per example. Random draws are made per chunk (``batch_size``): the same
seed and chunk size give the same output.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from metaat.attacks.base import ATTACKS, Attack, AttackConfig, chunks
from metaat.domains.sensors.spike_attack import pgd_keep_best
from metaat.domains.sensors.threats import drift_signal
from metaat.losses import margin
from metaat.threats import default_step_size, project


@dataclasses.dataclass(frozen=True)
class DriftSearchConfig(AttackConfig):
    restarts: int = 100
    pgd_starts: int = 2
    steps: int = 20
    step_size: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threat is None or self.threat.norm != "drift":
            raise ValueError(f"drift-search attacks drift:b threats only, got {self.threat}")
        if self.restarts < 0 or self.steps < 0 or not 0 <= self.pgd_starts <= self.restarts:
            raise ValueError(
                f"need restarts >= 0, steps >= 0, 0 <= pgd_starts <= restarts; got {self.restarts}, {self.steps}, "
                f"{self.pgd_starts}"
            )
        if self.step_size is not None and not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise ValueError(f"step_size must be > 0, got {self.step_size}")


@ATTACKS.register("drift-search", help="random endpoint restarts + PGD for drift:b (sensor signals)")
class DriftSearch(Attack):
    """Many random extreme drifts, then PGD over the endpoint values from the best of them."""

    name = "drift-search"
    config_class = DriftSearchConfig
    config: DriftSearchConfig

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cfg = self.config
        threat = self.threat
        step = cfg.step_size if cfg.step_size is not None else default_step_size(threat, max(1, cfg.steps))
        out = torch.empty_like(x)
        for sl in chunks(x.shape[0], self.chunk_size(x)):
            xs, ys = x[sl], y[sl]
            b, c, t = xs.shape
            best = torch.zeros_like(xs)
            with torch.no_grad():
                best_score = margin(model(xs), ys)
            signs = torch.randint(0, 2, (cfg.restarts, b, c, 2), generator=generator, device=generator.device)
            ends = (signs.to(xs) * 2 - 1) * threat.eps
            scores = torch.full((max(1, cfg.restarts), b), -math.inf, device=xs.device, dtype=xs.dtype)
            candidates = []
            for r in range(cfg.restarts):
                delta = project(drift_signal(ends[r, ..., 0], ends[r, ..., 1], t), xs, threat)
                with torch.no_grad():
                    scores[r] = margin(model(xs + delta), ys)
                candidates.append(delta)
                better = scores[r] > best_score
                best = torch.where(better[:, None, None], delta, best)
                best_score = torch.where(better, scores[r], best_score)
            starts = [torch.zeros_like(xs)]
            if cfg.pgd_starts and cfg.restarts:
                order = scores.argsort(dim=0, descending=True)  # (R, B)
                stacked = torch.stack(candidates)  # (R, B, C, T)
                idx = torch.arange(b, device=xs.device)
                starts += [stacked[order[j], idx] for j in range(cfg.pgd_starts)]
            for start in starts:
                best, best_score = pgd_keep_best(model, xs, ys, start, threat, cfg.steps, step, best, best_score)
            out[sl] = (xs + best).clamp(*threat.box)
        return out
