"""The occasional full PGD batch of the ``metaat`` defense, kept for the presets that use it.

With ``pgd_every = m > 0`` every m-th batch is a ``pgd_steps``-step PGD batch (Madry et al. 2018;
step 2.5·eps/K, final iterate) instead of the learned attacker's step and its refinement. On those
batches:

* ``distill`` > 0 teaches the learned attacker to land where PGD-K landed,
  ``distill · ||δ_φ − δ_pgd||² / ||δ_pgd||²``; fed PGD's own first input gradient, a one-step
  attacker costs no extra pass;
* ``lookahead`` meta-updates the attacker as MNG-AC does (Madaan, Shin, Hwang 2021, "Learning to
  Generate Noise for Multi-Attack Robustness"): φ descends ``CE(f_θ'(x_pgd))`` with
  ``θ' = θ − η ∇_θ CE(f_θ(x + δ_φ))`` — second order, through ``torch.func.functional_call``;
* the per-threat running robust accuracy that drives adaptive sampling is measured on them.

Passes through the target on such a batch: ``pgd_steps`` + 1 (update) + 1 with consistency, plus
``attacker_steps − 1`` for ``distill`` and ``attacker_steps + 2.5`` for ``lookahead``.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from metaat.attacks.base import attack_mode
from metaat.attacks.pgd import pgd_steps
from metaat.defenses.base import TrainContext
from metaat.losses import ce
from metaat.meta.generators import LearnedAttacker
from metaat.meta.lookahead import lookahead_loss
from metaat.meta.rollout import attacker_rollout, input_gradient
from metaat.threats import ThreatModel, default_step_size, project, threat_ascent


class PGDBatchOptions(Protocol):
    """The options of :class:`~metaat.defenses.metaat.MetaATConfig` that PGD batches read."""

    @property
    def pgd_every(self) -> int: ...
    @property
    def pgd_steps(self) -> int: ...
    @property
    def l1_sparsity(self) -> float: ...
    @property
    def attacker_steps(self) -> int: ...
    @property
    def random_start(self) -> bool: ...
    @property
    def distill(self) -> float: ...
    @property
    def lookahead(self) -> bool: ...
    @property
    def lookahead_lr(self) -> float: ...


class LearnedStart(Protocol):
    """What a PGD batch needs from the defense: its attacker, the attacker's optimizer, ``imitate``."""

    attacker: LearnedAttacker | None
    optimizer: torch.optim.Optimizer | None

    @property
    def config(self) -> PGDBatchOptions: ...

    def imitate(
        self, delta: torch.Tensor, x: torch.Tensor, x_adv: torch.Tensor, weight: float, ctx: TrainContext
    ) -> float: ...


def pgd_batch_due(cfg: PGDBatchOptions, batches: int) -> bool:
    """Whether the batch after ``batches`` earlier ones is a PGD batch (every ``pgd_every``-th; 0: never).

    >>> from types import SimpleNamespace
    >>> [pgd_batch_due(SimpleNamespace(pgd_every=4), b) for b in range(5)]
    [False, False, False, True, False]
    """
    return cfg.pgd_every > 0 and batches % cfg.pgd_every == cfg.pgd_every - 1


def pgd_batch(
    defense: LearnedStart,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    delta0: torch.Tensor,
    threat: ThreatModel,
    ctx: TrainContext,
    metrics: dict[str, float],
) -> torch.Tensor:
    """PGD-K from ``delta0`` (final iterate, detached); its first gradient is shared with the attacker's
    distillation step, and ``distill`` / ``lookahead`` train the attacker on the result."""
    cfg = defense.config
    step = default_step_size(threat, cfg.pgd_steps)
    grad0 = input_gradient(model, x, y, delta0)
    direction = threat_ascent(grad0, threat, x_adv=x + delta0, l1_sparsity=cfg.l1_sparsity)
    delta1 = project(delta0 + step * direction, x, threat)
    x_adv = (x + delta1).clamp(0, 1)
    if cfg.pgd_steps > 1:
        with attack_mode(model):
            x_adv = pgd_steps(
                model,
                x,
                y,
                delta1,
                threat=threat,
                steps=cfg.pgd_steps - 1,
                step_size=step,
                loss_fn=ce,
                return_best=False,
                l1_sparsity=cfg.l1_sparsity,
            )
    x_adv = x_adv.detach()
    if cfg.distill > 0 and defense.attacker is not None:
        metrics["distill"] = distill_step(defense, model, x, y, x_adv, delta0, grad0, threat, ctx)
    if cfg.lookahead and defense.attacker is not None:
        metrics["meta_loss"] = lookahead_step(defense, model, x, y, x_adv, delta0, threat, ctx)
    return x_adv


def distill_step(
    defense: LearnedStart,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv: torch.Tensor,
    delta0: torch.Tensor,
    grad0: torch.Tensor,
    threat: ThreatModel,
    ctx: TrainContext,
) -> float:
    """Teach the attacker where PGD went: φ descends ``distill · ||δ_φ − δ_pgd||² / ||δ_pgd||²``.

    The first learned step reuses PGD's first gradient, so a one-step attacker costs no pass.
    """
    cfg, attacker = defense.config, defense.attacker
    assert attacker is not None
    delta = attacker(x, delta0, grad0, threat)
    if cfg.attacker_steps > 1:
        delta = attacker_rollout(attacker, model, x, y, threat, delta0=delta, steps=cfg.attacker_steps - 1)
    return defense.imitate(delta, x, x_adv, cfg.distill, ctx)


def lookahead_step(
    defense: LearnedStart,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv: torch.Tensor,
    delta0: torch.Tensor,
    threat: ThreatModel,
    ctx: TrainContext,
) -> float:
    """MNG-style meta-update: φ ← φ − lr ∇_φ CE(f_θ'(x_adv)), θ' = θ − η ∇_θ CE(f_θ(x + δ_φ))."""
    cfg, attacker, opt = defense.config, defense.attacker, defense.optimizer
    assert attacker is not None and opt is not None
    start = delta0 if cfg.random_start else torch.zeros_like(x)
    delta = attacker_rollout(attacker, model, x, y, threat, delta0=start, steps=cfg.attacker_steps)
    meta = lookahead_loss(model, x + delta, x_adv, y, cfg.lookahead_lr)
    params = list(attacker.parameters())
    grads = torch.autograd.grad(meta, params, allow_unused=True)
    opt.zero_grad(set_to_none=True)
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    ctx.sync_gradients(params)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(meta.detach())
