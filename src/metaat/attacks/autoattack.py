"""The reference AutoAttack (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with
an ensemble of diverse parameter-free attacks"), from the authors' own package ``pyautoattack``,
behind metaat's attack contract.

Threat: linf, l2 or l1 (the package's APGD-L1 variants with its large-eps schedule for L1).

Arguments: ``version`` — ``standard`` (APGD-CE, APGD-T, FAB-T, Square), ``plus``, ``rand``, or
``custom`` with ``attacks`` (e.g. ``("apgd-ce", "apgd-t")``, the protocol Croce & Hein use for
union evaluations); ``seed``; ``batch_size`` (250); ``state_path`` for a resumable run.
For ``custom``, the sub-attacks get the same settings the ``standard`` version would give them.
Refused rather than run half-honoured: a threat that is not an Lp ball, ``plus`` at L1 (the package
defines it for linf and l2 and only logs a warning otherwise), and a ``generator`` at call time (the
package draws its randomness from ``seed``).
The package re-seeds torch's global RNG; metaat runs it inside ``torch.random.fork_rng`` so the
caller's random state is left as it was.

>>> import metaat.attacks as A
>>> A.create("autoattack", threat="linf:0.1", version="custom", attacks=("apgd-ce",)).version
'0.2.0'
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from metaat.attacks.base import ATTACKS, Attack, AttackConfig
from metaat.threats import UNIT_BOX, ThreatModel, project

AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
AA_VERSIONS = ("standard", "plus", "rand", "custom")


SUB_ATTACK_SECONDS: collections.defaultdict[str, float] = collections.defaultdict(float)
"""Seconds spent in each reference sub-attack in this process, keyed ``"<threat> <attack>"`` (e.g.
``"l2:1.5 apgd-t"``), timed between the package's own ``running <attack>`` log lines. For cost
benchmarks."""


class _SubAttackTimer(logging.Handler):
    """Charges the time between the package's ``running <attack>`` lines to each sub-attack."""

    def __init__(self, threat: str) -> None:
        super().__init__(logging.DEBUG)
        self.threat = threat
        self.current: tuple[str, float] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("running ") or message.startswith("no robust datapoints left"):
            self.stop()
            if message.startswith("running "):
                self.current = (message.split()[1].lower(), time.perf_counter())

    def stop(self) -> None:
        if self.current is not None:
            name, start = self.current
            SUB_ATTACK_SECONDS[f"{self.threat} {name}"] += time.perf_counter() - start
            self.current = None


class _WarningSink(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.sink:
            self.sink.append(message)


@contextlib.contextmanager
def reference_logging(threat: ThreatModel, warnings: list[str] | None = None) -> Iterator[None]:
    """Route the reference package's log to metaat instead of stderr: each sub-attack's time goes to
    :data:`SUB_ATTACK_SECONDS`, its warnings (when ``warnings`` is given) into that list."""
    logger = logging.getLogger("auto-attack")
    saved = (logger.level, logger.propagate)
    timer = _SubAttackTimer(str(threat))
    handlers: list[logging.Handler] = [timer] + ([_WarningSink(warnings)] if warnings is not None else [])
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for h in handlers:
        logger.addHandler(h)
    try:
        yield
    finally:
        timer.stop()
        for h in handlers:
            logger.removeHandler(h)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


class ReferenceView(nn.Module):
    """``model`` as the reference package must see it: inputs ``u`` in ``[0, 1]``, shaped like images.

    The package clamps to ``[0, 1]`` and its Square attack draws square windows over ``(C, H, W)``:
    a signal batch ``(B, C, T)`` travels as ``(B, C, h, w)`` with ``h = ⌊√T⌋`` and ``w = ⌈T / h⌉``
    (read row by row; the ``h·w − T`` padding values are ignored by the model, so budget spent on
    them is wasted, never extra), and a box ``[lo, hi]`` other than ``[0, 1]`` is mapped affinely,
    ``x = lo + (hi − lo) · u``; every Lp radius scales by ``1 / (hi − lo)`` with it.
    """

    def __init__(self, model: nn.Module, box: tuple[float, float], length: int | None) -> None:
        super().__init__()
        self.model = model
        self.box = box
        self.length = length

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x = u.flatten(2)[:, :, : self.length] if self.length is not None else u
        lo, hi = self.box
        return self.model(lo + (hi - lo) * x)


def signal_grid(length: int) -> tuple[int, int]:
    """``(h, w)`` with ``h·w >= length``: the near-square grid a signal of ``length`` samples fills."""
    h = max(1, math.isqrt(length))
    return h, -(-length // h)


def to_reference(model: nn.Module, x: torch.Tensor, threat: ThreatModel) -> tuple[nn.Module, torch.Tensor, ThreatModel]:
    """``(model, x, threat)`` in the reference package's space (unchanged for images in [0, 1])."""
    if x.dim() == 4 and threat.box == UNIT_BOX:
        return model, x, threat
    if not threat.is_lp:
        raise ValueError(f"the reference AutoAttack covers Lp balls only, not {threat}")
    lo, hi = threat.box
    u = (x - lo) / (hi - lo)
    length = None
    if x.dim() == 3:
        length = x.shape[2]
        h, w = signal_grid(length)
        u = torch.nn.functional.pad(u, (0, h * w - length), value=0.5).reshape(x.shape[0], x.shape[1], h, w)
    ref_threat = ThreatModel(threat.norm, threat.eps / (hi - lo))
    return ReferenceView(model, threat.box, length), u.contiguous(), ref_threat


def from_reference(u_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """The reference's result back in the model's space, exactly inside ``threat``'s set."""
    if x.dim() == 4 and threat.box == UNIT_BOX:
        return u_adv.detach().clamp(0, 1)
    lo, hi = threat.box
    u = u_adv.detach()
    if x.dim() == 3:
        u = u.flatten(2)[:, :, : x.shape[2]]
    back = lo + (hi - lo) * u
    return x + project(back - x, x, threat)  # removes the rounding of the affine round trip


def reference_version() -> str:
    """Version of the installed reference package (recorded with every result)."""
    import pyautoattack

    return str(getattr(pyautoattack, "__version__", "unknown"))


@dataclasses.dataclass(frozen=True)
class AutoAttackConfig(AttackConfig):
    version: str = "standard"
    attacks: tuple[str, ...] = ()
    state_path: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.version not in AA_VERSIONS:
            raise ValueError(f"unknown AutoAttack version {self.version!r}; valid: {', '.join(AA_VERSIONS)}")
        object.__setattr__(self, "attacks", tuple(self.attacks))
        bad = [a for a in self.attacks if a not in AA_ATTACKS]
        if bad:
            raise ValueError(f"unknown AutoAttack attack(s) {bad}; valid: {', '.join(AA_ATTACKS)}")
        if self.version == "custom" and not self.attacks:
            raise ValueError("version='custom' needs attacks, e.g. ('apgd-ce', 'apgd-t')")
        if self.version != "custom" and self.attacks:
            raise ValueError("attacks can only be chosen with version='custom'")
        # Refused here rather than left to the package, which would run them without honouring them.
        if self.threat is not None and not self.threat.is_lp:
            raise ValueError(f"the reference AutoAttack covers Lp balls only, not {self.threat}")
        if self.threat is not None and self.threat.norm == "l1" and self.version == "plus":
            raise ValueError("AutoAttack version 'plus' is defined for linf and l2 only (the package flags l1)")


def build_reference(model: nn.Module, cfg: AutoAttackConfig, device: torch.device) -> object:
    """A configured ``pyautoattack.AutoAttack`` for ``cfg``."""
    from pyautoattack import AutoAttack as ReferenceAutoAttack

    threat = cfg.threat
    if threat is None:
        raise ValueError("the reference AutoAttack needs a threat, e.g. linf:0.1")
    if cfg.version == "custom":
        aa = ReferenceAutoAttack(
            model,
            norm=threat.autoattack_norm,
            eps=threat.eps,
            version="custom",  # type: ignore[arg-type]
            attacks=list(cfg.attacks),
            seed=cfg.seed,
            device=device,  # type: ignore[arg-type]
        )
        # Mirror what version='standard' sets for each sub-attack.
        if threat.norm == "l1":
            aa.apgd.use_largereps = True
            aa.apgd_targeted.use_largereps = True
            aa.apgd.n_restarts = 5
            aa.apgd_targeted.n_target_classes = 5
        else:
            aa.apgd.n_restarts = 1
            aa.apgd_targeted.n_target_classes = 9
        aa.apgd_targeted.n_restarts = 1
        aa.fab.n_restarts = 1
        aa.fab.n_target_classes = 9
        aa.square.n_queries = 5000
    else:
        aa = ReferenceAutoAttack(
            model,
            norm=threat.autoattack_norm,
            eps=threat.eps,  # type: ignore[arg-type]
            version=cfg.version,
            seed=cfg.seed,
            device=device,  # type: ignore[arg-type]
        )
    aa.verbose = False
    return aa


@ATTACKS.register("autoattack")
class AutoAttack(Attack):
    """The reference AutoAttack (pyautoattack) as a metaat attack."""

    name = "autoattack"
    config_class = AutoAttackConfig
    config: AutoAttackConfig
    takes_generator = False  # the package seeds itself from ``seed``

    @property
    def version(self) -> str:
        return reference_version()

    def chunk_size(self, x: torch.Tensor) -> int:
        return self.config.batch_size or 250

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        view, u, ref_threat = to_reference(model, x, self.threat)
        aa = build_reference(view, dataclasses.replace(self.config, threat=ref_threat), x.device)
        state = Path(self.config.state_path) if self.config.state_path else None
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), reference_logging(self.threat):
            # The reference uses .view() on tensors shaped like x: a non-contiguous x (a transposed or
            # channels-last batch) would crash it.
            u_adv, _ = aa.run_standard_evaluation(  # type: ignore[attr-defined]
                u.contiguous(), y.contiguous(), batch_size=self.chunk_size(x), state_path=state
            )
        return from_reference(u_adv, x, self.threat)
