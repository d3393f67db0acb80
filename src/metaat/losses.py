"""Per-example losses for attacks and training objectives.

Every function returns a ``(B,)`` tensor (no reduction) so that attacks can keep the per-example
best restart and defenses can weight examples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from metaat.registry import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: Registry[torch.Tensor] = Registry("loss")


@LOSSES.register("ce")
def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per example."""
    return F.cross_entropy(logits, y, reduction="none")


def _other_max(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    masked = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return masked.amax(dim=1)


@LOSSES.register("margin")
def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini–Wagner margin: max_{j≠y} z_j − z_y (positive once misclassified)."""
    return _other_max(logits, y) - logits.gather(1, y[:, None]).squeeze(1)


@LOSSES.register("dlr")
def dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein 2020): margin scaled by z_π1 − z_π3; shift/scale invariant."""
    if logits.shape[1] < 3:
        raise ValueError("the DLR loss needs at least 3 classes")
    top = logits.sort(dim=1, descending=True).values
    scale = (top[:, 0] - top[:, 2]).clamp_min(1e-12)
    return margin(logits, y) / scale


def trades_kl(logits_adv: torch.Tensor, logits_clean: torch.Tensor) -> torch.Tensor:
    """KL(p_clean || p_adv) per example, the TRADES regulariser (Zhang et al. 2019)."""
    return F.kl_div(
        F.log_softmax(logits_adv, dim=1), F.log_softmax(logits_clean, dim=1), reduction="none", log_target=True
    ).sum(dim=1)


def consistency_js(*logits: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence among several predictions per example (MNG-AC's consistency term).

    JS(p_1..p_k) = mean_i KL(p_i || m) with m the mean distribution.
    """
    if len(logits) < 2:
        raise ValueError("consistency needs at least two predictions")
    probs = [F.softmax(z, dim=1) for z in logits]
    log_m = torch.stack(probs).mean(dim=0).clamp_min(1e-12).log()
    kls = [F.kl_div(log_m, p, reduction="none").sum(dim=1) for p in probs]
    return torch.stack(kls).mean(dim=0)


def get_loss(name: str) -> LossFn:
    """An attack loss by name (``ce``, ``margin``, ``dlr``)."""
    return LOSSES.get(name)  # type: ignore[return-value]
