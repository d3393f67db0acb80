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

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch

from metaat.registry import load_domains

Norm = Literal["linf", "l2", "l1"]
NORMS: tuple[str, ...] = ("linf", "l2", "l1")
_ALIASES = {"linf": "linf", "inf": "linf", "l_inf": "linf", "l2": "l2", "l1": "l1"}
_BISECTION_STEPS = 40
UNIT_BOX: tuple[float, float] = (0.0, 1.0)


class ThreatKind(ABC):
    """The behaviour of one family of perturbation sets (``spike``, ``drift``, ``syn``, ...).

    The Lp balls are built in; a domain registers its own families with :func:`register_threat_kind`
    and then ``ThreatModel.parse("spike:5,2")`` works everywhere a threat is accepted. A kind turns the
    text after the colon into ``(eps, params)`` and implements the set's geometry on perturbations
    ``delta`` of shape ``(B, ...)`` around clean inputs ``x`` whose values must stay in ``threat.box``.
    A discrete kind (word substitutions) sets ``continuous = False`` and leaves the geometry to its
    domain's attacks.
    """

    name: str = ""
    syntax: str = ""
    continuous: bool = True
    like: str = "linf"
    """The Lp norm whose step shape and conditioning a learned attacker uses for this set (its
    output is then projected exactly onto the set); ``eps`` plays that norm's budget."""
    evaluation_attacks: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()
    """The registered attacks (name, options) whose per-point worst case, after metaat's PGD with
    CE and margin losses, is this set's robust accuracy in the ``apgd`` and ``standard`` suites (the
    reference AutoAttack covers Lp balls only)."""

    @abstractmethod
    def parse_args(self, args: str) -> tuple[float, tuple[float, ...]]:
        """``"5,2"`` -> ``(eps, params)``; raise ``ValueError`` naming the syntax on bad input."""

    def format_args(self, threat: ThreatModel) -> str:
        """Inverse of :meth:`parse_args` (exact round trip)."""
        return ",".join(_fmt(v) for v in (*threat.params, threat.eps))

    def project(self, delta: torch.Tensor, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        """Exact Euclidean projection of ``delta`` onto the set intersected with the box around ``x``."""
        raise NotImplementedError(f"threat {threat} has no projection (a discrete set)")

    def random_init(self, x: torch.Tensor, threat: ThreatModel, generator: torch.Generator | None) -> torch.Tensor:
        """A random perturbation inside the set (PGD's random start)."""
        raise NotImplementedError(f"threat {threat} has no random start (a discrete set)")

    def ascent(self, grad: torch.Tensor, threat: ThreatModel, x_adv: torch.Tensor | None) -> torch.Tensor:
        """The direction one PGD step moves along (before projection)."""
        raise NotImplementedError(f"threat {threat} has no ascent direction (a discrete set)")

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel, tol: float) -> torch.Tensor:
        """Per-example boolean ``(B,)``: ``x_adv`` lies in the set around ``x`` and in the box."""
        raise NotImplementedError(f"threat {threat} has no membership test")

    def step_size(self, threat: ThreatModel, steps: int) -> float:
        """PGD's default step size along :meth:`ascent` for ``steps`` steps."""
        return min(threat.eps, 2.5 * threat.eps / max(1, steps))


_KINDS: dict[str, ThreatKind] = {}


def register_threat_kind(kind: ThreatKind) -> ThreatKind:
    """Make ``kind.name`` parseable (``"<name>:<args>"``) wherever a threat is accepted."""
    if not kind.name or kind.name in _KINDS or kind.name in _ALIASES:
        raise ValueError(f"threat kind {kind.name!r} is empty or already registered")
    _KINDS[kind.name] = kind
    return kind


def threat_kinds() -> list[str]:
    """Every threat family that parses: the Lp norms, then the domains' kinds."""
    load_domains()
    return [*NORMS, *sorted(_KINDS)]


def _fmt(value: float) -> str:
    short = f"{value:g}"  # '0.1', '1.5', '10'; repr() where %g would round (exact round trip)
    return short if float(short) == value else repr(value)


def _box(value: object) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as err:
        raise ValueError(f"box must be a (low, high) pair of numbers; got {value!r}") from err
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"box must satisfy low < high, both finite; got {value!r}")
    return (lo, hi)


@dataclass(frozen=True, order=True)
class ThreatModel:
    """A set of allowed perturbations: an Lp ball ``{δ : ||δ||_p <= eps}`` (``norm`` = linf, l2, l1)
    or a registered domain kind (``norm`` = spike, drift, ...; extra numbers in ``params``), always
    intersected with the input box ``box`` (``[0, 1]`` pixels by default; a domain sets its own
    valid range with :meth:`with_box`).

    >>> ThreatModel.parse("linf:0.1")
    ThreatModel(norm='linf', eps=0.1)
    >>> str(ThreatModel("l2", 1.5))
    'l2:1.5'
    """

    norm: str
    eps: float
    params: tuple[float, ...] = ()
    box: tuple[float, float] = UNIT_BOX

    def __post_init__(self) -> None:
        key = str(self.norm).strip().lower()
        norm = _ALIASES.get(key)
        if norm is None:
            if key not in _KINDS:
                load_domains()
            if key not in _KINDS:
                raise ValueError(f"unknown norm {self.norm!r}; valid norms: {', '.join(threat_kinds())}")
            norm = key
        object.__setattr__(self, "norm", norm)
        eps = float(self.eps)
        if not math.isfinite(eps) or eps <= 0:
            raise ValueError(f"eps must be a finite number > 0, got {self.eps!r}")
        object.__setattr__(self, "eps", eps)
        params = tuple(float(p) for p in self.params)
        if norm in NORMS and params:
            raise ValueError(f"an {norm} ball takes no parameters besides eps; got {params}")
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "box", _box(self.box))

    def __repr__(self) -> str:
        extra = f", params={self.params!r}" if self.params else ""
        extra += f", box={self.box!r}" if self.box != UNIT_BOX else ""
        return f"ThreatModel(norm={self.norm!r}, eps={self.eps!r}{extra})"

    @classmethod
    def parse(cls, text: str | ThreatModel) -> ThreatModel:
        """Parse ``"linf:0.1"``, ``"l2:1.5"``, ``"l1:10"`` or a domain kind such as ``"spike:5,2"``
        (a ThreatModel passes through)."""
        if isinstance(text, ThreatModel):
            return text
        if not isinstance(text, str) or text.count(":") != 1:
            raise ValueError(f"threat must look like 'linf:0.1', 'l2:1.5' or 'l1:10', got {text!r}")
        norm, eps = (part.strip() for part in text.split(":"))
        kind = norm.lower()
        if kind not in _ALIASES and kind not in _KINDS:
            load_domains()
        if kind in _KINDS:
            value, params = _KINDS[kind].parse_args(eps)
            return cls(kind, value, params)
        try:
            number = float(eps)
        except ValueError as err:
            raise ValueError(f"threat {text!r}: eps {eps!r} is not a number") from err
        return cls(norm, number)

    def __str__(self) -> str:
        if self.norm in _KINDS:
            return f"{self.norm}:{_KINDS[self.norm].format_args(self)}"
        return f"{self.norm}:{_fmt(self.eps)}"

    @property
    def is_lp(self) -> bool:
        """True for the linf / l2 / l1 balls."""
        return self.norm in NORMS

    @property
    def kind(self) -> ThreatKind | None:
        """The registered kind of a domain threat (None for an Lp ball)."""
        return _KINDS.get(self.norm)

    @property
    def lp_like(self) -> str:
        """This norm for an Lp ball; for a domain kind, the Lp norm it resembles (``ThreatKind.like``)."""
        kind = self.kind
        return self.norm if kind is None else kind.like

    @property
    def continuous(self) -> bool:
        """True when the set has a projection (gradient attacks apply); False for discrete edits."""
        kind = self.kind
        return kind is None or kind.continuous

    def with_box(self, low: float, high: float) -> ThreatModel:
        """The same set inside the input box ``[low, high]`` (a domain's valid range)."""
        return dataclasses.replace(self, box=(low, high))

    @property
    def autoattack_norm(self) -> str:
        """The spelling the reference AutoAttack package uses."""
        if not self.is_lp:
            raise ValueError(f"the reference AutoAttack covers Lp balls only, not {self}")
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


DEFAULT_THREATS: dict[str, float] = {"linf": 0.1, "l2": 1.5, "l1": 10.0}
"""Benchmark radii for Fashion-MNIST, in [0, 1] pixel space — the one place they are set. A threat
given without a radius (``linf``, ``l2``, ``l1``) takes its radius from here."""


def resolve_threat(text: str | ThreatModel) -> str:
    """``"linf:0.1"`` stays, a bare norm (``"l2"``) gets its radius from :data:`DEFAULT_THREATS`.

    >>> resolve_threat("l2"), resolve_threat("linf:0.03")
    ('l2:1.5', 'linf:0.03')
    """
    if isinstance(text, ThreatModel):
        return str(text)
    name = str(text).strip().lower()
    if ":" not in name:
        norm = _ALIASES.get(name, name)
        if norm not in DEFAULT_THREATS:
            raise ValueError(
                f"threat {text!r}: give 'norm:eps' (e.g. linf:0.1) or a bare norm, one of {', '.join(DEFAULT_THREATS)}"
            )
        return f"{norm}:{DEFAULT_THREATS[norm]:g}"
    return str(ThreatModel.parse(name))


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
