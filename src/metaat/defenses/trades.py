"""TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan 2019, "Theoretically Principled Trade-off
between Robustness and Accuracy", ICML).

Loss: ``CE(f(x), y) + beta · KL(f(x) || f(x'))`` where ``x'`` maximises the KL term inside the
threat set — K projected steepest-ascent steps on the KL from ``x + 0.001·N(0, I)``, the clean
prediction held fixed during the attack.

Threat: one of linf / l2 / l1. Options: ``beta`` (6.0, the paper's choice), ``steps`` (10),
``step_size`` (default 2.5·eps/steps), ``init_std`` (0.001), ``l1_sparsity`` (0.99).
Cost per example: 1 forward for the attack's clean target, K forward+backward attack steps, then
clean and adversarial forward+backward for the loss — ``passes_per_example`` = K + 2.5.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from metaat.attacks.base import attack_mode
from metaat.attacks.pgd import pgd_steps
from metaat.defenses.base import DEFENSES, Defense, DefenseConfig, TrainContext, accuracy, check_steps
from metaat.losses import trades_kl
from metaat.threats import ThreatModel, default_step_size, project


@dataclasses.dataclass(frozen=True)
class TradesConfig(DefenseConfig):
    beta: float = 6.0
    steps: int = 10
    step_size: float | None = None
    init_std: float = 0.001
    l1_sparsity: float = 0.99

    def __post_init__(self) -> None:
        check_steps("trades", self.steps, self.step_size)
        if not self.beta >= 0:
            raise ValueError(f"defense trades: beta must be >= 0, got {self.beta!r}")
        if not self.init_std >= 0:
            raise ValueError(f"defense trades: init_std must be >= 0, got {self.init_std!r}")


def trades_example(
    model: nn.Module,
    x: torch.Tensor,
    threat: ThreatModel,
    generator: torch.Generator,
    cfg: TradesConfig,
) -> torch.Tensor:
    """The KL-maximising ``x'`` of TRADES: ``cfg.steps`` forward+backward passes plus one forward."""
    with attack_mode(model):
        with torch.no_grad():
            clean_logits = model(x)
        noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device, x.dtype)
        delta0 = project(cfg.init_std * noise, x, threat)
        step = cfg.step_size if cfg.step_size is not None else default_step_size(threat, cfg.steps)
        # pgd_steps hands its "labels" to the loss: here they are the clean logits (KL target).
        x_adv = pgd_steps(
            model,
            x.detach(),
            clean_logits,
            delta0,
            threat=threat,
            steps=cfg.steps,
            step_size=step,
            loss_fn=trades_kl,
            return_best=False,
            l1_sparsity=cfg.l1_sparsity,
        )
    return x_adv.detach()


@DEFENSES.register("trades", help="TRADES: clean CE + beta·KL(clean || adversarial) (Zhang et al. 2019)")
class Trades(Defense):
    """Clean cross-entropy plus ``beta`` times the KL between clean and adversarial predictions."""

    name = "trades"
    config_class = TradesConfig
    config: TradesConfig

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        with ctx.timed("attack"):
            x_adv = trades_example(model, x, self.threats[0], ctx.generator, self.config)
        logits_clean = model(x)
        logits_adv = model(x_adv)
        natural = F.cross_entropy(logits_clean, y)
        robust = trades_kl(logits_adv, logits_clean).mean()
        loss = natural + self.config.beta * robust
        return loss, {
            "loss": float(loss.detach()),
            "acc": accuracy(logits_adv, y),
            "clean_acc": accuracy(logits_clean, y),
            "kl": float(robust.detach()),
        }
