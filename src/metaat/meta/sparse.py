"""A sparse L1 step: the learned attacker's L1 perturbation cut to its ``k`` largest coordinates.

Few-step L1 attacks are weak because the L1 ball's worst case sits on its sparse corners while a
dense step spreads the budget thin (SLIDE, Tramèr & Boneh 2019, "Adversarial Training and Robustness
for Multiple Perturbations", NeurIPS, steps along the top coordinates of the gradient for this
reason; Sparse-PGD, Zhong, Huang & Liu 2024, "Towards Efficient Training and Evaluation of Robust
Models against l0 Bounded Adversarial Perturbations", ICML, keeps a top-k mask). Here the learned
attacker's L1 output is made sparse *directly*:

1. keep the ``k`` coordinates of largest ``|δ_i|`` per example (:func:`keep_top_k`);
2. scale them up to the L1 sphere, ``‖δ‖₁ = eps``, when they hold less (the maximiser of a loss that
   is locally linear lies on the sphere; scaling down is left to the projection);
3. project onto the L1 ball ∩ box (:func:`project_l1_sparse`).

For the L1 ball alone, "keep the k largest magnitudes, then project onto the ball" is the exact
Euclidean projection onto {‖δ‖₀ ≤ k} ∩ {‖δ‖₁ ≤ eps} (Kyrillidis, Becker, Cevher & Koch 2013, "Sparse
projections onto the simplex", ICML); with the box it is a feasible point of that set. The L1 ∩ box
projection soft-thresholds and clips, so it never turns a zero coordinate non-zero: the result has at
most ``k`` non-zeros. Differentiable in ``δ`` on the kept coordinates (the mask is a constant).

Shapes: ``delta`` and ``x`` are ``(B, ...)``; ``k`` counts coordinates of one example.

>>> import torch
>>> from metaat.threats import ThreatModel
>>> x, delta = torch.full((2, 1, 4, 4), 0.5), torch.rand(2, 1, 4, 4)
>>> out = sparse_l1_step(delta, x, ThreatModel.parse("l1:1"), k=3)
>>> [int(n) for n in (out.flatten(1) != 0).sum(1)], [round(float(v), 4) for v in out.flatten(1).abs().sum(1)]
([3, 3], [1.0, 1.0])
"""

from __future__ import annotations

import torch

from metaat.threats import ThreatModel
from metaat.threats.sets import UNIT_BOX, project_l1


def keep_top_k(delta: torch.Tensor, k: int) -> torch.Tensor:
    """``delta`` with all but its ``k`` largest-magnitude coordinates per example set to zero."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    flat = delta.flatten(1)
    if k >= flat.shape[1]:
        return delta
    top = flat.abs().topk(k, dim=1).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, top, True)
    return (flat * mask).reshape(delta.shape)


def project_l1_sparse(
    delta: torch.Tensor, x: torch.Tensor, eps: float, k: int, box: tuple[float, float] = UNIT_BOX
) -> torch.Tensor:
    """A point of {‖δ‖₀ ≤ k} ∩ {‖δ‖₁ ≤ eps} ∩ box: the ``k`` largest ``|δ_i|`` kept, then the exact
    L1 ∩ box projection (the exact projection onto the first two sets when the box does not bind)."""
    return project_l1(keep_top_k(delta, k), x, eps, box)


def sparse_l1_step(delta: torch.Tensor, x: torch.Tensor, threat: ThreatModel, k: int) -> torch.Tensor:
    """The learned L1 step made sparse: top-``k`` coordinates, scaled up to the sphere, projected."""
    if threat.norm != "l1":
        raise ValueError(f"the sparse L1 step is for an l1 threat, got {threat}")
    kept = keep_top_k(delta, k)
    norm = kept.flatten(1).abs().sum(dim=1).clamp_min(1e-12)
    scale = (threat.eps / norm).clamp_min(1.0).reshape((-1,) + (1,) * (delta.dim() - 1))
    return project_l1(kept * scale, x, threat.eps, threat.box)
