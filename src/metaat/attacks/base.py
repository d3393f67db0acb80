"""The attack contract shared by every attack, hand-made or learned.

An attack is a callable ``attack(model, x, y) -> x_adv`` configured by a frozen dataclass:

* an attack whose output lies in a threat set (``bounded``: fgsm, pgd, autoattack, universal,
  learned) needs that ``threat`` — there is no default; an attack whose budget is its own options
  (``spatial`` rotations, ``corruption`` severities, a ``patch``'s size) refuses one;

* the model is passed at call time, never stored;
* the input tensor is never modified;
* while attacking, the model is in eval mode and its parameters do not require gradients (they
  would cost time and are never used); both are restored in a ``finally``;
* randomness comes from an explicit ``torch.Generator`` (``generator=`` at call time, else one
  seeded from ``config.seed``), drawn for the whole batch before it is split into chunks, so the
  result does not depend on the chunk size;
* large calls are processed in chunks (``batch_size``; ``None`` = auto: 128 on CPU where caches
  make that about 2x faster than one big batch, 1024 on GPU).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn

from metaat.options import check_options
from metaat.registry import Registry
from metaat.runtime import make_generator
from metaat.threats import UNIT_BOX, ThreatModel

ATTACKS: Registry[Attack] = Registry("attack")


@contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients inside; the previous state is restored afterwards."""
    # Each submodule's own mode: model.train(flag) would also flip a submodule the user froze in
    # eval mode (a frozen BatchNorm inside a model being fine-tuned).
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, was_training in modes:
            m.training = was_training


def check_inputs(x: torch.Tensor, y: torch.Tensor, box: tuple[float, float] = (0.0, 1.0)) -> None:
    """One-line errors for the inputs every attack refuses (values outside the threat's ``box`` too)."""
    from metaat.data import validate_batch

    validate_batch(x, y, box=box)


def check_model_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """One-line errors when ``model`` cannot take ``x`` or predict ``y``, read without a forward pass.

    The dtype must match the model's parameters; a model built by ``metaat.models.create`` (its
    ``metaat_spec``, also through DDP or ``torch.compile``) also fixes channels, image size and the
    number of classes.
    """
    from metaat.models.checkpoint import unwrap

    param = next(model.parameters(), None)
    if param is not None and param.is_floating_point() and x.is_floating_point() and x.dtype != param.dtype:
        raise ValueError(
            f"x has dtype {x.dtype} but the model's parameters are {param.dtype}; convert x (x.to({param.dtype}))"
        )
    spec = getattr(unwrap(model), "metaat_spec", None)
    if not isinstance(spec, dict):
        return
    expected = model_input_shape(spec)
    if expected is not None and tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"the model ({spec.get('name')}) expects inputs of shape {expected} but the data has {tuple(x.shape[1:])}"
        )
    classes = spec.get("num_classes")
    if isinstance(classes, int) and y.numel() and int(y.max()) >= classes:
        raise ValueError(f"labels go up to {int(y.max())} but the model outputs only {classes} classes")


def model_input_shape(spec: dict[str, Any]) -> tuple[int, ...] | None:
    """The shape of one input a model built by ``metaat.models.create`` takes (None if unknown)."""
    shape = spec.get("input_shape")
    if isinstance(shape, list | tuple):
        return tuple(int(v) for v in shape)
    channels, size = spec.get("in_channels"), spec.get("image_size")
    if channels is None or size is None:
        return None
    return (int(channels), int(size), int(size))


def nonfinite_rows(logits: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the rows of ``logits`` (B, classes) holding a NaN or an Inf."""
    return ~torch.isfinite(logits.detach()).flatten(1).all(dim=1)


def predictions(logits: torch.Tensor) -> torch.Tensor:
    """Predicted labels (B,) from ``logits`` (B, classes); ``-1`` for a row holding a NaN or an Inf.

    ``argmax`` of a NaN row is the NaN's index (often class 0): such a point would be scored as a
    class, robust whenever its label happens to match. ``-1`` never equals a label, so a point whose
    output is not finite is never counted correct or robust.

    >>> predictions(torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [float("inf"), 0.0]])).tolist()
    [1, -1, -1]
    """
    if logits.dim() != 2:
        raise ValueError(f"the model must return logits of shape (batch, classes); got {tuple(logits.shape)}")
    pred = logits.detach().argmax(dim=1)
    return torch.where(nonfinite_rows(logits), torch.full_like(pred, -1), pred)


def name_points(mask: torch.Tensor, offset: int = 0, limit: int = 8) -> str:
    """``"3 of 100 points (indices 4, 17, 52)"`` for the True entries of the (B,) bool ``mask``.

    >>> name_points(torch.tensor([False, True, True]), offset=10)
    '2 of 3 points (indices 11, 12)'
    """
    ids = (mask.nonzero().flatten() + offset).tolist()
    shown = ", ".join(map(str, ids[:limit])) + (", ..." if len(ids) > limit else "")
    return f"{len(ids)} of {mask.numel()} points (indices {shown})"


def auto_chunk(device: torch.device) -> int:
    """Chunk size used when ``batch_size`` is None."""
    return 1024 if device.type == "cuda" else 128


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """Options every attack has. Subclasses add their own fields."""

    threat: ThreatModel | None = None
    batch_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["threat"] = str(self.threat) if self.threat is not None else None
        return out


class Attack(ABC):
    """Base class: validation, mode switching, generator handling. Subclasses implement ``perturb``."""

    name: ClassVar[str] = "attack"
    config_class: ClassVar[type[AttackConfig]] = AttackConfig
    bounded: ClassVar[bool] = True
    """Whether the output lies in a threat set: the attack needs a ``threat`` (False: it refuses one)."""
    takes_generator: ClassVar[bool] = True
    """Whether its randomness comes from the ``generator`` of a call (False: it refuses one)."""

    def __init__(self, threat: str | ThreatModel | None = None, **options: Any) -> None:
        fields = {f.name for f in dataclasses.fields(self.config_class)} - {"threat"}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise TypeError(
                f"{self.name}: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(fields))}"
            )
        if self.bounded and threat is None:
            raise TypeError(f"{self.name}: give the threat its examples must stay in, e.g. threat='linf:0.1'")
        if not self.bounded and threat is not None:
            raise ValueError(
                f"{self.name} is not bounded by a threat model (its budget is its own options); "
                f"it takes no threat, got {threat}"
            )
        check_options(self.name, self.config_class, options)
        self.config = self.config_class(threat=None if threat is None else ThreatModel.parse(threat), **options)

    @property
    def threat(self) -> ThreatModel:
        """The threat set the examples stay in (bounded attacks only)."""
        if self.config.threat is None:
            raise AttributeError(f"{self.name} is not bounded by a threat model")
        return self.config.threat

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items())
        return f"{type(self).__name__}({opts})"

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if generator is not None and not self.takes_generator:
            raise ValueError(f"{self.name} draws its randomness from seed={self.config.seed}; it takes no generator")
        check_inputs(x, y, self.config.threat.box if self.config.threat is not None else UNIT_BOX)
        check_model_inputs(model, x, y)
        gen = generator if generator is not None else make_generator(self.config.seed)
        with attack_mode(model), torch.enable_grad():  # gradient attacks work inside a caller's no_grad too
            x_adv = self.perturb(model, x.detach(), y.detach(), gen)
        if not bool(torch.isfinite(x_adv).all()):  # a diverging step or non-finite gradients: never score NaN
            bad = int((~torch.isfinite(x_adv)).sum())
            raise RuntimeError(
                f"{self.name} produced {bad} non-finite pixel values (NaN/Inf); check the model's outputs"
            )
        return x_adv.detach()

    def chunk_size(self, x: torch.Tensor) -> int:
        return self.config.batch_size or auto_chunk(x.device)

    @abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Return ``x_adv`` (same shape as ``x``); the model is already in attack mode."""


def create(name: str, threat: str | ThreatModel | None = None, **options: Any) -> Attack:
    """Build a registered attack: ``create("pgd", threat="linf:0.1", steps=20)``; an attack that is not
    bounded by a threat model takes none: ``create("spatial", max_rotation=15)``."""
    return ATTACKS.create(name, threat, **options)


def available() -> list[str]:
    return ATTACKS.available()
