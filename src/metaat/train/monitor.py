"""The per-epoch monitor: clean and PGD accuracy on a fixed held-out batch, and the guard against
catastrophic overfitting (Wong, Rice, Kolter 2020, "Fast is better than free: revisiting
adversarial training") that watches it.

The monitor is not part of the training cost (the loop pauses its meter around it) and is never a
robustness number: it uses metaat's PGD with a fixed seed so that epochs are comparable; ``metaat
eval`` gives the real figure.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from metaat.attacks import create as create_attack
from metaat.attacks.base import predictions
from metaat.runtime import derive_seed, make_generator
from metaat.train import distributed

EVAL_CHUNK = 250


def monitor_attack(threat: Any, steps: int) -> Any:
    """PGD-``steps`` for a continuous threat; for a set of discrete edits (text), the first of its
    kind's evaluation attacks (a search, not PGD)."""
    if threat.continuous:
        return create_attack("pgd", threat=threat, steps=steps)
    kind = threat.kind
    if kind is None or not kind.evaluation_attacks:
        raise ValueError(f"threat {threat} has no attack to monitor it with (its kind names no evaluation attack)")
    name, options = kind.evaluation_attacks[0]
    return create_attack(name, threat=threat, **dict(options))


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: tuple[Any, ...],
    *,
    steps: int = 20,
    seed: int = 0,
    info: distributed.DistInfo | None = None,
) -> dict[str, float]:
    """Clean accuracy and PGD-``steps`` accuracy per threat (and their union) on ``(x, y)``.

    The same PGD noise every call (fixed seed), so epochs are comparable. A point counts as robust
    only if it is also classified correctly when clean. Under DDP each rank takes a share and the
    counts are summed.
    """
    info = info or distributed.DistInfo()
    device = next(model.parameters()).device
    xs, ys = x[info.rank :: info.world_size], y[info.rank :: info.world_size]
    was_training = model.training
    model.eval()
    clean_ok = torch.zeros(len(ys), dtype=torch.bool)
    robust_ok = torch.zeros(len(threats), len(ys), dtype=torch.bool)
    try:
        for start in range(0, len(ys), EVAL_CHUNK):
            xb, yb = xs[start : start + EVAL_CHUNK].to(device), ys[start : start + EVAL_CHUNK].to(device)
            with torch.no_grad():
                clean_ok[start : start + len(yb)] = (predictions(model(xb)) == yb).cpu()
            for i, threat in enumerate(threats):
                attack = monitor_attack(threat, steps)
                gen = make_generator(derive_seed("eval", seed, i, start, scheme="sha256"))
                x_adv = attack(model, xb, yb, generator=gen)
                with torch.no_grad():
                    robust_ok[i, start : start + len(yb)] = (predictions(model(x_adv)) == yb).cpu()
    finally:
        model.train(was_training)
    robust_ok &= clean_ok
    counts = torch.cat([clean_ok.sum()[None], robust_ok.sum(dim=1), robust_ok.all(dim=0).sum()[None]]).double()
    counts = distributed.all_reduce_sum(counts, info)
    n = float(distributed.all_reduce_sum(torch.tensor([float(len(ys))], dtype=torch.float64), info))
    out = {"n": n, "clean": float(counts[0]) / n}
    for i, threat in enumerate(threats):
        out[f"robust/{threat}"] = float(counts[1 + i]) / n
    if len(threats) > 1:
        out["robust/union"] = float(counts[-1]) / n
    return out


def worst_robust(eval_metrics: dict[str, float]) -> float | None:
    """The lowest per-threat robust accuracy (what the overfitting guard watches)."""
    values = [v for k, v in eval_metrics.items() if k.startswith("robust/") and k != "robust/union"]
    return min(values) if values else None


@dataclasses.dataclass
class OverfitGuard:
    """Stops a run whose monitored PGD accuracy collapses, rolling the model back to its best epoch.

    Single-step defenses (``fast``) can overfit catastrophically: within an epoch the model learns to
    defeat FGSM while its PGD accuracy drops to zero. After each evaluated epoch :meth:`update`
    compares the worst per-threat robust accuracy with the best seen; a drop of more than ``drop``
    restores the weights of the last good epoch and reports the event (the loop then stops).
    """

    enabled: bool
    drop: float
    best_robust: float | None = None
    last_good: dict[str, torch.Tensor] | None = None
    last_good_epoch: int | None = None

    def update(self, model: nn.Module, epoch: int, eval_metrics: dict[str, float]) -> dict[str, Any] | None:
        """Watch epoch ``epoch`` (0-based); the ``catastrophic_overfitting`` event when it rolled back."""
        if not self.enabled:
            return None
        robust = worst_robust(eval_metrics)
        if robust is None:
            return None
        if self.best_robust is not None and self.best_robust - robust > self.drop:
            if self.last_good is not None:
                model.load_state_dict(self.last_good)
            return {
                "type": "event",
                "event": "catastrophic_overfitting",
                "epoch": epoch + 1,
                "robust": robust,
                "best_robust": self.best_robust,
                "rolled_back_to_epoch": self.last_good_epoch,
            }
        self.best_robust = robust if self.best_robust is None else max(self.best_robust, robust)
        self.last_good = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        self.last_good_epoch = epoch + 1
        return None
