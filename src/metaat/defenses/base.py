"""The defense (training objective) contract.

A defense is a callable ``defense(model, x, y, ctx) -> (loss, metrics)``:

* ``model`` is the target model, in train mode; the loss is a scalar whose gradient w.r.t. the
  model's parameters the training loop applies (the loop owns the model's optimizer);
* ``ctx`` (:class:`TrainContext`) carries the training threats, an explicit ``torch.Generator``,
  the step/epoch counters and the device;
* ``metrics`` is a flat ``dict[str, float]`` logged to ``metrics.jsonl``.

A defense may own extra trainable state — a generator network, a perturbation bank — exposed via
``modules()`` and ``optimizers()`` so the loop checkpoints and resumes it exactly like the model;
non-tensor state (running accuracies, counters) goes through ``state_dict()`` /
``load_state_dict()`` as plain JSON-able values. Attack generation inside a defense uses metaat's
attacks, which put the model in eval mode and switch parameter gradients off while they run.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from metaat.registry import Registry
from metaat.threats import ThreatModel, parse_threats

DEFENSES: Registry[Defense] = Registry("defense")


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

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return min(1.0, (self.epoch * self.steps_per_epoch + self.step) / max(1, self.total_epochs * self.steps_per_epoch))


@dataclasses.dataclass(frozen=True)
class DefenseConfig:
    """Options every defense has; subclasses add their own fields."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Defense(ABC):
    """Base class for training objectives."""

    name: ClassVar[str] = "defense"
    config_class: ClassVar[type[DefenseConfig]] = DefenseConfig
    multi_threat: ClassVar[bool] = False  # accepts several --threat

    def __init__(self, threats: str | ThreatModel | list[str | ThreatModel] | tuple[str | ThreatModel, ...], **options: Any) -> None:
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
        self.config = self.config_class(**options)

    @abstractmethod
    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the scalar training loss for this batch and metrics."""

    # -- extra trainable state (generators, banks), checkpointed by the loop ----------------------
    def setup(self, model: nn.Module, device: torch.device, num_classes: int, input_shape: tuple[int, ...]) -> None:
        """Called once by the loop before training (build generators, banks, their optimizers)."""

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able non-tensor state."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """Hook after each epoch's evaluation."""


def create(name: str, threats: Any, **options: Any) -> Defense:
    """Build a registered defense: ``create("pgd", ["linf:0.1"], steps=10)``."""
    return DEFENSES.create(name, threats, **options)


def available() -> list[str]:
    return DEFENSES.available()
