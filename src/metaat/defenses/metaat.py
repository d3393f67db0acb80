"""metaat: the library's own multi-threat recipe — a threat-conditioned learned attacker takes the
first step and a few PGD steps refine it, on one sampled threat per batch; adaptive threat sampling
with an L1 prior, and a consistency loss.

Threat: several Lp threats (linf / l2 / l1), one per batch. Parts, each switchable:

* **inner maximisation**: from a random start (Wong et al. 2020, "Fast is better than free"),
  ``attacker_steps`` + ``refine_steps`` PGD steps (Madry et al. 2018) of ``refine_step_size · eps``
  (final iterate); ``refine_by_norm`` (e.g. ``{linf: 1, l1: 6}``) sets the refinement per norm or
  per threat kind of a domain (e.g. ``{drift: 10}`` for the sensors' drift set);
* **learned warm start** (``learned_start``; the learned attacker of L2L, Jiang et al. 2021,
  "Learning to Defend by Learning to Attack", threat-conditioned as in :mod:`metaat.meta`): one
  attacker for every threat takes the first ``attacker_steps`` steps instead, optionally from a
  meta-pretrained attacker (``attacker_path``); the PGD refinement continues from its output and the
  attacker is taught to land where the refinement ended (``||δ_φ − δ_refined||² / ||δ_refined||²``,
  no extra pass). With ``refine_steps=0`` the attacker's output is trained on directly and the
  attacker learns by gradient ascent on the classifier's own loss at no extra pass (L2L's inner max);
* **adaptive threat sampling** (Croce & Hein 2022, "Adversarial Robustness against Multiple and
  Single lp-Threat Models via Quick Fine-Tuning of Robust Classifiers"; ``adaptive``): threats whose
  running robust accuracy on their own training batches is lowest are drawn more often;
  ``l1_weight`` multiplies L1's share on top of either sampler (few-step L1 attacks are weak, so
  L1's training-time accuracy overstates its robustness and an unweighted sampler draws it least);
* **consistency** (MNG-AC, Madaan, Shin, Hwang 2021, "Learning to Generate Noise for Multi-Attack
  Robustness"; ``consistency`` = β): ``β·JS(p_clean, p_adv)``, one more forward+backward on the
  clean batch;
* **free replays** (``replays`` = m >= 2; "free" adversarial training, Shafahi et al. 2019, "Adversarial
  Training for Free!"): each minibatch is trained on m times and the backward pass that updates the
  model also gives the input gradient of the next attack step, so the steps after the start cost no
  pass; in :mod:`metaat.defenses.metaat_free`;
* **sparse learned L1 step** (``l1_topk`` = k >= 1): the learned attacker's L1 perturbation keeps its
  k largest coordinates, scaled to the L1 sphere and projected (:mod:`metaat.meta.sparse`).

Passes through the target per example: 1 (update) + ``attacker_steps`` + ``refine_steps`` + 1 with
consistency — 6 at the defaults; the training loop's cost meter counts them. The options
``pgd_every``, ``pgd_steps``, ``distill``, ``lookahead`` and ``lookahead_lr`` add an occasional
full PGD batch; they are kept for the presets that use them and live in
:mod:`metaat.defenses.metaat_pgd`. With ``replays`` = m the passes per loop step are
``(attacker_steps + refine_steps) / m`` + 1 (+ 1 with consistency).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from metaat.attacks.base import attack_mode
from metaat.attacks.pgd import pgd_steps
from metaat.defenses.base import DEFENSES, Defense, DefenseConfig, TrainContext, accuracy
from metaat.defenses.l2l import build_attacker
from metaat.defenses.metaat_free import ReplayState, replay_step
from metaat.defenses.metaat_pgd import pgd_batch, pgd_batch_due
from metaat.losses import ce, consistency_js
from metaat.meta.generators import LearnedAttacker
from metaat.meta.io import generator_record
from metaat.meta.rollout import attacker_rollout, route_ascent
from metaat.meta.sampling import adaptive_probabilities, ema, reweight, sample_index, uniform
from metaat.meta.sparse import sparse_l1_step
from metaat.threats import NORMS, ThreatModel, random_init, threat_kinds


@dataclasses.dataclass(frozen=True)
class MetaATConfig(DefenseConfig):
    attacker_steps: int = 1
    random_start: bool = True
    attacker_lr: float = 1e-3
    hidden: int = 32
    depth: int = 3
    attacker_path: str | None = None
    pgd_every: int = 0
    pgd_steps: int = 5
    l1_sparsity: float = 0.99
    adaptive: bool = True
    adaptive_floor: float = 0.1
    l1_weight: float = 2.0
    ema_decay: float = 0.9
    distill: float = 1.0
    consistency: float = 1.0
    lookahead: bool = False
    lookahead_lr: float = 0.01
    refine_steps: int = 3
    refine_by_norm: dict[str, int] | None = None
    refine_step_size: float = 0.5
    learned_start: bool = True
    replays: int = 1
    l1_topk: int = 0

    def __post_init__(self) -> None:
        for name in ("attacker_steps", "pgd_steps", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"metaat: {name} must be >= 1, got {getattr(self, name)}")
        if self.refine_steps < 0:
            raise ValueError(f"metaat: refine_steps must be >= 0 (0 = off), got {self.refine_steps}")
        for norm, steps in (self.refine_by_norm or {}).items():
            if norm not in NORMS and norm not in threat_kinds():
                raise ValueError(
                    f"metaat: refine_by_norm has unknown norm {norm!r}; valid norms: {', '.join(threat_kinds())}"
                )
            if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
                raise ValueError(f"metaat: refine_by_norm[{norm!r}] must be an integer >= 0, got {steps!r}")
        if not 0 < self.refine_step_size <= 1:
            raise ValueError(
                f"metaat: refine_step_size must lie in (0, 1] (a fraction of eps), got {self.refine_step_size}"
            )
        if self.pgd_every < 0:
            raise ValueError(f"metaat: pgd_every must be >= 0 (0 = never), got {self.pgd_every}")
        for name in ("attacker_lr", "lookahead_lr", "adaptive_floor", "l1_weight"):
            if not 0 < getattr(self, name) < math.inf:  # NaN fails too
                raise ValueError(f"metaat: {name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"metaat: ema_decay must lie in [0, 1), got {self.ema_decay}")
        for name in ("consistency", "distill"):
            if getattr(self, name) < 0:
                raise ValueError(f"metaat: {name} must be >= 0, got {getattr(self, name)}")
        if self.lookahead and self.pgd_every == 0:
            raise ValueError("metaat: lookahead needs PGD batches (pgd_every >= 1)")
        if self.lookahead and not self.learned_start:
            raise ValueError("metaat: lookahead meta-trains the learned attacker; it needs learned_start=true")
        if self.replays < 1:
            raise ValueError(
                f"metaat: replays must be an integer >= 1 (1: each batch trains once; m >= 2: each minibatch is "
                f"replayed m times, free adversarial training), got {self.replays}"
            )
        if self.replays > 1 and self.pgd_every > 0:
            raise ValueError(
                f"metaat: replays >= 2 needs pgd_every=0 (PGD batches are not replayed), got pgd_every={self.pgd_every}"
            )
        if self.l1_topk < 0:
            raise ValueError(
                f"metaat: l1_topk must be an integer >= 0 (0: off; k >= 1: the learned L1 step keeps k "
                f"coordinates), got {self.l1_topk}"
            )
        if self.l1_topk > 0 and (not self.learned_start or self.pgd_every > 0):
            raise ValueError(
                "metaat: l1_topk makes the learned attacker's L1 step sparse; it needs learned_start=true "
                f"and pgd_every=0 (got learned_start={self.learned_start}, pgd_every={self.pgd_every})"
            )

    def to_dict(self) -> dict[str, Any]:
        """Every option, except the ones added after the presets (:data:`LATER_OPTIONS`) while they hold
        the value that means what the recipe did before they existed: a recipe with those levers off
        reads exactly as it did, in its preset, its records and its checkpoints."""
        out = super().to_dict()
        return {k: v for k, v in out.items() if not (k in LATER_OPTIONS and v == LATER_OPTIONS[k])}


LATER_OPTIONS: dict[str, Any] = {"replays": 1, "l1_topk": 0}
"""Options added to ``metaat`` after its presets, each with its off value (what a missing key means)."""


@DEFENSES.register(
    "metaat",
    help="metaat's recipe: learned attacker + 3 PGD steps on an adaptively sampled threat, JS consistency (6 passes)",
)
class MetaAT(Defense):
    """metaat's recipe: a learned attacker's step refined by a few PGD steps on an adaptively sampled threat."""

    name = "metaat"
    config_class = MetaATConfig
    config: MetaATConfig
    multi_threat = True

    def __init__(self, threats: Any, **options: Any) -> None:
        super().__init__(threats, **options)
        if self.config.l1_topk > 0 and not any(t.norm == "l1" for t in self.threats):
            raise ValueError(
                f"metaat: l1_topk shapes the learned L1 step; no l1 threat among {', '.join(map(str, self.threats))}"
            )
        self.replay = ReplayState() if self.config.replays > 1 else None
        self.attacker: LearnedAttacker | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.batches = 0
        n = len(self.threats)
        self.acc_learned: list[float | None] = [None] * n
        self.acc_pgd: list[float | None] = [None] * n

    # -- state --------------------------------------------------------------------------------
    def setup(self, model: nn.Module, device: torch.device, num_classes: int, input_shape: tuple[int, ...]) -> None:
        cfg = self.config
        if not cfg.learned_start:
            return  # no learned attacker: nothing to build, train or checkpoint
        self.attacker = build_attacker(
            int(input_shape[0]), cfg.hidden, cfg.depth, cfg.attacker_path, device, rank=len(input_shape) - 1
        )
        self.optimizer = torch.optim.Adam(self.attacker.parameters(), lr=cfg.attacker_lr)

    def modules(self) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {"attacker": self.attacker} if self.attacker is not None else {}
        if self.replay is not None:
            out["replay"] = self.replay
        return out

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"attacker": self.optimizer} if self.optimizer is not None else {}

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "batches": self.batches,
            "threats": [str(t) for t in self.threats],
            "acc_learned": list(self.acc_learned),
            "acc_pgd": list(self.acc_pgd),
        }
        if self.attacker is not None:
            out["attacker"] = generator_record(self.attacker)
        if self.replay is not None:
            out["replay"] = self.replay.extra()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("threats")
        if saved is not None and saved != [str(t) for t in self.threats]:
            raise ValueError(
                f"metaat: checkpoint trained on threats {saved}, this run has {[str(t) for t in self.threats]}"
            )
        self.batches = int(state.get("batches", 0))
        n = len(self.threats)
        self.acc_learned = list(state.get("acc_learned", [None] * n))
        self.acc_pgd = list(state.get("acc_pgd", [None] * n))
        if self.replay is not None:
            self.replay.load_extra(state.get("replay", {}))

    def threat_probabilities(self) -> list[float]:
        """Sampling distribution over the training threats for the next batch."""
        cfg = self.config
        if not cfg.adaptive:
            probs = uniform(len(self.threats))
        else:
            acc = self.acc_pgd if cfg.pgd_every > 0 else self.acc_learned
            probs = adaptive_probabilities(acc, cfg.adaptive_floor)
        return reweight(probs, [cfg.l1_weight if t.norm == "l1" else 1.0 for t in self.threats])

    def refine_steps_for(self, threat: ThreatModel) -> int:
        """Refinement steps for a batch of ``threat``: ``refine_by_norm[norm]`` if given, else ``refine_steps``."""
        by_norm = self.config.refine_by_norm or {}
        return int(by_norm.get(threat.norm, self.config.refine_steps))

    def sparse_start(self, delta: torch.Tensor, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        """The learned step's output, cut to its ``l1_topk`` largest coordinates on an L1 batch."""
        k = self.config.l1_topk
        return sparse_l1_step(delta, x, threat, k) if k > 0 and threat.norm == "l1" else delta

    # -- one batch ----------------------------------------------------------------------------
    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        if self.replay is not None:
            metrics: dict[str, float] = {"pgd_batch": 0.0}
            x, y, t, x_adv = replay_step(self, model, x, y, ctx, metrics)
            return self.train_loss(model, x, x_adv, y, t, False, self.threat_probabilities(), metrics)
        attacker, opt = self.attacker, self.optimizer
        probs = self.threat_probabilities()
        t = sample_index(probs, ctx.generator)
        threat = self.threats[t]
        use_pgd = pgd_batch_due(cfg, self.batches)
        self.batches += 1
        metrics = {"threat": float(t), "pgd_batch": float(use_pgd)}
        with ctx.timed("attack"):
            delta0 = random_init(x, threat, ctx.generator) if cfg.random_start or use_pgd else torch.zeros_like(x)
            if attacker is not None:
                attacker.train()
            if use_pgd:
                x_adv = pgd_batch(self, model, x, y, delta0, threat, ctx, metrics)
            elif attacker is None or opt is None:
                # The default: plain PGD steps where the learned ones would go, at the same cost.
                steps = cfg.attacker_steps + self.refine_steps_for(threat)
                x_adv = self.pgd_from(model, x, y, delta0, threat, steps)
            else:
                delta = attacker_rollout(attacker, model, x, y, threat, delta0=delta0, steps=cfg.attacker_steps)
                delta = self.sparse_start(delta, x, threat)
                refine = self.refine_steps_for(threat)
                if refine > 0:
                    x_adv = self._refine(model, x, y, delta, threat, refine, ctx, metrics)
                else:
                    # The classifier's backward also trains the attacker (gradient ascent, no extra pass).
                    x_adv = x + route_ascent(delta, opt, sync=ctx.sync_gradients)
        return self.train_loss(model, x, x_adv, y, t, use_pgd, probs, metrics)

    def train_loss(
        self,
        model: nn.Module,
        x: torch.Tensor,
        x_adv: torch.Tensor,
        y: torch.Tensor,
        t: int,
        use_pgd: bool,
        probs: list[float],
        metrics: dict[str, float],
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss the model descends on ``x_adv`` (and ``x`` for consistency); updates the sampler."""
        cfg = self.config
        b = x.shape[0]
        if cfg.consistency > 0:
            logits = model(torch.cat([x_adv, x]))
            adv, clean = logits[:b], logits[b:]
            js = consistency_js(clean, adv).mean()
            loss = ce(adv, y).mean() + cfg.consistency * js
            metrics["js"] = float(js.detach())
        else:
            adv = model(x_adv)
            loss = ce(adv, y).mean()

        acc = accuracy(adv, y)
        store = self.acc_pgd if use_pgd else self.acc_learned
        store[t] = ema(store[t], acc, cfg.ema_decay)
        metrics.update(loss=float(loss.detach()), acc=acc)
        metrics.update({f"p/{threat_i}": p for threat_i, p in zip(self.threats, probs, strict=True)})
        return loss, metrics

    def _refine(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        delta: torch.Tensor,
        threat: ThreatModel,
        steps: int,
        ctx: TrainContext,
        metrics: dict[str, float],
    ) -> torch.Tensor:
        """``steps`` PGD steps of ``refine_step_size · eps`` from the attacker's output (a learned
        warm start); the attacker is then taught to land where the refinement ended (no extra pass)."""
        x_adv = self.pgd_from(model, x, y, delta.detach(), threat, steps)
        metrics["refine_distill"] = self.imitate(delta, x, x_adv, 1.0, ctx)
        return x_adv

    def pgd_from(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, threat: ThreatModel, steps: int
    ) -> torch.Tensor:
        """``steps`` PGD steps of ``refine_step_size · eps`` from ``delta`` (final iterate, detached)."""
        cfg = self.config
        with attack_mode(model):
            return pgd_steps(
                model,
                x,
                y,
                delta,
                threat=threat,
                steps=steps,
                step_size=cfg.refine_step_size * threat.eps,
                loss_fn=ce,
                return_best=False,
                l1_sparsity=cfg.l1_sparsity,
            ).detach()

    def imitate(
        self, delta: torch.Tensor, x: torch.Tensor, x_adv: torch.Tensor, weight: float, ctx: TrainContext
    ) -> float:
        """One attacker step on ``weight · ||δ_φ − δ_target||² / ||δ_target||²``; returns the loss."""
        attacker, opt = self.attacker, self.optimizer
        assert attacker is not None and opt is not None
        target = (x_adv - x).flatten(1)
        error = (delta.flatten(1) - target).pow(2).sum(1) / target.pow(2).sum(1).clamp_min(1e-12)
        loss = error.mean()
        opt.zero_grad(set_to_none=True)
        (weight * loss).backward()
        ctx.sync_gradients(list(attacker.parameters()))
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())
