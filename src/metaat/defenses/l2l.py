"""L2L: Learning to Defend by Learning to Attack (Jiang, Ma, Chen, Bailey, Jiang, AISTATS 2021).

Threat: one or several Lp threats (linf / l2 / l1). The inner max is delegated to a learned
attacker network ``g_φ`` that sees ``[x, ∇ₓL / max|∇ₓL|]``; the classifier and the attacker play
an alternating min-max on the same batch: the classifier minimises ``CE(f_θ(x + δ_φ))`` while the
attacker maximises it with its own Adam optimizer (``attacker_lr``). ``steps > 1`` is the paper's
k-step variant: the attacker is applied ``steps`` times, recomputing the gradient before each.

metaat's extension: one attacker for many threats — conditioned on the sampled threat (norm,
eps; FiLM) and projected into that threat's set (see :mod:`metaat.meta.generators`).

The attacker's update piggybacks on the training loop's backward pass
(:func:`metaat.meta.rollout.route_ascent`), so a batch costs ``steps`` (input gradients) + 1
(training forward+backward) target passes — 2 for the one-step attacker, like FGSM training.

Options: ``steps``, ``random_start``, ``attacker_lr``, ``hidden`` / ``depth`` (attacker size),
``clean_weight`` (adds ``w · CE(f(x))``), ``attacker_path`` (warm start from a meta-pretrained
attacker, see ``metaat meta-pretrain``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from metaat.defenses.base import DEFENSES, Defense, DefenseConfig, TrainContext, accuracy
from metaat.losses import ce
from metaat.meta.generators import AttackerSpec, LearnedAttacker
from metaat.meta.io import generator_record, load_attacker
from metaat.meta.rollout import attacker_rollout, route_ascent
from metaat.meta.sampling import sample_index, uniform
from metaat.threats import random_init


@dataclasses.dataclass(frozen=True)
class L2LConfig(DefenseConfig):
    steps: int = 1
    random_start: bool = False
    attacker_lr: float = 1e-3
    hidden: int = 32
    depth: int = 3
    clean_weight: float = 0.0
    attacker_path: str | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"l2l: steps must be >= 1, got {self.steps}")
        if self.attacker_lr <= 0:
            raise ValueError(f"l2l: attacker_lr must be > 0, got {self.attacker_lr}")
        if self.clean_weight < 0:
            raise ValueError(f"l2l: clean_weight must be >= 0, got {self.clean_weight}")


def build_attacker(
    in_channels: int, hidden: int, depth: int, path: str | None, device: torch.device, rank: int = 2
) -> LearnedAttacker:
    """A fresh attacker, or the one saved at ``path``: a plain attacker is checked against the input
    channels and rank (2 for images, 1 for signals); a channel-shared one from ``metaat meta-pretrain
    --tasks`` is specialised exactly to the input channels."""
    if path:
        attacker = load_attacker(path, in_channels=in_channels, rank=rank)
    else:
        attacker = LearnedAttacker(AttackerSpec(in_channels=in_channels, hidden=hidden, depth=depth, rank=rank))
    return attacker.to(device).train()


@DEFENSES.register(
    "l2l", help="threat-conditioned learned attacker, alternating min-max (Jiang et al. 2021; k+1 passes)"
)
class L2L(Defense):
    """Learning to defend by learning to attack (Jiang et al. 2021), threat-conditioned."""

    name = "l2l"
    config_class = L2LConfig
    config: L2LConfig
    multi_threat = True
    single_step = True  # one learned step: the loop's catastrophic-overfitting guard defaults on

    def __init__(self, threats: Any, **options: Any) -> None:
        super().__init__(threats, **options)
        self.attacker: LearnedAttacker | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def setup(self, model: nn.Module, device: torch.device, num_classes: int, input_shape: tuple[int, ...]) -> None:
        cfg = self.config
        self.attacker = build_attacker(
            int(input_shape[0]), cfg.hidden, cfg.depth, cfg.attacker_path, device, rank=len(input_shape) - 1
        )
        self.optimizer = torch.optim.Adam(self.attacker.parameters(), lr=cfg.attacker_lr)

    def modules(self) -> dict[str, nn.Module]:
        return {"attacker": self.attacker} if self.attacker is not None else {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"attacker": self.optimizer} if self.optimizer is not None else {}

    def state_dict(self) -> dict[str, Any]:
        return {"attacker": generator_record(self.attacker)} if self.attacker is not None else {}

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        attacker, opt = self.attacker, self.optimizer
        assert attacker is not None and opt is not None
        t = sample_index(uniform(len(self.threats)), ctx.generator)
        threat = self.threats[t]
        with ctx.timed("attack"):
            delta0 = random_init(x, threat, ctx.generator) if cfg.random_start else torch.zeros_like(x)
            attacker.train()
            delta = attacker_rollout(attacker, model, x, y, threat, delta0=delta0, steps=cfg.steps)
        # Classifier descends CE(x + δ); the same backward makes the attacker ascend it.
        x_adv = x + route_ascent(delta, opt, sync=ctx.sync_gradients)
        if cfg.clean_weight > 0:
            logits = model(torch.cat([x_adv, x]))
            adv, clean = logits[: x.shape[0]], logits[x.shape[0] :]
            loss = ce(adv, y).mean() + cfg.clean_weight * ce(clean, y).mean()
        else:
            adv = model(x_adv)
            loss = ce(adv, y).mean()
        metrics = {
            "loss": float(loss.detach()),
            "acc": accuracy(adv, y),
            "threat": float(t),
        }
        return loss, metrics
