"""Small facts about a model object: the module inside its wrappers, where it lives, its size."""

from __future__ import annotations

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` and ``torch.compile`` wrappers
    (``model`` itself when it is not wrapped).

    Call the wrapper for anything whose gradient must be synchronised; use the inner module to read
    what a model carries (``metaat_spec``, its weights) and for ``torch.func.functional_call``
    look-aheads (its parameter names carry no ``module.`` or ``_orig_mod.`` prefix).

    >>> net = nn.Linear(2, 2)
    >>> unwrap(nn.DataParallel(net)) is net
    True
    """
    for _ in range(8):  # wrappers nest at most a few levels deep (compile of DDP of a model)
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            break
    return model


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters (else buffers) live; CPU for a model with neither."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (only those with ``requires_grad`` if ``trainable_only``).

    >>> count_parameters(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["count_parameters", "model_device", "unwrap"]
