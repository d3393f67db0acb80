"""The geometry of threat sets: norms, exact projections, random starts, ascent directions and
membership, the small pure functions every attack is built from.

An Lp threat is a ball of radius ``eps`` around a clean input ``x``, intersected with the input box
(pixels: [0, 1]); a domain kind's geometry is its own (dispatched through ``ThreatModel.kind``).
All functions work on perturbations ``delta`` of any shape ``(B, ...)`` and treat each example
separately.

Projections are *exact* onto ball ∩ box for every norm. For L2 and L1 the exact projection is the
KKT point of the separable problem ``min ||d - z||^2`` s.t. ``||d||_p <= eps``, ``lo <= d <= hi``
(``lo = -x <= 0 <= hi = 1 - x``):

* L2: ``d(λ) = clip(z / (1 + λ), lo, hi)``;
* L1: ``d(λ) = clip(soft_threshold(z, λ), lo, hi)`` (Croce & Hein 2021, "Mind the box: l1-APGD");

both norms decrease monotonically in ``λ >= 0``, so ``λ`` is found by bisection and the upper end of
the bracket (always feasible) is returned: the result never leaves the ball, and it is within
``eps * 2**-iters`` (relative) of the exact optimum.
"""

from __future__ import annotations

import math

import torch

from metaat.threats.model import _KINDS, NORMS, UNIT_BOX, ThreatKind, ThreatModel, threat_kinds

_BISECTION_STEPS = 40


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _per_example(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a ``(B,)`` vector so that it broadcasts against ``like`` ``(B, ...)``."""
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example Lp norm of ``delta``, shape ``(B,)``."""
    flat = _flat(delta)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    if norm == "l1":
        return flat.abs().sum(dim=1)
    raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")


def _bisect(norm_of: object, z: torch.Tensor, eps: torch.Tensor, hi0: torch.Tensor) -> torch.Tensor:
    """Smallest λ in [0, hi0] (per example) with norm_of(λ) <= eps, returned from the feasible side."""
    lo = torch.zeros_like(hi0)
    hi = hi0.clone()
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        feasible = norm_of(mid) <= eps  # type: ignore[operator]
        hi = torch.where(feasible, mid, hi)
        lo = torch.where(feasible, lo, mid)
    return hi


def box_bounds(x: torch.Tensor, box: tuple[float, float] = UNIT_BOX) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo, hi)`` with ``lo <= δ <= hi`` exactly when ``box[0] <= x + δ <= box[1]``."""
    low, high = box
    lo = -x if low == 0.0 else low - x
    return lo, high - x


def project_linf(delta: torch.Tensor, x: torch.Tensor, eps: float, box: tuple[float, float] = UNIT_BOX) -> torch.Tensor:
    """Exact projection of ``delta`` onto {||δ||∞ <= eps} ∩ {box[0] <= x + δ <= box[1]}."""
    lo, hi = box_bounds(x, box)
    return torch.max(torch.min(delta.clamp(-eps, eps), hi), lo)


def project_l2(delta: torch.Tensor, x: torch.Tensor, eps: float, box: tuple[float, float] = UNIT_BOX) -> torch.Tensor:
    """Exact projection of ``delta`` onto {||δ||₂ <= eps} ∩ {box[0] <= x + δ <= box[1]} (bisection on λ)."""
    lo_b, hi_b = box_bounds(x, box)
    z = _flat(delta)
    lo_f, hi_f = _flat(lo_b), _flat(hi_b)
    box_only = torch.max(torch.min(z, hi_f), lo_f)
    n0 = box_only.norm(dim=1)
    if bool((n0 <= eps).all()):
        return box_only.reshape(delta.shape)
    eps_t = torch.full_like(n0, eps)

    def norm_of(lam: torch.Tensor) -> torch.Tensor:
        return torch.max(torch.min(z / (1 + lam[:, None]), hi_f), lo_f).norm(dim=1)

    # λ = ||z|| / eps - 1 already puts z/(1+λ) on the sphere, and clipping only shrinks it.
    lam_hi = (z.norm(dim=1) / eps - 1).clamp_min(0)
    lam = _bisect(norm_of, z, eps_t, lam_hi)
    lam = torch.where(n0 <= eps, torch.zeros_like(lam), lam)
    out = torch.max(torch.min(z / (1 + lam[:, None]), hi_f), lo_f)
    return out.reshape(delta.shape)


def project_l1(delta: torch.Tensor, x: torch.Tensor, eps: float, box: tuple[float, float] = UNIT_BOX) -> torch.Tensor:
    """Exact projection of ``delta`` onto {||δ||₁ <= eps} ∩ {box[0] <= x + δ <= box[1]} (bisection on λ)."""
    z = _flat(delta)
    lo_b, hi_b = box_bounds(x, box)
    lo_f, hi_f = _flat(lo_b), _flat(hi_b)
    box_only = torch.max(torch.min(z, hi_f), lo_f)
    n0 = box_only.abs().sum(dim=1)
    if bool((n0 <= eps).all()):
        return box_only.reshape(delta.shape)
    eps_t = torch.full_like(n0, eps)
    absz, sign = z.abs(), z.sign()

    def soft(lam: torch.Tensor) -> torch.Tensor:
        return torch.max(torch.min(sign * (absz - lam[:, None]).clamp_min(0), hi_f), lo_f)

    def norm_of(lam: torch.Tensor) -> torch.Tensor:
        return soft(lam).abs().sum(dim=1)

    lam = _bisect(norm_of, z, eps_t, absz.amax(dim=1))
    lam = torch.where(n0 <= eps, torch.zeros_like(lam), lam)
    return soft(lam).reshape(delta.shape)


def project(delta: torch.Tensor, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Project ``delta`` onto ``threat``'s set intersected with the box around ``x``."""
    if threat.norm == "linf":
        return project_linf(delta, x, threat.eps, threat.box)
    if threat.norm == "l2":
        return project_l2(delta, x, threat.eps, threat.box)
    if threat.norm == "l1":
        return project_l1(delta, x, threat.eps, threat.box)
    return _kind(threat).project(delta, x, threat)


def _kind(threat: ThreatModel) -> ThreatKind:
    kind = threat.kind
    if kind is None:  # unreachable for a validated ThreatModel; kept for a clear message
        raise ValueError(f"unknown threat kind {threat.norm!r}; valid: {', '.join(threat_kinds())}")
    return kind


def random_init(x: torch.Tensor, threat: ThreatModel, generator: torch.Generator | None = None) -> torch.Tensor:
    """A perturbation drawn uniformly from the ball, then projected into the box around ``x``.

    Noise is drawn on the generator's device (CPU by default) for the whole batch at once, so the
    same generator state gives the same noise however the batch is later chunked.
    """
    if not threat.is_lp:
        return _kind(threat).random_init(x, threat, generator)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    shape = x.shape
    b, d = shape[0], x[0].numel()
    eps = threat.eps
    if threat.norm == "linf":
        delta = (torch.rand(shape, generator=generator, device=gen_device) * 2 - 1) * eps
    elif threat.norm == "l2":
        g = torch.randn(b, d, generator=generator, device=gen_device)
        r = torch.rand(b, 1, generator=generator, device=gen_device) ** (1.0 / d)
        delta = (g / g.norm(dim=1, keepdim=True).clamp_min(1e-12) * r * eps).reshape(shape)
    else:
        # Uniform in the L1 ball: signed exponentials normalised by a sum with one extra exponential.
        e = torch.empty(b, d + 1, device=gen_device).exponential_(generator=generator)
        s = torch.randint(0, 2, (b, d), generator=generator, device=gen_device) * 2 - 1
        delta = (s * e[:, :d] / e.sum(dim=1, keepdim=True) * eps).reshape(shape)
    return project(delta.to(device=x.device, dtype=x.dtype), x, threat)


def steepest_ascent(
    grad: torch.Tensor,
    norm: str,
    *,
    x_adv: torch.Tensor | None = None,
    l1_sparsity: float = 0.99,
    box: tuple[float, float] = UNIT_BOX,
) -> torch.Tensor:
    """Unit-norm steepest-ascent direction for ``grad`` under ``norm``.

    * linf: ``sign(grad)``;
    * l2: ``grad / ||grad||₂``;
    * l1: ``sign(grad)`` on the top ``(1 - l1_sparsity)`` fraction of coordinates by ``|grad|``,
      scaled to unit L1 norm (SLIDE, Tramèr & Boneh 2019). When ``x_adv`` is given, coordinates that
      already sit on the box and whose gradient points out of it are skipped (Croce & Hein 2021),
      so the L1 budget is not wasted on pixels that cannot move (``box`` is the input's valid range).
    """
    if norm == "linf":
        return grad.sign()
    if norm not in NORMS and norm in _KINDS:
        raise ValueError(f"{norm!r} is not an Lp norm: use threat_ascent(grad, threat) for a domain threat")
    flat = _flat(grad)
    if norm == "l2":
        return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).reshape(grad.shape)
    if norm != "l1":
        raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")
    if not 0.0 <= l1_sparsity < 1.0:
        raise ValueError(f"l1_sparsity must lie in [0, 1), got {l1_sparsity}")
    if x_adv is not None:
        xa = _flat(x_adv)
        low, high = box
        stuck = ((xa >= high) & (flat > 0)) | ((xa <= low) & (flat < 0))
        # Zero the stuck gradient itself (not only its rank): when fewer than k coordinates are free,
        # top-k also picks stuck ones, which must then get no share of the unit budget.
        flat = flat.masked_fill(stuck, 0)
    d = flat.shape[1]
    k = max(1, int(math.ceil((1 - l1_sparsity) * d)))
    top = flat.abs().topk(k, dim=1).indices
    direction = torch.zeros_like(flat)
    direction.scatter_(1, top, flat.gather(1, top).sign())
    count = direction.abs().sum(dim=1, keepdim=True).clamp_min(1)
    return (direction / count).reshape(grad.shape)


def in_threat(x_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel, tol: float = 1e-6) -> torch.Tensor:
    """Per-example boolean: ``x_adv`` lies in ``threat``'s set around ``x`` and in its box."""
    if not threat.is_lp:
        return _kind(threat).contains(x_adv, x, threat, tol)
    delta = x_adv - x
    in_ball = lp_norm(delta, threat.norm) <= threat.eps * (1 + tol) + tol
    flat = _flat(x_adv)
    low, high = threat.box
    in_box = (flat >= low - tol).all(dim=1) & (flat <= high + tol).all(dim=1)
    return in_ball & in_box


def threat_ascent(
    grad: torch.Tensor, threat: ThreatModel, *, x_adv: torch.Tensor | None = None, l1_sparsity: float = 0.99
) -> torch.Tensor:
    """The direction one PGD step moves along under ``threat``: :func:`steepest_ascent` for an Lp
    ball (box-aware for L1), the registered kind's own direction otherwise."""
    if threat.is_lp:
        return steepest_ascent(grad, threat.norm, x_adv=x_adv, l1_sparsity=l1_sparsity, box=threat.box)
    return _kind(threat).ascent(grad, threat, x_adv)


def default_step_size(threat: ThreatModel, steps: int) -> float:
    """The customary PGD step: 2.5 · eps / steps (Madry et al. 2018), at most eps."""
    if not threat.is_lp:
        return _kind(threat).step_size(threat, steps)
    return min(threat.eps, 2.5 * threat.eps / max(1, steps))
