"""One-step functional look-ahead of the target model (MNG-AC's meta-update, Madaan et al. 2021).

The target's parameters are handled as an explicit dict and the model is evaluated with
``torch.func.functional_call`` — no deepcopy, and the look-ahead parameters

    θ' = θ − η ∇_θ L_inner(θ)

stay differentiable with respect to whatever ``L_inner`` depends on (a generator's φ). The outer
loss ``L_outer(θ')`` then gives φ a second-order meta-gradient ∂L_outer(θ'(φ))/∂φ.

Functional passes go through the module's ``forward`` (so forward hooks, e.g. a cost meter, see
them); buffers are cloned so that batch-norm running statistics are not updated by look-ahead
passes. Under DistributedDataParallel the wrapped module is used (DDP cannot differentiate twice);
the look-ahead only produces a generator's gradient, which the caller averages over ranks.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from metaat.losses import LossFn, ce
from metaat.models.modules import unwrap


def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters the look-ahead differentiates through (those with ``requires_grad``)."""
    return {name: p for name, p in unwrap(model).named_parameters() if p.requires_grad}


def functional_logits(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` evaluated with ``params`` substituted (buffers cloned, the module is untouched)."""
    inner = unwrap(model)
    buffers = {name: b.clone() for name, b in inner.named_buffers()}
    return functional_call(inner, {**buffers, **params}, (x,), strict=False)


def lookahead_parameters(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    *,
    loss_fn: LossFn = ce,
    create_graph: bool = True,
) -> dict[str, torch.Tensor]:
    """``θ' = θ − lr · ∇_θ mean(loss(f_θ(x), y))``; with ``create_graph`` θ' is differentiable in ``x``'s inputs."""
    if lr <= 0:
        raise ValueError(f"look-ahead lr must be > 0, got {lr}")
    params = trainable_parameters(model)
    if not params:
        raise ValueError("the model has no trainable parameters to look ahead with")
    with torch.enable_grad():
        inner = loss_fn(functional_logits(model, params, x), y).mean()
        grads = torch.autograd.grad(inner, list(params.values()), create_graph=create_graph, allow_unused=True)
    return {name: (p if g is None else p - lr * g) for (name, p), g in zip(params.items(), grads, strict=True)}


def lookahead_loss(
    model: nn.Module,
    x_inner: torch.Tensor,
    x_outer: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    *,
    loss_fn: LossFn = ce,
) -> torch.Tensor:
    """``mean loss(f_θ'(x_outer), y)`` with θ' one step of descent on ``(x_inner, y)``.

    Differentiate the result w.r.t. the parameters that produced ``x_inner`` to get the meta-gradient.
    """
    fast = lookahead_parameters(model, x_inner, y, lr, loss_fn=loss_fn, create_graph=True)
    return loss_fn(functional_logits(model, fast, x_outer), y).mean()
