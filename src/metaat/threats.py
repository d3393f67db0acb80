"""Threat models and the small pure functions every attack is built from.

A threat model is an Lp ball of radius ``eps`` around a clean input ``x``, intersected with the
pixel box [0, 1]. All functions here work on perturbations ``delta`` of shape ``(B, C, H, W)`` (any
shape with a batch dimension first) and treat each example separately.

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
from dataclasses import dataclass
from typing import Literal

import torch

Norm = Literal["linf", "l2", "l1"]
NORMS: tuple[str, ...] = ("linf", "l2", "l1")
_ALIASES = {"linf": "linf", "inf": "linf", "l_inf": "linf", "l2": "l2", "l1": "l1"}
_BISECTION_STEPS = 40


@dataclass(frozen=True, order=True)
class ThreatModel:
    """An Lp ball ``{δ : ||δ||_p <= eps}`` intersected with the [0, 1] pixel box.

    >>> ThreatModel.parse("linf:0.1")
    ThreatModel(norm='linf', eps=0.1)
    >>> str(ThreatModel("l2", 1.5))
    'l2:1.5'
    """

    norm: str
    eps: float

    def __post_init__(self) -> None:
        norm = _ALIASES.get(str(self.norm).strip().lower())
        if norm is None:
            raise ValueError(f"unknown norm {self.norm!r}; valid norms: {', '.join(NORMS)}")
        object.__setattr__(self, "norm", norm)
        eps = float(self.eps)
        if not math.isfinite(eps) or eps <= 0:
            raise ValueError(f"eps must be a finite number > 0, got {self.eps!r}")
        object.__setattr__(self, "eps", eps)

    @classmethod
    def parse(cls, text: str | ThreatModel) -> ThreatModel:
        """Parse ``"linf:0.1"``, ``"l2:1.5"``, ``"l1:10"`` (a ThreatModel passes through)."""
        if isinstance(text, ThreatModel):
            return text
        if not isinstance(text, str) or text.count(":") != 1:
            raise ValueError(f"threat must look like 'linf:0.1', 'l2:1.5' or 'l1:10', got {text!r}")
        norm, eps = text.split(":")
        try:
            value = float(eps)
        except ValueError as err:
            raise ValueError(f"threat {text!r}: eps {eps!r} is not a number") from err
        return cls(norm, value)

    def __str__(self) -> str:
        short = f"{self.eps:g}"  # '0.1', '1.5', '10'; repr() where %g would round (exact round trip)
        return f"{self.norm}:{short if float(short) == self.eps else repr(self.eps)}"

    @property
    def autoattack_norm(self) -> str:
        """The spelling the reference AutoAttack package uses."""
        return {"linf": "Linf", "l2": "L2", "l1": "L1"}[self.norm]


def parse_threats(
    items: str | ThreatModel | list[str | ThreatModel] | tuple[str | ThreatModel, ...],
) -> tuple[ThreatModel, ...]:
    """Parse one threat or a sequence of them; duplicates are an error."""
    seq = [items] if isinstance(items, str | ThreatModel) else list(items)
    if not seq:
        raise ValueError("at least one threat model is required")
    threats = tuple(ThreatModel.parse(t) for t in seq)
    if len(set(threats)) != len(threats):
        raise ValueError(f"duplicate threat models in {[str(t) for t in threats]}")
    return threats


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


def project_linf(delta: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact projection of ``delta`` onto {||δ||∞ <= eps} ∩ {0 <= x + δ <= 1}."""
    return torch.max(torch.min(delta.clamp(-eps, eps), 1 - x), -x)


def project_l2(delta: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact projection of ``delta`` onto {||δ||₂ <= eps} ∩ {0 <= x + δ <= 1} (bisection on λ)."""
    lo_b, hi_b = -x, 1 - x
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


def project_l1(delta: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact projection of ``delta`` onto {||δ||₁ <= eps} ∩ {0 <= x + δ <= 1} (bisection on λ)."""
    z = _flat(delta)
    lo_f, hi_f = _flat(-x), _flat(1 - x)
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
    """Project ``delta`` onto ``threat``'s ball intersected with the box around ``x``."""
    if threat.norm == "linf":
        return project_linf(delta, x, threat.eps)
    if threat.norm == "l2":
        return project_l2(delta, x, threat.eps)
    return project_l1(delta, x, threat.eps)


def random_init(x: torch.Tensor, threat: ThreatModel, generator: torch.Generator | None = None) -> torch.Tensor:
    """A perturbation drawn uniformly from the ball, then projected into the box around ``x``.

    Noise is drawn on the generator's device (CPU by default) for the whole batch at once, so the
    same generator state gives the same noise however the batch is later chunked.
    """
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
) -> torch.Tensor:
    """Unit-norm steepest-ascent direction for ``grad`` under ``norm``.

    * linf: ``sign(grad)``;
    * l2: ``grad / ||grad||₂``;
    * l1: ``sign(grad)`` on the top ``(1 - l1_sparsity)`` fraction of coordinates by ``|grad|``,
      scaled to unit L1 norm (SLIDE, Tramèr & Boneh 2019). When ``x_adv`` is given, coordinates that
      already sit on the box and whose gradient points out of it are skipped (Croce & Hein 2021),
      so the L1 budget is not wasted on pixels that cannot move.
    """
    if norm == "linf":
        return grad.sign()
    flat = _flat(grad)
    if norm == "l2":
        return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).reshape(grad.shape)
    if norm != "l1":
        raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")
    if not 0.0 <= l1_sparsity < 1.0:
        raise ValueError(f"l1_sparsity must lie in [0, 1), got {l1_sparsity}")
    if x_adv is not None:
        xa = _flat(x_adv)
        stuck = ((xa >= 1) & (flat > 0)) | ((xa <= 0) & (flat < 0))
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
    """Per-example boolean: ``x_adv`` lies in ``threat``'s ball around ``x`` and in [0, 1]."""
    delta = x_adv - x
    in_ball = lp_norm(delta, threat.norm) <= threat.eps * (1 + tol) + tol
    flat = _flat(x_adv)
    in_box = (flat >= -tol).all(dim=1) & (flat <= 1 + tol).all(dim=1)
    return in_ball & in_box


def default_step_size(threat: ThreatModel, steps: int) -> float:
    """The customary PGD step: 2.5 · eps / steps (Madry et al. 2018), at most eps."""
    return min(threat.eps, 2.5 * threat.eps / max(1, steps))
