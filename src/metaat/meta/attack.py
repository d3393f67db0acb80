"""The ``learned`` attack: a meta-learner used as an attack — the learned attacker of L2L (Jiang et
al. 2021, "Learning to Defend by Learning to Attack"), threat-conditioned as in metaat, or MNG's
noise generator (Madaan et al. 2021). It is registered into :data:`metaat.attacks.ATTACKS` when
:mod:`metaat.meta` is imported (the ``metaat`` command always does).

Threat: any of linf / l2 / l1 — the generator's output is projected onto the threat's ball ∩
[0, 1]. The attacker takes ``steps`` learned steps (each recomputes the target's input gradient:
one forward+backward, FGSM's cost for ``steps=1``); a noise generator needs no gradient.

Arguments: ``path`` (a folder written by :func:`metaat.meta.save_generator`, or a training run /
its checkpoint), ``steps`` (1), ``random_start`` (False), ``loss`` (ce / margin / dlr: the loss
whose gradient the attacker sees). An in-memory generator can be passed as ``attacker=module``.
Shapes: ``x`` (B, C, H, W) in [0, 1], ``y`` (B,) int64 → ``x_adv`` (B, C, H, W).

A learned attacker is a fast attack, never the robustness number (see design.md).

>>> import torch, metaat.attacks as A
>>> from metaat.meta import LearnedAttacker  # importing metaat.meta registers "learned"
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
>>> atk = A.create("learned", threat="l2:0.5", attacker=LearnedAttacker(in_channels=1))
>>> x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 2])
>>> bool(((atk(model, x, y) - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all())
True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from metaat.attacks.base import ATTACKS, Attack, AttackConfig, chunks
from metaat.losses import get_loss
from metaat.meta.generators import LearnedAttacker, NoiseGenerator
from metaat.meta.io import load_generator
from metaat.meta.rollout import attacker_rollout
from metaat.meta.shared import ChannelSharedAttacker
from metaat.threats import random_init


@dataclasses.dataclass(frozen=True)
class LearnedConfig(AttackConfig):
    path: str = ""
    steps: int = 1
    random_start: bool = False
    loss: str = "ce"

    def __post_init__(self) -> None:
        super().__post_init__()
        get_loss(self.loss)
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


@ATTACKS.register("learned")
class LearnedAttack(Attack):
    """A saved learned attacker / noise generator, projected into the threat set."""

    name = "learned"
    config_class = LearnedConfig
    config: LearnedConfig

    def __init__(self, threat: Any, attacker: nn.Module | None = None, **options: Any) -> None:
        super().__init__(threat, **options)
        if attacker is None:
            if not self.config.path:
                raise ValueError("learned attack needs path=<saved generator or run folder> (or attacker=<module>)")
            attacker = load_generator(self.config.path)
        if not isinstance(attacker, LearnedAttacker | NoiseGenerator | ChannelSharedAttacker):
            raise TypeError(
                "learned attack needs a LearnedAttacker, ChannelSharedAttacker or NoiseGenerator, "
                f"got {type(attacker).__name__}"
            )
        self.attacker: LearnedAttacker | NoiseGenerator | ChannelSharedAttacker = attacker

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cfg, threat = self.config, self.threat
        gen = (
            self.attacker.specialise(x.shape[1]) if isinstance(self.attacker, ChannelSharedAttacker) else self.attacker
        )
        expected = gen.spec.in_channels
        if x.shape[1] != expected:
            raise ValueError(f"the learned attacker was built for {expected}-channel images, got {x.shape[1]}")
        gen_params = [(p, p.requires_grad) for p in gen.parameters()]
        was_training = gen.training
        # Draw all randomness for the whole batch first: results do not depend on chunking.
        if isinstance(gen, NoiseGenerator):
            start = gen.sample_noise(x, generator)
        else:
            start = random_init(x, threat, generator) if cfg.random_start else torch.zeros_like(x)
        out = torch.empty_like(x)
        try:
            gen.eval()
            for p, _ in gen_params:
                p.requires_grad_(False)
            gen.to(device=x.device, dtype=x.dtype)
            for sl in chunks(x.shape[0], self.chunk_size(x)):
                xc = x[sl]
                if isinstance(gen, NoiseGenerator):
                    with torch.no_grad():
                        delta = gen(xc, start[sl], threat)
                else:
                    delta = attacker_rollout(
                        gen, model, xc, y[sl], threat, delta0=start[sl], steps=cfg.steps, loss_fn=get_loss(cfg.loss)
                    )
                out[sl] = (xc + delta.detach()).clamp(*threat.box)
        finally:
            for p, flag in gen_params:
                p.requires_grad_(flag)
            gen.train(was_training)
        return out
