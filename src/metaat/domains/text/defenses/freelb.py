"""Adversarial training in embedding space: FreeLB (Zhu, Cheng, Gan, Sun, Goldstein, Liu, ICLR 2020,
"FreeLB: Enhanced Adversarial Training for Natural Language Understanding") and, with
``accumulate=False``, PGD on the embeddings (Miyato, Dai, Goodfellow, ICLR 2017, "Adversarial Training
Methods for Semi-Supervised Text Classification", with Madry et al.'s K-step projected ascent).

The perturbation lives in the set ``emb:radius`` — a per-token L2 ball around the embedded tokens
(:class:`metaat.domains.text.threats.EmbeddingKind`) — not in the text: no substitution is made. Each
of ``steps`` ascent steps normalises the gradient per token and projects back onto the ball; FreeLB
trains on the mean loss over all ``steps`` iterates (its "free" multi-step average), PGD on the last.
The defense's threats (``syn:k`` / ``typo:k``) are the ones the loop monitors; they are not attacked.

``radius`` (default: calibrated) — ``radius_scale`` (0.25) times the median distance between a word's
embedding and its allowed synonyms' embeddings in the model at the first step, over the active
vocabulary: every token moves at most a quarter of a typical synonym swap at once, where ``syn:k``
moves ``k`` tokens by a whole swap.
Cost per example: FreeLB ``(3·steps − 1) / 2`` passes (each iterate's forward and backward feed the
update, and each ascent step's input gradient is one more backward through the model, because the loop
owns the parameter update); PGD ``steps`` (``steps − 1`` ascent passes, one update pass).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metaat.attacks.base import attack_mode
from metaat.defenses.base import DEFENSES, Defense, DefenseConfig, TrainContext, accuracy, check_steps
from metaat.domains.text.space import active_space
from metaat.models import unwrap
from metaat.threats import ThreatModel, project, random_init


@dataclasses.dataclass(frozen=True)
class FreeLBConfig(DefenseConfig):
    steps: int = 3
    radius: float | None = None
    radius_scale: float = 0.25
    step_size: float | None = None  # default: radius / 2 per step
    accumulate: bool = True

    def __post_init__(self) -> None:
        check_steps("freelb", self.steps, self.step_size)
        if self.radius is not None and not self.radius > 0:
            raise ValueError(f"defense freelb: radius must be > 0, got {self.radius!r}")
        if not self.radius_scale > 0:
            raise ValueError(f"defense freelb: radius_scale must be > 0, got {self.radius_scale!r}")


def synonym_radius(embedding: torch.Tensor, sample: int = 4000) -> float:
    """Median L2 distance between a vocabulary word's vector and each of its allowed synonyms' vectors
    (the first ``sample`` words that have synonyms)."""
    space = active_space()
    dists = []
    for i in range(2, len(space.vocab)):
        subs = space.substitutes(i)
        if len(subs):
            dists.append((embedding[torch.as_tensor(subs)] - embedding[i]).norm(dim=1))
            if len(dists) >= sample:
                break
    if not dists:
        raise ValueError("defense freelb: the vocabulary has no synonyms to calibrate radius on; pass radius=")
    return float(torch.cat(dists).median())


@DEFENSES.register("freelb", help="K-step adversarial training in embedding space (FreeLB; text)")
class FreeLB(Defense):
    """Per-token L2-ball perturbations of the embedded tokens, averaged over the ascent (FreeLB)."""

    name = "freelb"
    config_class = FreeLBConfig
    config: FreeLBConfig
    multi_threat = True
    discrete = True
    radius: float

    def __init__(self, threats: Any, **options: Any) -> None:
        super().__init__(threats, **options)
        self.radius = self.config.radius or 0.0

    def setup(self, model: nn.Module, device: torch.device, num_classes: int, input_shape: tuple[int, ...]) -> None:
        if not self.radius:
            with torch.no_grad():
                self.radius = self.config.radius_scale * synonym_radius(unwrap(model).embedding.weight.detach().cpu())  # type: ignore[union-attr,operator]

    def state_dict(self) -> dict[str, Any]:
        return {"radius": self.radius}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.radius = float(state.get("radius", self.radius))

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        threat = ThreatModel.parse(f"emb:{self.radius!r}")
        step = cfg.step_size or self.radius / 2
        emb = unwrap(model).embed(x)  # type: ignore[operator]
        delta = random_init(emb.detach(), threat, ctx.generator)
        losses = []
        for i in range(cfg.steps):
            delta.requires_grad_(True)
            last = i == cfg.steps - 1
            if cfg.accumulate or last:
                logits = model(x, embedded=emb + delta)
                loss = F.cross_entropy(logits, y)
                losses.append(loss)
                if last:
                    break
                (grad,) = torch.autograd.grad(loss, delta, retain_graph=True)
            else:
                with ctx.timed("attack"), attack_mode(model):
                    loss = F.cross_entropy(model(x, embedded=emb.detach() + delta), y)
                    (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                ascent = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                delta = project(delta.detach() + step * ascent, emb.detach(), threat)
        loss = torch.stack(losses).mean()
        return loss, {"loss": float(loss.detach()), "acc": accuracy(logits, y), "radius": self.radius}
