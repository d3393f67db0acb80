"""Unseen attacks, reported separately from the headline numbers.

* **eps sweep** — every norm (L∞, L2, L1) at multiples of its budget: the evaluated threat's eps
  for evaluated norms, else a default radius (L∞ 0.1, L2 1.5, L1 10 — the design's defaults);
  attacked with the ``quick`` suite (metaat PGD, CE then margin loss, 20 steps) or the reference
  ``apgd`` suite (much slower: ~40x the work).
* **spatial** — worst of a grid of rotations (±30°) and translations (±3 px), gradient-free.
* **corruptions** — Gaussian noise, Gaussian blur and contrast at severities 1–5 (plain accuracy on
  the corrupted inputs, the convention for common corruptions).
* **universal** — one universal perturbation per evaluated threat and one universal patch, each
  learned on *other* points than the ones it is scored on: on ``holdout`` when given, else
  two-fold (learned on the odd points, scored on the even ones, and vice versa).

Robust accuracies (sweep, spatial, universal) count a point only when it is also clean-correct.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from metaat.attacks.base import attack_mode
from metaat.attacks.corruption import CORRUPTIONS, SEVERITIES, corrupt
from metaat.attacks.patch import apply_patch, apply_universal, learn_patch, learn_universal, patch_locations
from metaat.attacks.spatial import Spatial
from metaat.eval.suites import QuickSuite, Suite, make_suite
from metaat.eval.union import fraction, predict
from metaat.losses import get_loss
from metaat.models import model_device
from metaat.registry import load_domains
from metaat.runtime import derive_seed, make_generator
from metaat.threats import NORMS, ThreatModel

DEFAULT_EPS: dict[str, float] = {"linf": 0.1, "l2": 1.5, "l1": 10.0}


@dataclass(frozen=True)
class UnseenConfig:
    """What the unseen-attack section runs. ``n=None`` uses every evaluated point."""

    n: int | None = 100
    sweep_factors: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    sweep_norms: tuple[str, ...] = NORMS
    sweep_suite: str = "quick"
    sweep_steps: int = 20
    sweep_losses: tuple[str, ...] = ("ce", "margin")
    spatial: bool = True
    max_rotation: float = 30.0
    max_translation: float = 3.0
    corruptions: tuple[str, ...] = CORRUPTIONS
    severities: tuple[int, ...] = SEVERITIES
    universal: bool = True
    universal_steps: int = 20
    patch_size: int = 5

    def __post_init__(self) -> None:
        if self.n is not None and self.n < 2:
            raise ValueError(f"unseen: n must be >= 2, got {self.n}")
        if not self.sweep_factors or any(f <= 0 for f in self.sweep_factors):
            raise ValueError("unseen: sweep_factors must be positive")
        for norm in self.sweep_norms:
            ThreatModel(norm, 1.0)
        for loss in self.sweep_losses:
            get_loss(loss)
        if self.sweep_suite not in ("quick", "apgd"):
            raise ValueError(f"unseen: unknown sweep_suite {self.sweep_suite!r}; valid: quick, apgd")
        bad = [c for c in self.corruptions if c not in CORRUPTIONS]
        if bad:
            raise ValueError(f"unknown corruption(s) {bad}; valid corruptions: {', '.join(CORRUPTIONS)}")
        if any(s not in SEVERITIES for s in self.severities):
            raise ValueError("unseen: severities must be among 1, 2, 3, 4, 5")


def sweep_threats(threats: tuple[ThreatModel, ...], cfg: UnseenConfig) -> list[ThreatModel]:
    """Every (norm, eps) of the sweep, evaluated norms around their eps, others around the defaults
    (pixel radii: outside the pixel box only the evaluated norms are swept), in the threats' box."""
    base = {t.norm: t.eps for t in threats}
    box = threats[0].box if threats else (0.0, 1.0)
    norms = cfg.sweep_norms if box == (0.0, 1.0) else tuple(n for n in cfg.sweep_norms if n in base)
    out: list[ThreatModel] = []
    for norm in norms:
        eps0 = base.get(norm, DEFAULT_EPS[norm])
        out.extend(ThreatModel(norm, round(eps0 * f, 10), box=box) for f in sorted(cfg.sweep_factors))
    return out


def _accuracy(flags: torch.Tensor) -> float:
    return fraction(flags)


def eps_sweep(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    clean: torch.Tensor,
    threats: tuple[ThreatModel, ...],
    cfg: UnseenConfig,
    seed: int,
    chunk: int,
) -> dict[str, Any]:
    """Robust accuracy per (norm, eps); monotonicity is reported, not enforced."""
    suite = _sweep_suite(model, x, cfg)
    evaluated = {str(t) for t in threats}
    curves: dict[str, list[dict[str, Any]]] = {}
    ids_all = torch.arange(x.shape[0])
    for threat in sweep_threats(threats, cfg):
        flags = torch.zeros(x.shape[0], dtype=torch.bool)
        idx = clean.nonzero().squeeze(1)
        for s in range(0, idx.numel(), chunk):
            ids = idx[s : s + chunk]
            x_adv = suite.attack(model, x[ids], y[ids], ids_all[ids], threat, derive_seed(seed, "sweep"))
            flags[ids] = (predict(model, x_adv, chunk) == y[ids]).cpu()
        curves.setdefault(threat.norm, []).append(
            {"eps": threat.eps, "accuracy": _accuracy(flags), "evaluated": str(threat) in evaluated}
        )
    swept = sweep_threats(threats, cfg)
    return {"suite": cfg.sweep_suite, "attacks": suite.describe(swept[0]) if swept else [], "curves": curves}


def _sweep_suite(model: nn.Module, x: torch.Tensor, cfg: UnseenConfig) -> Suite:
    if cfg.sweep_suite == "quick":
        return QuickSuite(steps=cfg.sweep_steps, losses=cfg.sweep_losses)
    return make_suite("apgd", _classes(model, x))


def _classes(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


def spatial(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean: torch.Tensor, cfg: UnseenConfig, chunk: int
) -> dict[str, Any]:
    attack = Spatial(max_rotation=cfg.max_rotation, max_translation=cfg.max_translation, batch_size=chunk)
    x_adv = attack(model, x, y)
    flags = (predict(model, x_adv, chunk) == y) & clean
    return {
        "accuracy": _accuracy(flags),
        "rotations": attack.config.rotation_steps,
        "translations": attack.config.translation_steps,
        "max_rotation": cfg.max_rotation,
        "max_translation": cfg.max_translation,
    }


def corruptions(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: UnseenConfig, seed: int, chunk: int
) -> dict[str, Any]:
    table: dict[str, dict[str, float]] = {}
    values = []
    for name in cfg.corruptions:
        row = {}
        for severity in cfg.severities:
            gen = make_generator(derive_seed(seed, "corruption", name, severity))
            xc = corrupt(x, name, severity, gen)
            acc = _accuracy(predict(model, xc, chunk) == y)
            row[str(severity)] = acc
            values.append(acc)
        table[name] = row
    return {"accuracy": table, "mean": sum(values) / len(values) if values else 0.0}


def _folds(n: int, holdout: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(fit indices, score indices) pairs; with a held-out set the fit indices are unused."""
    every = torch.arange(n)
    if holdout:
        return [(every, every)]
    odd, even = every[1::2], every[0::2]
    return [(odd, even), (even, odd)]


def universal(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    clean: torch.Tensor,
    threats: tuple[ThreatModel, ...],
    cfg: UnseenConfig,
    seed: int,
    chunk: int,
    holdout: tuple[torch.Tensor, torch.Tensor] | None,
) -> dict[str, Any]:
    perturbation: dict[str, float] = {}
    patch_flags = torch.zeros(x.shape[0], dtype=torch.bool)
    folds = _folds(x.shape[0], holdout is not None)
    for threat in threats:
        flags = torch.zeros(x.shape[0], dtype=torch.bool)
        for fit, score in folds:
            xf, yf = holdout if holdout is not None else (x[fit], y[fit])
            delta = learn_universal(model, xf, yf, threat, steps=cfg.universal_steps, chunk=chunk)
            flags[score] = (predict(model, apply_universal(x[score], delta), chunk) == y[score]).cpu()
        perturbation[str(threat)] = _accuracy(flags & clean)
    gen = make_generator(derive_seed(seed, "patch"))
    size = min(cfg.patch_size, x.shape[2], x.shape[3])
    for fit, score in folds:
        xf, yf = holdout if holdout is not None else (x[fit], y[fit])
        patch = learn_patch(model, xf, yf, patch_size=size, generator=gen, steps=cfg.universal_steps, chunk=chunk)
        where = patch_locations(score.numel(), (x.shape[2], x.shape[3]), size, gen)
        with torch.no_grad():
            x_p = apply_patch(x[score], patch, where)
        patch_flags[score] = (predict(model, x_p, chunk) == y[score]).cpu()
    return {
        "fit": "held-out set" if holdout is not None else "two-fold (learned on other points)",
        "steps": cfg.universal_steps,
        "perturbation": perturbation,
        "patch": {"size": size, "accuracy": _accuracy(patch_flags & clean)},
    }


DomainUnseen = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, int, int], dict[str, dict[str, Any]]]
"""``fn(model, x, y, clean, seed, chunk) -> {key: {"label": str, "accuracy": float, "queries": int}}``:
one family of a domain's unseen perturbations, each accuracy the exact worst case over its (small,
searched exhaustively or by grid) set, counted only on clean-correct points."""

UNSEEN_BY_RANK: dict[int, list[tuple[str, DomainUnseen]]] = {}
"""A domain's unseen-perturbation families by input rank (1: signals), registered by the domain."""


def register_unseen(rank: int, name: str, fn: DomainUnseen) -> DomainUnseen:
    """Run ``fn`` in the unseen section of every evaluation of rank-``rank`` inputs."""
    family = UNSEEN_BY_RANK.setdefault(rank, [])
    if any(existing == name for existing, _ in family):
        raise ValueError(f"unseen family {name!r} is already registered for rank {rank}")
    family.append((name, fn))
    return fn


def domain_unseen(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean: torch.Tensor, seed: int, chunk: int
) -> dict[str, dict[str, Any]] | None:
    """Every registered family for ``x``'s rank, merged (None when the rank has none)."""
    load_domains()  # the built-in domains register their families on import
    families = UNSEEN_BY_RANK.get(x.dim() - 2, [])
    if not families:
        return None
    out: dict[str, dict[str, Any]] = {}
    for _name, fn in families:
        out.update(fn(model, x, y, clean, seed, chunk))
    return out


def run_unseen(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: tuple[ThreatModel, ...],
    cfg: UnseenConfig | None = None,
    *,
    seed: int = 0,
    chunk: int = 128,
    holdout: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """All unseen-attack results as a JSON-ready dict (with per-part seconds)."""
    cfg = cfg or UnseenConfig()
    if cfg.n is not None:
        x, y = x[: cfg.n], y[: cfg.n]
    out: dict[str, Any] = {"n": int(x.shape[0]), "seconds": {}}
    device = model_device(model)
    x, y = x.to(device), y.to(device)
    with attack_mode(model):
        if holdout is not None:
            holdout = (holdout[0].to(device), holdout[1].to(device))
        clean = (predict(model, x, chunk) == y).cpu()
        sweep = ("eps_sweep", lambda: eps_sweep(model, x, y, clean, threats, cfg, seed, chunk))
        parts: list[tuple[str, Any]]
        if not x.is_floating_point():  # token ids: the domain's own unseen families only
            parts = [("domain", lambda: domain_unseen(model, x, y, clean, seed, chunk))]
        elif x.dim() != 4:  # signals: the eps sweep, then the domain's own unseen families
            parts = [sweep, ("domain", lambda: domain_unseen(model, x, y, clean, seed, chunk))]
        else:
            parts = [
                sweep,
                ("spatial", lambda: spatial(model, x, y, clean.to(device), cfg, chunk) if cfg.spatial else None),
                ("corruptions", lambda: corruptions(model, x, y, cfg, seed, chunk) if cfg.corruptions else None),
                (
                    "universal",
                    lambda: (
                        universal(model, x, y, clean, threats, cfg, seed, chunk, holdout) if cfg.universal else None
                    ),
                ),
            ]
        for name, fn in parts:
            t0 = time.perf_counter()
            value = fn()
            if value is not None:
                out[name] = value
                out["seconds"][name] = round(time.perf_counter() - t0, 3)
    return out
