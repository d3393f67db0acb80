"""Free adversarial training with a learned start: the ``replays`` option of the ``metaat`` defense.

"Free" adversarial training (Shafahi, Najibi, Ghiasi, Xu, Dickerson, Studer, Davis, Taylor & Goldstein
2019, "Adversarial Training for Free!", NeurIPS; Algorithm 1 and the authors' ``main_free.py``)
replays each minibatch m times. One backward pass of ``L(f_θ(x + δ), y)`` yields both the parameter
gradient, which updates θ, and the input gradient, which moves δ one FGSM step for the next replay
(``δ ← clip_ε(δ + ε·sign ∇_δ L)``), so the attack's steps cost no pass of their own. δ persists across
the replays (in the paper also across minibatches), and the paper divides the number of epochs by m
so that the number of updates stays that of natural training. YOPO (Zhang, Zhang, Lu, Zhu & Dong
2019, "You Only Propagate Once", NeurIPS) takes the idea further by reusing the first layer's
gradient only; it needs a model split at its first layer and is not implemented here.

Here, with ``replays = m >= 2``:

* the training loop makes one update per batch it hands the defense, so the m replays are m
  consecutive loop steps: the first batch of each group of m is held and trained on m times, and the
  loop's other m − 1 batches of the group go unused. A loop epoch thus trains on 1/m of the data, each
  minibatch m times: the paper's schedule (E/m epochs at m replays = E epochs' worth of updates).
  A group starts at each epoch and at a batch of another size (an epoch's last, short batch);
* a group's start is metaat's: the learned attacker's ``attacker_steps`` steps from a random start
  (with ``learned_start=false``, plain PGD steps of the same cost), then ``refine_steps`` (or
  ``refine_by_norm``) PGD steps; it replaces the paper's carried-over δ. The threat is drawn once per
  group;
* every replay trains on ``x + δ``; the training backward hands ``∇_δ L`` to a hook that moves δ one
  step of ``refine_step_size · eps`` along the threat's steepest ascent (the sign for L∞, as in the
  paper) and projects it onto the ball ∩ box. With the consistency term, ``L`` is the whole training
  loss;
* the attacker is taught to land where the replays ended, ``||δ_φ − δ_end||² / ||δ_end||²``, when its
  group closes (at the start of the next one). δ_φ is recomputed from the inputs it was made from (its
  start and the input gradients it saw; the attacker does not change within a group), so this costs no
  pass through the target.

Passes through the target per loop example: ``(attacker_steps + refine) / m`` for the start, plus 1 per
replay (2 with the consistency term) — 2.25 at m = 4 with consistency, 1.25 without; the loop's cost
meter counts each replay as a training example. Wall time: the attacker's imitation step when a group
closes and each replay's δ step (inside the loop's backward) run outside the defense's attack timer,
so the loop books them as update time. The held group is checkpointed (module ``replay``),
so a run stopped mid-group resumes exactly; under DDP the loop saves module tensors from rank 0 only,
so the other ranks start a fresh group on resume.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from metaat.defenses.base import TrainContext
from metaat.meta.generators import LearnedAttacker
from metaat.meta.rollout import input_gradient
from metaat.meta.sampling import sample_index
from metaat.threats import ThreatModel, project, random_init, threat_ascent


class ReplayOptions(Protocol):
    """The options of :class:`~metaat.defenses.metaat.MetaATConfig` that replays read."""

    @property
    def replays(self) -> int: ...
    @property
    def attacker_steps(self) -> int: ...
    @property
    def random_start(self) -> bool: ...
    @property
    def refine_step_size(self) -> float: ...
    @property
    def l1_sparsity(self) -> float: ...


class Replaying(Protocol):
    """What the replays need from the ``metaat`` defense."""

    threats: tuple[ThreatModel, ...]
    attacker: LearnedAttacker | None
    replay: ReplayState | None

    @property
    def config(self) -> ReplayOptions: ...

    def threat_probabilities(self) -> list[float]: ...
    def refine_steps_for(self, threat: ThreatModel) -> int: ...
    def sparse_start(self, delta: torch.Tensor, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor: ...
    def pgd_from(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, threat: ThreatModel, steps: int
    ) -> torch.Tensor: ...
    def imitate(
        self, delta: torch.Tensor, x: torch.Tensor, x_adv: torch.Tensor, weight: float, ctx: TrainContext
    ) -> float: ...


class ReplayState(nn.Module):
    """The minibatch being replayed: ``x`` ``(B, ...)``, ``y`` ``(B,)``, ``delta`` (the perturbation of
    the next replay), and the attacker's inputs ``delta0`` and ``grads`` ``(attacker_steps, B, ...)``.
    Buffers take the shapes they are loaded with (a group's batch size varies)."""

    NAMES = ("x", "y", "delta", "delta0", "grads")
    x: torch.Tensor
    y: torch.Tensor
    delta: torch.Tensor
    delta0: torch.Tensor
    grads: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        for name in self.NAMES:
            self.register_buffer(name, torch.empty(0))
        self.replayed = 0  # replays made on the held batch; 0: none held
        self.threat = 0  # index of the group's threat
        self.last_step = -1  # the loop's step in its epoch at the last call (a smaller one: a new epoch)

    def clear(self) -> None:
        for name in self.NAMES:
            setattr(self, name, torch.empty(0))
        self.replayed = 0

    def checksum(self) -> float:
        return float(self.x.double().sum()) if self.replayed else 0.0

    def extra(self) -> dict[str, Any]:
        """JSON-able counters, saved by the defense's ``state_dict`` (one per rank)."""
        return {
            "replayed": self.replayed,
            "threat": self.threat,
            "last_step": self.last_step,
            "checksum": self.checksum(),
        }

    def load_extra(self, state: dict[str, Any]) -> None:
        """Restore the counters; a rank whose held batch is not the one loaded (DDP) starts afresh."""
        self.replayed, self.threat = int(state.get("replayed", 0)), int(state.get("threat", 0))
        self.last_step = int(state.get("last_step", -1))
        if self.replayed and (self.x.numel() == 0 or self.checksum() != state.get("checksum")):
            self.clear()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        for name in self.NAMES:
            key = prefix + name
            if key in state_dict:
                setattr(self, name, state_dict[key].detach().clone())
            else:
                missing_keys.append(key)


def replay_step(
    defense: Replaying,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ctx: TrainContext,
    metrics: dict[str, float],
) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """``(x, y, threat index, x + δ)`` to train on at this loop step: the held minibatch's next replay,
    or a new group opened on ``x``. ``δ`` carries a hook that makes the training backward's input
    gradient the next replay's attack step."""
    state = defense.replay
    assert state is not None
    new_epoch = ctx.step < state.last_step
    state.last_step = ctx.step
    if state.replayed in (0, defense.config.replays) or new_epoch or state.x.shape != x.shape:
        close_group(defense, ctx, metrics)
        open_group(defense, model, x, y, ctx)
    elif state.x.device != x.device:  # restored from a checkpoint onto another device
        for name in state.NAMES:
            setattr(state, name, getattr(state, name).to(x.device))
    threat = defense.threats[state.threat]
    held_x, delta = state.x, state.delta
    step = defense.config.refine_step_size * threat.eps
    sparsity = defense.config.l1_sparsity

    def next_step(grad: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            direction = threat_ascent(grad, threat, x_adv=held_x + delta, l1_sparsity=sparsity)
            state.delta = project(delta + step * direction, held_x, threat)
        return grad

    d = delta.detach().clone().requires_grad_(True)
    d.register_hook(next_step)
    state.replayed += 1
    metrics.update(threat=float(state.threat), replay=float(state.replayed))
    return held_x, state.y, state.threat, held_x + d


def open_group(defense: Replaying, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> None:
    """Hold ``(x, y)`` and its start: a drawn threat, the learned attacker's steps, the PGD refinement."""
    cfg, state, attacker = defense.config, defense.replay, defense.attacker
    assert state is not None
    t = sample_index(defense.threat_probabilities(), ctx.generator)
    threat = defense.threats[t]
    with ctx.timed("attack"):
        delta0 = random_init(x, threat, ctx.generator) if cfg.random_start else torch.zeros_like(x)
        delta, grads = delta0, []
        refine = defense.refine_steps_for(threat)
        if attacker is not None:
            attacker.train()
            with torch.no_grad():  # δ_φ is recomputed with its graph when the group closes
                for _ in range(cfg.attacker_steps):
                    grads.append(input_gradient(model, x, y, delta))
                    delta = attacker(x, delta, grads[-1], threat)
                delta = defense.sparse_start(delta, x, threat)
        else:  # plain PGD steps where the learned ones would go, at the same cost
            refine += cfg.attacker_steps
        if refine > 0:
            delta = defense.pgd_from(model, x, y, delta, threat, refine) - x
    state.x, state.y, state.delta, state.delta0 = x.detach(), y.detach(), delta.detach(), delta0.detach()
    state.grads = torch.stack(grads) if grads else torch.empty(0, device=x.device)
    state.threat, state.replayed = t, 0


def close_group(defense: Replaying, ctx: TrainContext, metrics: dict[str, float]) -> None:
    """Teach the attacker where the held group's replays ended, then let the group go."""
    state, attacker = defense.replay, defense.attacker
    assert state is not None
    if state.replayed and attacker is not None:
        threat = defense.threats[state.threat]
        delta = state.delta0
        for grad in state.grads:
            delta = attacker(state.x, delta, grad, threat)
        delta = defense.sparse_start(delta, state.x, threat)
        metrics["refine_distill"] = defense.imitate(delta, state.x, state.x + state.delta, 1.0, ctx)
    state.clear()
