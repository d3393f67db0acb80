"""Held-out evaluation of a meta-pretrained attacker: how good is it on a task it never trained on?

For one held-out task (a frozen target model, evaluation points, a threat) and each number ``K`` of
adaptation steps (Adam ascent steps of a copy of the attacker on *training* batches of the held-out
dataset, never on the evaluation points), the attack success rate — the fraction of the target's
clean-correct evaluation points that the attack misclassifies — of:

* the learned attacker after ``K`` steps (``attacker_steps`` learned steps per example);
* metaat's PGD with the same number of target passes per example (random start);
* FGSM (one pass, no random start) and PGD-10 (random start);
* the reference attack, a callable passed in (:func:`apgd_reference`: the reference AutoAttack's
  APGD-CE, Croce & Hein 2020, for Lp threats; a domain threat needs its own, which the caller above
  :mod:`metaat.eval` supplies).

A *pass* is one forward+backward of the target on one example. The attack's passes per example are
stated for each row; the learned rows also state the adaptation's passes (paid once per task, on
``K × batch`` training points, not per attacked example).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

import metaat.attacks as attacks
from metaat.meta.generators import LearnedAttacker
from metaat.meta.pretrain import AdaptSettings, Task, adapt
from metaat.meta.rollout import attacker_rollout
from metaat.runtime import make_generator
from metaat.threats import NORMS, ThreatModel, random_init

Reference = Callable[[nn.Module, torch.Tensor, torch.Tensor, ThreatModel, int], tuple[torch.Tensor, int, str]]
"""``(model, x, y, threat, seed) -> (x_adv, passes per example, label)``."""

APGD_ITERATIONS = 100  # the reference package's APGD-CE iterations in its standard setting (1 restart)


def apgd_reference(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, seed: int
) -> tuple[torch.Tensor, int, str]:
    """The reference AutoAttack's APGD-CE (``pyautoattack``) for an Lp threat (signals run through its
    ``(B, C, 1, T)`` view); a domain threat raises ``ValueError`` (pass a domain reference instead)."""
    if threat.norm not in NORMS:
        raise ValueError(f"no built-in reference attack for {threat.norm} threats; pass one (reference=...)")
    attack = attacks.create("autoattack", threat=threat, version="custom", attacks=("apgd-ce",), seed=seed)
    return attack.perturb(model, x, y, make_generator(seed)), APGD_ITERATIONS, "AutoAttack APGD-CE"


def success_rate(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, clean_ok: torch.Tensor) -> float:
    """Fraction of the clean-correct points that ``x_adv`` misclassifies."""
    if not bool(clean_ok.any()):
        return 0.0
    with torch.no_grad():
        wrong = model(x_adv[clean_ok]).argmax(dim=1) != y[clean_ok]
    return float(wrong.float().mean())


def learned_attack(
    attacker: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, steps: int, random_start: bool, seed: int
) -> torch.Tensor:
    """``x + δ`` with δ from ``steps`` learned steps (the attacker's weights untouched)."""
    gen = make_generator(seed)
    delta0 = random_init(x, task.threat, gen) if random_start else torch.zeros_like(x)
    was_training = attacker.training
    attacker.eval()
    try:
        with torch.no_grad():  # no graph to φ; the input gradient inside enables its own
            rollout_attacker = cast(LearnedAttacker, attacker)  # any module with the attacker's forward
            delta = attacker_rollout(rollout_attacker, task.model, x, y, task.threat, delta0=delta0, steps=steps)
    finally:
        attacker.train(was_training)
    return (x + delta).clamp(*task.threat.box)


def baseline(name: str, task: Task, x: torch.Tensor, y: torch.Tensor, seed: int, **options: Any) -> torch.Tensor:
    attack = attacks.create(name, threat=task.threat, seed=seed, **options)
    return attack.perturb(task.model, x, y, make_generator(seed))


def evaluate_heldout_task(
    attacker: nn.Module,
    task: Task,
    x: torch.Tensor,
    y: torch.Tensor,
    adapt_batches: list[tuple[torch.Tensor, torch.Tensor]],
    cfg: AdaptSettings,
    adapt_steps: tuple[int, ...],
    *,
    seed: int = 0,
    reference: Reference | None = apgd_reference,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """The held-out table's rows for one task (success rates on its clean-correct points).

    ``adapt_batches`` are training batches of the task's dataset (at least ``max(adapt_steps)``):
    every ``K`` adapts a fresh copy of the pretrained attacker on the first ``K`` of them."""
    if len(adapt_batches) < max(adapt_steps):
        raise ValueError(f"{len(adapt_batches)} adaptation batches for up to {max(adapt_steps)} steps")
    model = task.model
    with torch.no_grad():
        clean_ok = model(x).argmax(dim=1) == y
    s = cfg.attacker_steps
    out: dict[str, Any] = {
        "task": task.name,
        "threat": str(task.threat),
        "points": int(x.shape[0]),
        "clean_correct": int(clean_ok.sum()),
        "clean_accuracy": float(clean_ok.float().mean()),
        "learned": {},
    }
    batch = int(adapt_batches[0][0].shape[0]) if adapt_batches else 0
    for k in adapt_steps:
        stream = iter(adapt_batches).__next__
        gen = make_generator(seed + 1)  # same random starts for every K
        fast = copy.deepcopy(attacker) if k == 0 else adapt(attacker, task, stream, cfg, gen, steps=k)[0]
        x_adv = learned_attack(fast, task, x, y, s, cfg.random_start, seed)
        out["learned"][str(k)] = {
            "success": success_rate(model, x_adv, y, clean_ok),
            "passes": s,
            "adapt_passes": k * (s + 1) * batch,
            "adapt_passes_per_point": round(k * (s + 1) * batch / max(1, x.shape[0]), 3),
        }
    rows = {
        "pgd_same": ("pgd", {"steps": s, "random_start": True}, s),
        "fgsm": ("fgsm", {}, 1),
        "pgd10": ("pgd", {"steps": 10, "random_start": True}, 10),
    }
    for key, (name, options, passes) in rows.items():
        out[key] = {
            "success": success_rate(model, baseline(name, task, x, y, seed, **options), y, clean_ok),
            "passes": passes,
        }
    if reference is None:
        out["reference"] = None
    else:
        try:
            x_ref, passes, label = reference(model, x, y, task.threat, seed)
            out["reference"] = {"success": success_rate(model, x_ref, y, clean_ok), "passes": passes, "label": label}
        except ValueError as err:
            out["reference"] = {"error": str(err).splitlines()[0]}
    learned_text = ", ".join(f"K={k} {100 * v['success']:.1f}" for k, v in out["learned"].items())
    log(
        f"held-out {task.name}: learned {learned_text}; PGD-{s} {100 * out['pgd_same']['success']:.1f}, "
        f"FGSM {100 * out['fgsm']['success']:.1f}, PGD-10 {100 * out['pgd10']['success']:.1f} (% success)"
    )
    return out
