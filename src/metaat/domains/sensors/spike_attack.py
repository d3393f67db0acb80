"""Spike search: sparse PGD, then Sparse-RS-style random search, for the ``spike:k,a`` threat.

Threat: at most ``k`` time steps of a ``(B, C, T)`` signal changed, each coordinate by at most ``a``
(σ units), inside the saturation box (:mod:`metaat.domains.sensors.threats`).

1. **Sparse PGD** — ``steps`` projected gradient steps on the cross-entropy, moving along the
   spike kind's ascent (``sign(g)`` on the k time steps of largest gradient, step ``a``) and
   projecting exactly onto the set (the k columns whose kept values save the most). ``restarts``
   runs: the first from ``δ = 0``, the others from random spikes.
2. **Random search** (Croce, Andriushchenko, Singh, Flammarion, Hein, "Sparse-RS: a versatile
   framework for query-efficient sparse black-box adversarial attacks", AAAI 2022) — from the best
   point so far, ``queries`` iterations each move ``p`` of the k spikes to random other time steps with
   random extreme values ``±a`` per channel (clipped to the box), ``p`` decreasing from ``k/2`` to 1,
   and keep the proposal when the margin loss does not decrease. Gradient-free, so it also
   checks the gradient steps against masking.

Each example keeps the point of highest margin loss seen (the clean input included), so a point
misclassified clean stays misclassified and robust accuracy never exceeds clean accuracy. Costs
``restarts · steps`` forward+backward and ``queries`` forward passes per example. Random draws are
made per chunk (``batch_size``): the same seed and chunk size give the same output.

>>> import torch, metaat.attacks as A
>>> from metaat.threats import ThreatModel, in_threat
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 20, 3))
>>> x, y = torch.randn(4, 2, 20).clamp(-8, 8), torch.tensor([0, 1, 2, 0])
>>> threat = ThreatModel.parse("spike:3,1.5").with_box(-8, 8)
>>> x_adv = A.create("spike-search", threat=threat, steps=5, queries=20)(model, x, y)
>>> bool(in_threat(x_adv, x, threat).all()), int(((x_adv - x).abs().amax(dim=1) > 0).sum(dim=1).max()) <= 3
(True, True)
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from metaat.attacks.base import ATTACKS, Attack, AttackConfig, chunks
from metaat.losses import ce, margin
from metaat.threats import ThreatModel, default_step_size, project, random_init, threat_ascent


@dataclasses.dataclass(frozen=True)
class SpikeSearchConfig(AttackConfig):
    steps: int = 50
    restarts: int = 2
    step_size: float | None = None
    queries: int = 300

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threat is None or self.threat.norm != "spike":
            raise ValueError(f"spike-search attacks spike:k,a threats only, got {self.threat}")
        if self.steps < 0 or self.restarts < 1 or self.queries < 0:
            raise ValueError(
                f"need steps >= 0, restarts >= 1, queries >= 0; got {self.steps}, {self.restarts}, {self.queries}"
            )
        if self.step_size is not None and not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise ValueError(f"step_size must be > 0, got {self.step_size}")


def _keep_best(
    best: torch.Tensor, best_score: torch.Tensor, delta: torch.Tensor, score: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    better = score > best_score
    return torch.where(better[:, None, None], delta, best), torch.where(better, score, best_score)


def pgd_keep_best(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    delta: torch.Tensor,
    threat: ThreatModel,
    steps: int,
    step_size: float,
    best: torch.Tensor,
    best_score: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` projected CE-ascent steps from ``delta``; returns the updated (best δ, best margin)."""
    for _ in range(steps):
        delta = delta.detach().requires_grad_(True)
        logits = model(x + delta)
        (grad,) = torch.autograd.grad(ce(logits, y).sum(), delta)
        best, best_score = _keep_best(best, best_score, delta.detach(), margin(logits.detach(), y))
        delta = project(delta.detach() + step_size * threat_ascent(grad, threat), x, threat)
    with torch.no_grad():
        return _keep_best(best, best_score, delta, margin(model(x + delta), y))


def _random_cols(mask: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Per row, ``count`` random column indices among the True entries of ``mask`` ``(B, T)``
    (each row must hold at least ``count``)."""
    noise = torch.rand(mask.shape, generator=generator, device=generator.device).to(mask.device)
    return torch.where(mask, noise, torch.full_like(noise, -1.0)).topk(count, dim=1).indices


def random_search(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    queries: int,
    best: torch.Tensor,
    best_score: torch.Tensor,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse-RS over the spike set, starting from ``best``; returns the updated (best δ, best margin)."""
    b, c, t = x.shape
    k = min(int(threat.params[0]), t)
    if k >= t or queries == 0:
        return best, best_score
    # The current support: the k columns of largest norm (ties broken at random).
    tie = torch.rand(b, t, generator=generator, device=generator.device).to(x.device) * 1e-6
    support = torch.zeros(b, t, dtype=torch.bool, device=x.device)
    support.scatter_(1, (best.norm(dim=1) + tie).topk(k, dim=1).indices, True)
    current, current_score = best.clone(), best_score.clone()
    rows = torch.arange(b, device=x.device)[:, None]
    for i in range(queries):
        p = max(1, min(k, t - k, math.ceil(k / 2 * 0.5 ** (4 * i // queries))))
        out_cols = _random_cols(support, p, generator)
        in_cols = _random_cols(~support, p, generator)
        signs = torch.randint(0, 2, (b, c, p), generator=generator, device=generator.device).to(x) * 2 - 1
        proposal = current.clone()
        proposal[rows, :, out_cols] = 0.0
        proposal.transpose(1, 2)[rows, in_cols] = (signs * threat.eps).transpose(1, 2)
        proposal = project(proposal, x, threat)
        with torch.no_grad():
            score = margin(model(x + proposal), y)
        accept = score >= current_score
        if bool(accept.any()):
            new_support = support.clone()
            new_support[rows, out_cols] = False
            new_support[rows, in_cols] = True
            support = torch.where(accept[:, None], new_support, support)
            current = torch.where(accept[:, None, None], proposal, current)
            current_score = torch.where(accept, score, current_score)
        best, best_score = _keep_best(best, best_score, current, current_score)
    return best, best_score


@ATTACKS.register("spike-search", help="sparse PGD + Sparse-RS random search for spike:k,a (sensor signals)")
class SpikeSearch(Attack):
    """Sparse PGD then Sparse-RS-style random search over the spike set."""

    name = "spike-search"
    config_class = SpikeSearchConfig
    config: SpikeSearchConfig

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cfg = self.config
        threat = self.threat
        step = cfg.step_size if cfg.step_size is not None else default_step_size(threat, max(1, cfg.steps))
        out = torch.empty_like(x)
        for sl in chunks(x.shape[0], self.chunk_size(x)):
            xs, ys = x[sl], y[sl]
            best = torch.zeros_like(xs)
            with torch.no_grad():
                best_score = margin(model(xs), ys)
            for r in range(cfg.restarts):
                start = torch.zeros_like(xs) if r == 0 else random_init(xs, threat, generator)
                best, best_score = pgd_keep_best(model, xs, ys, start, threat, cfg.steps, step, best, best_score)
            best, best_score = random_search(model, xs, ys, threat, cfg.queries, best, best_score, generator)
            out[sl] = (xs + best).clamp(*threat.box)
        return out
