"""Running a learned attacker against a target model, and training it by gradient ascent for free.

:func:`attacker_rollout` applies a :class:`~metaat.meta.generators.LearnedAttacker` ``steps``
times, recomputing the target's input gradient before each step (one forward+backward each, with
the target in eval mode and its parameter gradients off, as for every metaat attack). The returned
perturbation stays differentiable in the attacker's parameters φ (the gradient *inputs* are
treated as data — first order in the target, as in L2L).

:func:`route_ascent` lets the attacker learn from the *training* backward pass instead of paying
for its own: the classifier is trained on ``x + d`` with ``d`` a detached copy of ``δ_φ``; a hook
on ``d`` receives ``∂L/∂δ`` when the training loop back-propagates the loss, pushes ``-∂L/∂δ``
through the generator graph (gradient *ascent* for φ) and steps the attacker's optimizer. The
min-max of L2L thus costs one target pass for both players.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from metaat.attacks.base import attack_mode
from metaat.losses import LossFn, ce
from metaat.meta.generators import LearnedAttacker
from metaat.threats import ThreatModel


def input_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, loss_fn: LossFn = ce
) -> torch.Tensor:
    """``∇_δ Σ loss(model(x + δ), y)`` at ``delta`` (one forward+backward; no parameter gradients)."""
    d = delta.detach().requires_grad_(True)
    with torch.enable_grad(), attack_mode(model):
        (grad,) = torch.autograd.grad(loss_fn(model(x + d), y).sum(), d)
    return grad


def attacker_rollout(
    attacker: LearnedAttacker,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    delta0: torch.Tensor,
    steps: int = 1,
    loss_fn: LossFn = ce,
) -> torch.Tensor:
    """Apply the attacker ``steps`` times from ``delta0``; return ``δ`` (in the threat set, graph to φ)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    delta = delta0
    for _ in range(steps):
        grad = input_gradient(model, x, y, delta, loss_fn)
        delta = attacker(x, delta, grad, threat)
    return delta


def route_ascent(
    delta: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    sync: Callable[[Iterable[nn.Parameter]], None] | None = None,
    sign: float = -1.0,
) -> torch.Tensor:
    """A detached copy of ``delta`` whose gradient, once the loss is back-propagated, updates φ.

    When the backward pass reaches the copy, ``sign · ∂L/∂δ`` is back-propagated through
    ``delta``'s graph and ``optimizer`` steps (``sign = -1``: the attacker ascends the loss the
    classifier descends). Non-finite gradients (e.g. an AMP overflow) skip the step. ``sync``
    (``TrainContext.sync_gradients`` under DDP) averages the attacker's gradients over processes
    before the step, so replicas stay identical.
    """
    if not delta.requires_grad:
        return delta
    copy = delta.detach().requires_grad_(True)
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def hook(grad: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        if bool(torch.isfinite(grad).all()):
            torch.autograd.backward(delta, grad_tensors=sign * grad)
            if sync is not None:
                sync(params)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return grad

    copy.register_hook(hook)
    return copy
