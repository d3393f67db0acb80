"""Attack suites: what "robust under a threat" means for one evaluation.

A suite attacks a chunk of points under one threat and returns their adversarial inputs; a point
is robust when the model still classifies its adversarial input correctly (the evaluation
recomputes that prediction itself and checks that the input lies in the threat set).

* ``quick``  — metaat's own PGD (CE then margin loss, 25 steps each, random start), a worst-case
  ensemble for monitoring. Every point's random start comes from a generator seeded by
  ``(seed, threat, run, point index)``, so a point's result does not depend on which other points
  share its chunk: union-only mode and resumed runs give exactly the same flags.
* ``apgd``   — the reference package's APGD-CE + APGD-T (``pyautoattack``, version ``custom``
  with the ``standard`` settings): the protocol for every benchmark row.
* ``standard`` — the reference AutoAttack, version ``standard`` (APGD-CE, APGD-T, FAB-T, Square):
  the headline number.

The reference package re-seeds torch's global generator; it runs inside ``torch.random.fork_rng``
so the caller's random state is untouched, and its runtime warnings are collected (they become a
gradient-masking check in the report).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from metaat.attacks.autoattack import (
    AutoAttackConfig,
    build_reference,
    from_reference,
    reference_logging,
    reference_version,
    to_reference,
)
from metaat.attacks.base import predictions
from metaat.attacks.pgd import pgd_steps
from metaat.losses import get_loss
from metaat.registry import Registry
from metaat.runtime import derive_seed, make_generator
from metaat.threats import ThreatModel, default_step_size, random_init

REFERENCE_PACKAGE = "pyautoattack"


def per_point_starts(x: torch.Tensor, ids: torch.Tensor, threat: ThreatModel, seed: int, tag: str) -> torch.Tensor:
    """Random starts for ``x`` (B, ...), point ``i`` drawn from its own generator keyed by ``ids[i]``."""
    parts = [
        random_init(x[i : i + 1], threat, make_generator(derive_seed(seed, threat, tag, int(ids[i]))))
        for i in range(x.shape[0])
    ]
    return torch.cat(parts) if parts else torch.zeros_like(x)


class Suite(ABC):
    """An attack suite; ``attack`` returns ``x_adv`` for a chunk (model already in attack mode)."""

    name: ClassVar[str]
    per_point_deterministic: ClassVar[bool] = False

    @abstractmethod
    def attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, threat: ThreatModel, seed: int
    ) -> torch.Tensor:
        """Adversarial inputs for points ``ids`` (their global indices) under ``threat``."""

    @abstractmethod
    def describe(self, threat: ThreatModel) -> list[str]:
        """The attacks run for ``threat``, one human-readable line each."""

    def warnings(self) -> list[str]:
        """Runtime warnings the suite's attacks raised (the reference package's own checks)."""
        return []

    def protocol(self, threats: tuple[ThreatModel, ...]) -> dict[str, Any]:
        return {
            "suite": self.name,
            "attacks": {str(t): self.describe(t) for t in threats},
            "per_point_deterministic": self.per_point_deterministic,
        }


SUITES: Registry[Suite] = Registry("suite")


@dataclasses.dataclass(frozen=True)
class QuickSuite(Suite):
    """metaat's PGD, CE then margin loss, each from its own per-point random start."""

    name: ClassVar[str] = "quick"
    per_point_deterministic: ClassVar[bool] = True
    steps: int = 25
    restarts: int = 1
    losses: tuple[str, ...] = ("ce", "margin")
    random_start: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.restarts < 1:
            raise ValueError("quick suite: steps and restarts must be >= 1")
        for loss in self.losses:
            get_loss(loss)

    def describe(self, threat: ThreatModel) -> list[str]:
        if not threat.continuous:
            return describe_domain(threat)
        start = "random start" if self.random_start else "zero start"
        return [
            f"metaat pgd-{loss} ({self.steps} steps, step {default_step_size(threat, self.steps):.4g}, "
            f"{self.restarts} restart(s), {start})"
            for loss in self.losses
        ]

    def attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, threat: ThreatModel, seed: int
    ) -> torch.Tensor:
        if not threat.continuous:  # discrete edits: only the domain's own search attacks apply
            return domain_worst_case(model, x, y, ids, threat, seed)
        x_adv = x.clone()
        robust = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        step = default_step_size(threat, self.steps)
        for loss in self.losses:
            for r in range(self.restarts):
                idx = robust.nonzero().squeeze(1)
                if idx.numel() == 0:
                    return x_adv
                tag = f"{loss}-{r}"
                xs, ys = x[idx], y[idx]
                delta0 = per_point_starts(xs, ids[idx.cpu()], threat, seed, tag) if self.random_start else None
                cand = pgd_steps(
                    model,
                    xs,
                    ys,
                    delta0 if delta0 is not None else torch.zeros_like(xs),
                    threat=threat,
                    steps=self.steps,
                    step_size=step,
                    loss_fn=get_loss(loss),
                )
                with torch.no_grad():
                    broken = predictions(model(cand)) != ys
                x_adv[idx[broken]] = cand[broken]
                robust[idx[broken]] = False
        return x_adv


@dataclasses.dataclass
class ReferenceSuite(Suite):
    """The reference AutoAttack (``pyautoattack``), ``version`` standard or custom ``attacks``;
    ``apgd_ce_restarts`` replaces APGD-CE's random restarts (None: the ``standard`` version's, 1, or 5 at L1)."""

    name: ClassVar[str] = "reference"
    version: str = "standard"
    attacks: tuple[str, ...] = ()
    label: str = "standard"
    num_classes: int = 10
    apgd_ce_restarts: int | None = None
    _warnings: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        restarts = self.apgd_ce_restarts
        if restarts is not None and (isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1):
            raise ValueError(f"apgd_ce_restarts must be an integer >= 1 or None, got {restarts!r}")

    def _config(self, threat: ThreatModel, seed: int) -> AutoAttackConfig:
        return AutoAttackConfig(threat=threat, version=self.version, attacks=self.attacks, seed=seed)

    def _targets(self) -> int:
        if self.num_classes < 4:
            raise ValueError(
                f"the reference suites need at least 4 classes (targeted DLR loss); the model has "
                f"{self.num_classes}; use suite 'quick'"
            )
        return min(9, self.num_classes - 1)

    def describe(self, threat: ThreatModel) -> list[str]:
        if not threat.is_lp:
            return describe_domain(threat)
        names = list(self.attacks) if self.attacks else ["apgd-ce", "apgd-t", "fab-t", "square"]
        l1 = threat.norm == "l1"
        restarts = self.apgd_ce_restarts or (5 if l1 else 1)
        text = {
            "apgd-ce": f"{REFERENCE_PACKAGE} apgd-ce (100 iterations, {restarts} restart(s)"
            + (", large-eps schedule)" if l1 else ")"),
            "apgd-t": f"{REFERENCE_PACKAGE} apgd-t (100 iterations, "
            f"{min(5, self._targets()) if l1 else self._targets()} target classes)",
            "fab-t": f"{REFERENCE_PACKAGE} fab-t (100 iterations, {self._targets()} target classes)",
            "square": f"{REFERENCE_PACKAGE} square (5000 queries)",
            "apgd-dlr": f"{REFERENCE_PACKAGE} apgd-dlr (100 iterations)",
            "fab": f"{REFERENCE_PACKAGE} fab (100 iterations)",
        }
        return [text[n] + f" [version {reference_version()}]" for n in names]

    def protocol(self, threats: tuple[ThreatModel, ...]) -> dict[str, Any]:
        out = super().protocol(threats)
        out.update(
            suite=self.label,
            reference_package=REFERENCE_PACKAGE,
            reference_version=reference_version(),
            reference_mode=self.version if self.version != "custom" else "custom: " + "+".join(self.attacks),
        )
        return out

    def warnings(self) -> list[str]:
        return list(self._warnings)

    def attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, threat: ThreatModel, seed: int
    ) -> torch.Tensor:
        if not threat.is_lp:
            return domain_worst_case(model, x, y, ids, threat, seed)
        targets = self._targets()
        view, u, ref_threat = to_reference(model, x, threat)
        aa: Any = build_reference(view, self._config(ref_threat, derive_seed(seed, threat) % (2**31)), x.device)
        aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, targets)
        aa.fab.n_target_classes = targets
        if self.apgd_ce_restarts is not None:
            aa.apgd.n_restarts = self.apgd_ce_restarts
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), reference_logging(threat, self._warnings):
            u_adv, _ = aa.run_standard_evaluation(u, y, batch_size=max(1, x.shape[0]))
        return from_reference(u_adv, x, threat)


DOMAIN_PGD = QuickSuite(steps=100, restarts=2)
"""metaat's PGD that opens every domain threat's worst case in the reference suites."""


def describe_domain(threat: ThreatModel) -> list[str]:
    """The attacks :func:`domain_worst_case` runs for ``threat``."""
    kind = threat.kind
    extra = kind.evaluation_attacks if kind is not None else ()
    return (DOMAIN_PGD.describe(threat) if threat.continuous else []) + [
        f"metaat {name}" + (f" ({', '.join(f'{k}={v}' for k, v in options)})" if options else "")
        for name, options in extra
    ]


def domain_worst_case(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, threat: ThreatModel, seed: int
) -> torch.Tensor:
    """Per-point worst case for a domain threat: metaat's PGD (CE, margin; 2 restarts of 100 steps)
    where the set is continuous, then each of the kind's ``evaluation_attacks`` on the points still
    robust."""
    from metaat.attacks import create

    x_adv = DOMAIN_PGD.attack(model, x, y, ids, threat, seed) if threat.continuous else x.clone()
    kind = threat.kind
    for name, options in kind.evaluation_attacks if kind is not None else ():
        with torch.no_grad():
            robust = (predictions(model(x_adv)) == y).nonzero().squeeze(1)
        if robust.numel() == 0:
            break
        attack = create(name, threat=threat, seed=derive_seed(seed, threat, name) % (2**31), **dict(options))
        cand = attack.perturb(model, x[robust], y[robust], make_generator(derive_seed(seed, threat, name, "gen")))
        with torch.no_grad():
            broken = predictions(model(cand)) != y[robust]
        x_adv[robust[broken]] = cand[broken]
    return x_adv


@SUITES.register("quick", help="metaat PGD-25, CE + margin loss: fast monitoring (not a headline number)")
def quick_suite(num_classes: int = 10, **options: Any) -> Suite:
    return QuickSuite(**options)


@SUITES.register("apgd", help="reference APGD-CE + APGD-T (pyautoattack): the protocol for every benchmark row")
def apgd_suite(num_classes: int = 10, **options: Any) -> Suite:
    if options:
        raise TypeError(f"suite 'apgd' takes no options; got {', '.join(sorted(options))}")
    return ReferenceSuite(version="custom", attacks=("apgd-ce", "apgd-t"), label="apgd", num_classes=num_classes)


@SUITES.register("standard", help="reference AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square): headline")
def standard_suite(num_classes: int = 10, **options: Any) -> Suite:
    if options:
        raise TypeError(f"suite 'standard' takes no options; got {', '.join(sorted(options))}")
    return ReferenceSuite(version="standard", label="standard", num_classes=num_classes)


def make_suite(suite: str | Suite, num_classes: int) -> Suite:
    """A suite object from its name (``quick``, ``apgd``, ``standard``) or an instance."""
    if isinstance(suite, Suite):
        return suite
    return SUITES.create(suite, num_classes=num_classes)
