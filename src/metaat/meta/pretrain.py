"""Meta-pretraining of the learned attacker across a distribution of tasks (first-order MAML /
REPTILE: Finn, Abbeel, Levine 2017; Nichol, Achiam, Schulman 2018, "On First-Order Meta-Learning
Algorithms").

A *task* is (target model, threat). Target models are small classifiers of several architectures,
trained briefly here — by standard training and by cheap multi-threat adversarial training (FGSM
with random start on a random threat per batch) — and frozen at several training stages, so the
attacker meets weak and robust, early and late models. Threats are the ones given (any Lp).

One meta-iteration samples a task, adapts a copy of the attacker φ with ``inner_steps`` Adam
steps of gradient *ascent* on the target's loss, then

* REPTILE: ``φ ← φ + meta_lr · (φ_task − φ)``;
* FOMAML: ``φ ← Adam(φ, ∇_φ' L_query)`` — the first-order gradient at the adapted weights on a
  fresh query batch.

The result is saved with :func:`metaat.meta.save_generator` (safetensors + JSON, with the
configuration and a small evaluation — learned attack vs FGSM on held-out batches — as metadata).
It attacks unseen models (``metaat attack --attack learned --generator DIR``) and warm-starts
``l2l`` / ``metaat`` training (``attacker_path``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

import torch
from torch import nn

from metaat.attacks.base import attack_mode
from metaat.losses import ce
from metaat.meta.generators import AttackerSpec, LearnedAttacker
from metaat.meta.io import save_generator
from metaat.meta.rollout import attacker_rollout, input_gradient
from metaat.runtime import check_out_dir
from metaat.threats import ThreatModel, parse_threats, project, random_init, threat_ascent


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    data: str = "fashion-mnist"
    data_dir: str | None = None
    n: int = 5000
    threats: tuple[str, ...] = ("linf:0.1", "l2:1.5", "l1:10")
    models: tuple[str, ...] = ("mlp", "cnn-small")
    target_kinds: tuple[str, ...] = ("standard", "fast")
    stages: tuple[int, ...] = (20, 100, 300)
    target_lr: float = 1e-3
    algorithm: str = "reptile"
    meta_iters: int = 200
    inner_steps: int = 4
    inner_lr: float = 1e-3
    meta_lr: float = 0.5
    batch_size: int = 128
    attacker_steps: int = 1
    random_start: bool = True
    hidden: int = 32
    depth: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        parse_threats(list(self.threats))
        if self.algorithm not in ("reptile", "fomaml"):
            raise ValueError(f"algorithm must be 'reptile' or 'fomaml', got {self.algorithm!r}")
        bad = sorted(set(self.target_kinds) - {"standard", "fast"})
        if bad or not self.target_kinds:
            raise ValueError(
                f"target_kinds must be a non-empty subset of standard, fast; got {list(self.target_kinds)}"
            )
        if not self.models:
            raise ValueError("at least one target model architecture is required")
        if not self.stages or any(s < 0 for s in self.stages) or list(self.stages) != sorted(set(self.stages)):
            raise ValueError(f"stages must be increasing, distinct and >= 0; got {list(self.stages)}")
        for name in ("n", "meta_iters", "inner_steps", "batch_size", "attacker_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("inner_lr", "meta_lr", "target_lr"):
            if not 0 < getattr(self, name) < math.inf:  # NaN fails too
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Task:
    name: str
    model: nn.Module
    threat: ThreatModel


def _batches(n: int, size: int, generator: torch.Generator) -> Any:
    while True:
        yield from torch.randperm(n, generator=generator).split(size)


def fgsm_delta(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, delta0: torch.Tensor
) -> torch.Tensor:
    """One full-budget steepest-ascent step from ``delta0`` (FGSM / FGM / sparse L1), projected."""
    grad = input_gradient(model, x, y, delta0)
    step = threat_ascent(grad, threat, x_adv=x + delta0)
    return project(delta0 + threat.eps * step, x, threat)


def train_target(
    arch: str,
    kind: str,
    stages: tuple[int, ...],
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    threats: list[ThreatModel] | tuple[ThreatModel, ...],
    generator: torch.Generator,
    *,
    lr: float = 1e-3,
    batch_size: int = 128,
) -> list[tuple[int, nn.Module]]:
    """Train one ``arch`` by ``kind`` (``standard`` CE, or ``fast``: FGSM with random start on a random
    threat per batch) and freeze a copy at every stage: ``[(stage, frozen model), ...]``."""
    from metaat.models import create  # models are data for the meta-learner; built on demand

    c, size = x.shape[1], x.shape[-1]
    model = create(arch, num_classes=num_classes, in_channels=c, image_size=size).to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batches = _batches(x.shape[0], batch_size, generator)
    done = 0
    frozen_copies: list[tuple[int, nn.Module]] = []
    for stage in stages:
        while done < stage:
            idx = next(batches).to(x.device)
            xb, yb = x[idx], y[idx]
            if kind == "fast":
                threat = threats[int(torch.randint(len(threats), (1,), generator=generator))]
                xb = xb + fgsm_delta(model, xb, yb, threat, random_init(xb, threat, generator))
            model.train()
            loss = ce(model(xb.detach()), yb).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
        frozen = create(arch, num_classes=num_classes, in_channels=c, image_size=size).to(x.device)
        frozen.load_state_dict(model.state_dict())
        frozen.eval().requires_grad_(False)
        frozen_copies.append((stage, frozen))
    return frozen_copies


def train_targets(
    cfg: PretrainConfig,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    generator: torch.Generator,
    log: Callable[[str], None],
) -> list[tuple[str, nn.Module]]:
    """Train each architecture × kind and freeze a copy at every stage: the target-model pool."""
    threats = parse_threats(list(cfg.threats))
    pool: list[tuple[str, nn.Module]] = []
    for arch in cfg.models:
        for kind in cfg.target_kinds:
            frozen = train_target(
                arch,
                kind,
                cfg.stages,
                x,
                y,
                num_classes,
                threats,
                generator,
                lr=cfg.target_lr,
                batch_size=cfg.batch_size,
            )
            pool += [(f"{arch}/{kind}/{stage}", model) for stage, model in frozen]
            log(f"trained targets {arch}/{kind} up to step {cfg.stages[-1]}")
    return pool


class AdaptSettings(Protocol):
    """What :func:`attack_loss` and :func:`adapt` read from a configuration (frozen dataclasses fit)."""

    @property
    def random_start(self) -> bool: ...
    @property
    def attacker_steps(self) -> int: ...
    @property
    def inner_steps(self) -> int: ...
    @property
    def inner_lr(self) -> float: ...


def attack_loss(
    attacker: nn.Module,
    task: Task,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: AdaptSettings,
    generator: torch.Generator,
) -> torch.Tensor:
    """Mean CE of the task's target on the attacker's points (the quantity the attacker maximises)."""
    delta0 = random_init(x, task.threat, generator) if cfg.random_start else torch.zeros_like(x)
    rollout_attacker = cast(LearnedAttacker, attacker)  # any module with the attacker's forward (e.g. channel-shared)
    delta = attacker_rollout(rollout_attacker, task.model, x, y, task.threat, delta0=delta0, steps=cfg.attacker_steps)
    with attack_mode(task.model):
        return ce(task.model(x + delta), y).mean()


def adapt(
    attacker: nn.Module,
    task: Task,
    batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    cfg: AdaptSettings,
    generator: torch.Generator,
    steps: int | None = None,
) -> tuple[nn.Module, float]:
    """A copy of ``attacker`` after ``steps`` (default ``cfg.inner_steps``) Adam ascent steps on
    ``task`` (fresh optimizer), and the attack loss at the last step."""
    fast = copy.deepcopy(attacker)
    opt = torch.optim.Adam(fast.parameters(), lr=cfg.inner_lr)
    value = 0.0
    for _ in range(cfg.inner_steps if steps is None else steps):
        xb, yb = batch()
        loss = attack_loss(fast, task, xb, yb, cfg, generator)
        opt.zero_grad(set_to_none=True)
        (-loss).backward()
        opt.step()
        value = float(loss.detach())
    return fast, value


@torch.no_grad()
def reptile_step(attacker: nn.Module, fast: nn.Module, meta_lr: float) -> None:
    """``φ ← φ + meta_lr · (φ_task − φ)``."""
    for p, q in zip(attacker.parameters(), fast.parameters(), strict=True):
        p.add_(meta_lr * (q - p))


def evaluate(
    attacker: LearnedAttacker,
    tasks: list[Task],
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: PretrainConfig,
    generator: torch.Generator,
) -> dict[str, dict[str, float]]:
    """Per task: target accuracy under the learned attack and under FGSM from the same start."""
    out: dict[str, dict[str, float]] = {}
    for task in tasks:
        delta0 = random_init(x, task.threat, generator) if cfg.random_start else torch.zeros_like(x)
        learned = attacker_rollout(
            attacker, task.model, x, y, task.threat, delta0=delta0, steps=cfg.attacker_steps
        ).detach()
        fgsm = fgsm_delta(task.model, x, y, task.threat, delta0)
        with torch.no_grad():
            out[task.name] = {
                "clean": float((task.model(x).argmax(1) == y).float().mean()),
                "learned": float((task.model(x + learned).argmax(1) == y).float().mean()),
                "fgsm": float((task.model(x + fgsm).argmax(1) == y).float().mean()),
            }
    return out


def pretrain(
    cfg: PretrainConfig,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = lambda _: None,
) -> tuple[LearnedAttacker, dict[str, Any]]:
    """Meta-pretrain an attacker; save it to ``out_dir`` when given. Returns it and a summary."""
    import metaat.data as datasets

    if out_dir is not None:
        check_out_dir(out_dir)  # before the target training, not at the save after it
    t0 = time.perf_counter()
    dev = torch.device(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # weight initialisation of targets and attacker
    x, y = datasets.load(cfg.data, "train", data_dir=cfg.data_dir, n=cfg.n)
    num_classes = datasets.info(cfg.data).num_classes
    x, y = x.to(dev), y.to(dev)
    held = min(256, max(1, x.shape[0] // 5))  # held-out points for the final evaluation
    x_eval, y_eval, x, y = x[:held], y[:held], x[held:], y[held:]
    threats = parse_threats(list(cfg.threats))
    pool = train_targets(cfg, x, y, num_classes, generator, log)
    tasks = [Task(f"{name}@{t}", model, t) for name, model in pool for t in threats]

    spec = AttackerSpec(in_channels=x.shape[1], hidden=cfg.hidden, depth=cfg.depth, rank=x.dim() - 2)
    attacker = LearnedAttacker(spec).to(dev)
    outer = torch.optim.Adam(attacker.parameters(), lr=cfg.inner_lr) if cfg.algorithm == "fomaml" else None
    stream = _batches(x.shape[0], cfg.batch_size, generator)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        idx = next(stream).to(dev)
        return x[idx], y[idx]

    history: list[float] = []
    for it in range(cfg.meta_iters):
        task = tasks[int(torch.randint(len(tasks), (1,), generator=generator))]
        fast, value = adapt(attacker, task, batch, cfg, generator)
        if outer is None:
            reptile_step(attacker, fast, cfg.meta_lr)
        else:
            xb, yb = batch()
            query = attack_loss(fast, task, xb, yb, cfg, generator)
            grads = torch.autograd.grad(-query, list(fast.parameters()), allow_unused=True)
            outer.zero_grad(set_to_none=True)
            for p, g in zip(attacker.parameters(), grads, strict=True):
                p.grad = g
            outer.step()
            value = float(query.detach())
        history.append(value)
        if (it + 1) % max(1, cfg.meta_iters // 10) == 0:
            log(f"meta-iteration {it + 1}/{cfg.meta_iters}: attack CE {sum(history[-20:]) / len(history[-20:]):.3f}")

    attacker.eval()
    results = evaluate(attacker, tasks, x_eval, y_eval, cfg, generator)
    summary: dict[str, Any] = {
        "config": cfg.to_dict(),
        "tasks": [t.name for t in tasks],
        "evaluation": results,
        "mean_learned_acc": sum(r["learned"] for r in results.values()) / len(results),
        "mean_fgsm_acc": sum(r["fgsm"] for r in results.values()) / len(results),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if out_dir is not None:
        save_generator(attacker, out_dir, metadata={"trained_by": "metaat meta-pretrain", **summary})
    return attacker, summary
