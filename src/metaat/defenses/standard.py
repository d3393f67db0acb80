"""Standard (empirical risk minimisation) training: mean cross-entropy on clean inputs.

The non-robust baseline every defense is compared against. Threat: none — the threats given to it
are only used by the loop's per-epoch evaluation, so any number of them is accepted.
Cost: 1 forward + 1 backward pass per example (``passes_per_example`` = 1).

>>> import torch
>>> from metaat.defenses import TrainContext, create
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
>>> ctx = TrainContext(threats=(), generator=torch.Generator())
>>> loss, metrics = create("standard", "linf:0.1")(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 2]), ctx)
>>> loss.dim(), sorted(metrics)
(0, ['acc', 'loss'])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metaat.defenses.base import DEFENSES, Defense, TrainContext, accuracy


@DEFENSES.register("standard", help="clean cross-entropy, no attack (1 pass per example)")
class Standard(Defense):
    """Clean cross-entropy (no adversary)."""

    name = "standard"
    multi_threat = True  # it ignores them
    discrete = True

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": float(loss.detach()), "acc": accuracy(logits, y)}
