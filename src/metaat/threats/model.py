"""Threat models: what a perturbation set is, how it is named on the command line, and the
registry of domain threat kinds (spike, drift, syn, typo, ...).

>>> ThreatModel.parse("linf:0.1")
ThreatModel(norm='linf', eps=0.1)
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from metaat.registry import load_domains

if TYPE_CHECKING:
    import torch
    from torch import nn

Norm = Literal["linf", "l2", "l1"]
NORMS: tuple[str, ...] = ("linf", "l2", "l1")
_ALIASES = {"linf": "linf", "inf": "linf", "l_inf": "linf", "l2": "l2", "l1": "l1"}
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
        return ",".join(format_number(v) for v in (*threat.params, threat.eps))

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

    def train_attack(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        generator: torch.Generator,
        steps: int,
    ) -> torch.Tensor:
        """A discrete set's cheap training-time attack (the role PGD-``steps`` plays for a continuous
        one): a point of the set around ``x`` found with at most ``steps`` forward+backward passes,
        run by the multi-threat defenses in eval mode without parameter gradients."""
        raise NotImplementedError(f"threat {threat} has no training attack (its kind defines none)")

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


def format_number(value: float) -> str:
    """A number as short as it can be written and still parse back to the same float."""
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
        return f"{self.norm}:{format_number(self.eps)}"

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
