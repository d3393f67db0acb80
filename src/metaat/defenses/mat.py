"""MAT: Meta Adversarial Training (Metzen, Finnie, Hutmacher 2021, "Meta Adversarial Training
against Universal Patches").

Threat: one or several Lp threats (linf / l2 / l1); MAT's universal patches become universal Lp
perturbations here. A bank holds ``bank_size`` perturbations per threat. Per batch: sample a
threat and one of its entries; refine it by ``steps`` projected ascent steps on this batch; train
the classifier on the refined perturbation; move the bank entry toward the refined one by
REPTILE (``meta_lr``), so the bank meta-learns initialisations from which a few steps find strong
perturbations.

``universal=True`` (the paper): one perturbation shared by the whole batch, attacked input
``clip(x + u, 0, 1)``. ``universal=False``: the entry only initialises per-example PGD, and the
batch mean of the refined perturbations updates the bank.

Cost per example: ``steps`` + 1 target passes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from metaat.attacks.base import attack_mode
from metaat.attacks.pgd import pgd_steps
from metaat.defenses.base import DEFENSES, Defense, DefenseConfig, TrainContext, accuracy
from metaat.losses import ce
from metaat.meta.bank import PerturbationBank, apply_universal, project_universal, refine_universal
from metaat.meta.sampling import sample_index, uniform
from metaat.threats import default_step_size, project


@dataclasses.dataclass(frozen=True)
class MATConfig(DefenseConfig):
    bank_size: int = 16
    steps: int = 2
    step_size: float | None = None
    meta_lr: float = 0.2
    universal: bool = True
    l1_sparsity: float = 0.99
    seed: int = 0

    def __post_init__(self) -> None:
        if self.bank_size < 1:
            raise ValueError(f"mat: bank_size must be >= 1, got {self.bank_size}")
        if self.steps < 1:
            raise ValueError(f"mat: steps must be >= 1, got {self.steps}")
        if not 0 < self.meta_lr <= 1:
            raise ValueError(f"mat: meta_lr must lie in (0, 1], got {self.meta_lr}")
        if self.step_size is not None and self.step_size <= 0:
            raise ValueError(f"mat: step_size must be > 0, got {self.step_size}")


@DEFENSES.register(
    "mat", help="REPTILE bank of universal perturbations, refined per batch (Metzen et al. 2021; K+1 passes)"
)
class MAT(Defense):
    """Meta adversarial training with a REPTILE-updated bank of universal perturbations."""

    name = "mat"
    config_class = MATConfig
    config: MATConfig
    multi_threat = True

    def __init__(self, threats: Any, **options: Any) -> None:
        super().__init__(threats, **options)
        self.bank: PerturbationBank | None = None

    def setup(self, model: nn.Module, device: torch.device, num_classes: int, input_shape: tuple[int, ...]) -> None:
        bank = PerturbationBank(self.threats, self.config.bank_size, tuple(int(s) for s in input_shape))
        gen = torch.Generator().manual_seed(self.config.seed)
        bank.initialise(gen)
        self.bank = bank.to(device)

    def modules(self) -> dict[str, nn.Module]:
        return {"bank": self.bank} if self.bank is not None else {}

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        bank = self.bank
        assert bank is not None
        t = sample_index(uniform(len(self.threats)), ctx.generator)
        j = sample_index(uniform(cfg.bank_size), ctx.generator)
        threat = self.threats[t]
        step = cfg.step_size if cfg.step_size is not None else default_step_size(threat, cfg.steps)
        with ctx.timed("attack"):
            u0 = bank.entry(t, j).to(x)
            if cfg.universal:
                refined = refine_universal(
                    model, x, y, u0, threat, steps=cfg.steps, step_size=step, l1_sparsity=cfg.l1_sparsity
                )
                x_adv = apply_universal(x, refined, threat.box)
            else:
                delta0 = project(u0.expand_as(x), x, threat)
                with attack_mode(model):
                    x_adv = pgd_steps(
                        model,
                        x,
                        y,
                        delta0,
                        threat=threat,
                        steps=cfg.steps,
                        step_size=step,
                        loss_fn=ce,
                        return_best=False,
                        l1_sparsity=cfg.l1_sparsity,
                    )
                refined = project_universal((x_adv - x).mean(dim=0, keepdim=True), threat)
            if ctx.world_size > 1:  # every replica moves the entry toward the mean refinement
                import torch.distributed as dist

                dist.all_reduce(refined)
                refined = refined / ctx.world_size
            bank.reptile_update(t, j, refined, cfg.meta_lr)
        logits = model(x_adv.detach())
        loss = ce(logits, y).mean()
        return loss, {
            "loss": float(loss.detach()),
            "acc": accuracy(logits, y),
            "threat": float(t),
        }
