"""The defense (training objective) contract.

A defense is a callable ``defense(model, x, y, ctx) -> (loss, metrics)``:

* ``model`` is the target model, in train mode (under ``torchrun`` it is the
  DistributedDataParallel wrapper: call it, never reach into it); the loss is a scalar whose
  gradient w.r.t. the model's parameters the training loop applies (the loop owns the model's
  optimizer, the learning-rate schedule, gradient clipping and the clean/adversarial mix);
* ``ctx`` (:class:`TrainContext`) carries the training threats, an explicit ``torch.Generator``,
  the step/epoch counters, the device, a timer (``with ctx.timed("attack"): ...``, so the loop can
  split wall time into attack and update) and ``sync_gradients`` for defense-owned modules under
  DDP;
* ``metrics`` is a flat ``dict[str, float]`` logged to ``metrics.jsonl`` (averaged over the epoch);
  by convention ``loss`` and ``acc`` (accuracy on the inputs the loss was computed on).

Cost: the loop counts every forward and backward pass through the target model (attack steps
included), so a defense should not run forwards it does not need — training-time PGD uses the final
iterate (``return_best=False``), which costs no extra forward.

A defense may own extra trainable state — a generator network, a perturbation bank — exposed via
``modules()`` and ``optimizers()`` so the loop checkpoints and resumes it exactly like the model;
non-tensor state (running accuracies, counters) goes through ``state_dict()`` /
``load_state_dict()`` as plain JSON-able values. Attack generation inside a defense uses metaat's
attacks (or :func:`pgd_attack` below), which put the model in eval mode and switch parameter
gradients off while they run.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from metaat.attacks.base import attack_mode
from metaat.attacks.pgd import pgd_steps
from metaat.losses import LossFn, ce
from metaat.models import unwrap
from metaat.options import check_options
from metaat.registry import Registry
from metaat.threats import ThreatModel, default_step_size, parse_threats, random_init

DEFENSES: Registry[Defense] = Registry("defense")
DISCRETE_VARIANTS: Registry[Defense] = Registry("defense for discrete edits")
"""Domain implementations of a core defense's name for sets of discrete edits (the text domain's
``metaat`` proposes word substitutions instead of perturbation tensors): :func:`create` picks one
when every threat is discrete and the core class handles continuous sets only."""
ThreatsArg = str | ThreatModel | list[str | ThreatModel] | tuple[str | ThreatModel, ...]
"""What a defense's constructor takes as threats: ``"linf:0.1"`` or a sequence of them."""


@dataclasses.dataclass
class TrainContext:
    """What the loop tells a defense about the current step."""

    threats: tuple[ThreatModel, ...]
    generator: torch.Generator
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    epoch: int = 0
    step: int = 0
    steps_per_epoch: int = 1
    total_epochs: int = 1
    num_classes: int = 10
    rank: int = 0
    world_size: int = 1
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return min(
            1.0, (self.epoch * self.steps_per_epoch + self.step) / max(1, self.total_epochs * self.steps_per_epoch)
        )

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to ``timings[name]`` (the loop reads ``attack``)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def sync_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Average the gradients of ``parameters`` over DDP ranks (no-op in a single process).

        The loop synchronises the target model itself (through DDP); a defense that updates its own
        modules (a generator, a bank) calls this between ``backward`` and its optimizer's ``step``.
        """
        if self.world_size <= 1:
            return
        import torch.distributed as dist

        for p in parameters:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.world_size)


@dataclasses.dataclass(frozen=True)
class DefenseConfig:
    """Options every defense has; subclasses add their own fields."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _runs_once(setup: Callable[..., None]) -> Callable[..., None]:
    """``setup`` that runs on the first call only (later calls, from the loop or a caller, do nothing)."""

    @functools.wraps(setup)
    def once(self: Defense, *args: Any, **kwargs: Any) -> None:
        if not self._set_up:
            setup(self, *args, **kwargs)
            self._set_up = True

    return once


def _set_up_first(call: Callable[..., tuple[torch.Tensor, dict[str, float]]]) -> Callable[..., Any]:
    """``__call__`` that runs ``setup`` (for the model, device and input shape it sees) before the first step."""

    @functools.wraps(call)
    def step(
        self: Defense, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        self.setup(unwrap(model), x.device, ctx.num_classes, tuple(x.shape[1:]))
        return call(self, model, x, y, ctx)

    return step


class Defense(ABC):
    """Base class for training objectives.

    A subclass implements ``__call__`` and, when it owns trainable state, ``setup``; the base class
    guarantees that ``setup`` runs exactly once before the first step, whoever makes that step (the
    training loop calls it with the model it trains; a direct call to the defense calls it with the
    model, device and input shape it is given).
    """

    name: ClassVar[str] = "defense"
    config_class: ClassVar[type[DefenseConfig]] = DefenseConfig
    multi_threat: ClassVar[bool] = False  # accepts several --threat
    discrete: ClassVar[bool] = False  # trains against discrete edit sets (text's syn:k, typo:k)
    single_step: ClassVar[bool] = False  # prone to catastrophic overfitting: the loop's guard defaults on
    _set_up: bool = False  # set by the first setup()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "setup" in cls.__dict__:
            cls.setup = _runs_once(cls.__dict__["setup"])  # type: ignore[method-assign]
        if "__call__" in cls.__dict__ and not getattr(cls.__dict__["__call__"], "__isabstractmethod__", False):
            cls.__call__ = _set_up_first(cls.__dict__["__call__"])  # type: ignore[method-assign]

    def __init__(self, threats: ThreatsArg, **options: Any) -> None:
        fields = {f.name for f in dataclasses.fields(self.config_class)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise TypeError(
                f"defense {self.name}: unknown option(s) {', '.join(unknown)}; "
                f"valid options: {', '.join(sorted(fields)) or '(none)'}"
            )
        self.threats = parse_threats(threats)
        if len(self.threats) > 1 and not self.multi_threat:
            raise ValueError(
                f"defense {self.name} trains against one threat; got {len(self.threats)} "
                f"({', '.join(map(str, self.threats))}). Multi-threat defenses: "
                + ", ".join(n for n in DEFENSES.available() if DEFENSES.get(n).multi_threat)  # type: ignore[attr-defined]
            )
        discrete = [str(t) for t in self.threats if not t.continuous]
        if discrete and not self.discrete:
            raise ValueError(
                f"defense {self.name} attacks continuous threat sets; {', '.join(discrete)} "
                "is a set of discrete edits. Defenses for discrete edits: " + ", ".join(sorted(discrete_defenses()))
            )
        check_options(f"defense {self.name}", self.config_class, options)
        self.config = self.config_class(**options)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items())
        threats = ", ".join(map(str, self.threats))
        return f"{type(self).__name__}(threats=[{threats}]{', ' if opts else ''}{opts})"

    @abstractmethod
    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the scalar training loss for this batch and metrics."""

    # -- extra trainable state (generators, banks), checkpointed by the loop ----------------------
    @_runs_once  # noqa: B027  (an optional hook)
    def setup(self, model: nn.Module, device: torch.device, num_classes: int, input_shape: tuple[int, ...]) -> None:
        """Build what the defense trains besides the model (generators, banks, their optimizers).

        Runs once, before the first step: the loop calls it with the model it trains; otherwise the
        first call of the defense does. A subclass overrides it; the base class keeps it once-only.
        """

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able non-tensor state."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:  # noqa: B027  (an optional hook)
        """Hook after each epoch's evaluation (``metrics`` flat, e.g. ``eval/robust/linf:0.1``)."""


# -- small helpers shared by the classic defenses ------------------------------------------------


def pgd_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    generator: torch.Generator,
    *,
    steps: int,
    step_size: float | None = None,
    random_start: bool = True,
    l1_sparsity: float = 0.99,
    loss_fn: LossFn = ce,
) -> torch.Tensor:
    """Training-time PGD (Madry et al. 2018): final iterate, ``steps`` forward+backward passes, no more.

    For a set of discrete edits (text's ``syn:k``, ``typo:k``) its kind's ``train_attack`` with the
    same number of passes (``step_size``, ``random_start``, ``l1_sparsity`` and ``loss_fn`` do not apply).

    ``y`` is handed to ``loss_fn`` unchanged (TRADES passes the clean logits there).
    """
    if not threat.continuous:  # a set of discrete edits: its kind's training attack, same budget of passes
        kind = threat.kind
        assert kind is not None
        with attack_mode(model):
            return kind.train_attack(model, x.detach(), y.detach(), threat, generator, steps).detach()
    step = step_size if step_size is not None else default_step_size(threat, steps)
    with attack_mode(model):
        delta0 = random_init(x, threat, generator) if random_start else torch.zeros_like(x)
        x_adv = pgd_steps(
            model,
            x.detach(),
            y.detach(),
            delta0,
            threat=threat,
            steps=steps,
            step_size=step,
            loss_fn=loss_fn,
            return_best=False,
            l1_sparsity=l1_sparsity,
        )
    return x_adv.detach()


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Share of ``logits`` whose argmax is ``y``."""
    return float((logits.detach().argmax(dim=1) == y).float().mean())


def check_steps(name: str, steps: int, step_size: float | None = None) -> None:
    """One-line errors for the options every PGD-based defense has."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"defense {name}: steps must be an integer >= 1, got {steps!r}")
    if step_size is not None and not step_size > 0:
        raise ValueError(f"defense {name}: step_size must be > 0, got {step_size!r}")


@dataclasses.dataclass(frozen=True)
class MultiPGDConfig(DefenseConfig):
    """PGD options of the multi-threat defenses; ``step_sizes`` has one entry per threat
    (default 2.5·eps/steps for each)."""

    steps: int = 10
    step_sizes: tuple[float, ...] | None = None
    random_start: bool = True
    l1_sparsity: float = 0.99

    def __post_init__(self) -> None:
        if self.step_sizes is not None:
            sizes = (self.step_sizes,) if isinstance(self.step_sizes, int | float) else tuple(self.step_sizes)
            object.__setattr__(self, "step_sizes", tuple(float(s) for s in sizes))
        check_steps(type(self).__name__, self.steps)
        for s in self.step_sizes or ():
            if not s > 0:
                raise ValueError(f"step_sizes must all be > 0, got {self.step_sizes}")


def step_sizes_for(
    name: str, threats: tuple[ThreatModel, ...], steps: int, step_sizes: tuple[float, ...] | None
) -> tuple[float, ...]:
    """One PGD step size per threat: the given ones (checked for length) or 2.5·eps/steps."""
    if step_sizes is None:
        return tuple(default_step_size(t, steps) for t in threats)
    if len(step_sizes) != len(threats):
        raise ValueError(
            f"defense {name}: step_sizes has {len(step_sizes)} value(s) but there are {len(threats)} threats "
            f"({', '.join(map(str, threats))}); give one per threat, in the same order"
        )
    return tuple(step_sizes)


def pgd_for_each_threat(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: tuple[ThreatModel, ...],
    step_sizes: tuple[float, ...],
    cfg: MultiPGDConfig,
    ctx: TrainContext,
) -> torch.Tensor:
    """PGD examples of ``x`` for every threat, stacked: ``(T * B, ...)`` in threat order (T·K passes)."""
    with ctx.timed("attack"):
        return torch.cat(
            [
                pgd_attack(
                    model,
                    x,
                    y,
                    threat,
                    ctx.generator,
                    steps=cfg.steps,
                    step_size=size,
                    random_start=cfg.random_start,
                    l1_sparsity=cfg.l1_sparsity,
                )
                for threat, size in zip(threats, step_sizes, strict=True)
            ]
        )


def stacked_losses(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of the threat-stacked batch ``(T * B, ...)``; returns the per-example
    cross-entropies and the correctness mask, both shaped ``(T, B)``."""
    t = x_adv.shape[0] // y.shape[0]
    logits = model(x_adv)
    target = y.repeat(t)
    losses = F.cross_entropy(logits, target, reduction="none").reshape(t, -1)
    correct = (logits.detach().argmax(dim=1) == target).reshape(t, -1)
    return losses, correct


def discrete_defenses() -> set[str]:
    """Names that train against discrete edits: discrete core defenses and the domains' variants."""
    core = {n for n in DEFENSES.available() if DEFENSES.get(n).discrete}  # type: ignore[attr-defined]
    return core | set(DISCRETE_VARIANTS.available())


def create(name: str, threats: Any, **options: Any) -> Defense:
    """Build a registered defense: ``create("pgd", ["linf:0.1"], steps=10)``; for discrete threats
    (``["syn:2", "typo:2"]``) a domain's variant of the name where the core class takes continuous sets only."""
    parsed = parse_threats(threats)
    if (
        parsed
        and not any(t.continuous for t in parsed)
        and name in DEFENSES.available()
        and not DEFENSES.get(name).discrete  # type: ignore[attr-defined]
        and name in DISCRETE_VARIANTS.available()
    ):
        return DISCRETE_VARIANTS.create(name, threats, **options)
    return DEFENSES.create(name, threats, **options)


def available() -> list[str]:
    return DEFENSES.available()
