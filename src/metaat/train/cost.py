"""The cost meter: forward and backward passes through the target model per training example.

A forward hook on the model adds the batch size to ``forward_examples`` on every call; when the
output requires grad it also hooks the output tensor, which adds the batch size to
``backward_examples`` when a gradient flows back through it — whether that gradient is an attack's
input-gradient or the parameter update's. Forwards under ``torch.no_grad`` count as forwards only.
Nothing is counted while the meter is paused (the per-epoch evaluation).

``passes_per_example = (forward + backward) / 2 / training examples``: standard training is 1,
FGSM-based "fast" training 2, PGD-K training K + 1.

Wall time is split into ``attack`` (reported by defenses through ``TrainContext.timed``), ``update``
(the rest of each training step) and ``eval``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


@dataclasses.dataclass
class CostMeter:
    """Counts passes through one model; ``attach`` it, ``pause`` it around evaluation."""

    forward_examples: int = 0
    backward_examples: int = 0
    train_examples: int = 0
    attack_seconds: float = 0.0
    update_seconds: float = 0.0
    eval_seconds: float = 0.0
    paused: bool = dataclasses.field(default=False, compare=False)

    def attach(self, model: nn.Module) -> RemovableHandle:
        """Start counting passes through ``model``; ``handle.remove()`` stops it."""

        def on_backward(n: int) -> Any:
            def hook(grad: torch.Tensor) -> None:
                if not self.paused:
                    self.backward_examples += n

            return hook

        def on_forward(module: nn.Module, inputs: Any, output: Any) -> None:
            if self.paused:
                return
            out = output[0] if isinstance(output, tuple | list) else output
            if not isinstance(out, torch.Tensor) or out.dim() == 0:
                return
            n = int(out.shape[0])
            self.forward_examples += n
            if out.requires_grad:
                out.register_hook(on_backward(n))

        return model.register_forward_hook(on_forward)

    @contextmanager
    def pause(self) -> Iterator[None]:
        """Nothing inside the block is counted."""
        before = self.paused
        self.paused = True
        try:
            yield
        finally:
            self.paused = before

    @property
    def passes_per_example(self) -> float:
        """(forward + backward) / 2 per training example seen (0 before any)."""
        if self.train_examples == 0:
            return 0.0
        return (self.forward_examples + self.backward_examples) / 2 / self.train_examples

    def to_dict(self) -> dict[str, Any]:
        """JSON-able counters and the derived passes per example."""
        return {
            "forward_examples": self.forward_examples,
            "backward_examples": self.backward_examples,
            "train_examples": self.train_examples,
            "passes_per_example": self.passes_per_example,
            "attack_seconds": self.attack_seconds,
            "update_seconds": self.update_seconds,
            "eval_seconds": self.eval_seconds,
        }

    def load_dict(self, values: dict[str, Any]) -> None:
        """Restore counters saved by :meth:`to_dict` (the derived value is ignored)."""
        self.forward_examples = int(values["forward_examples"])
        self.backward_examples = int(values["backward_examples"])
        self.train_examples = int(values["train_examples"])
        self.attack_seconds = float(values["attack_seconds"])
        self.update_seconds = float(values["update_seconds"])
        self.eval_seconds = float(values["eval_seconds"])
