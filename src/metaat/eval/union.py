"""The worst-case ensemble over threats: per-threat robust flags, and their union (per-example AND).

Full mode attacks every clean-correct point under every threat. Union-only mode attacks each next
threat only on the points still robust under all previous ones: the union is the same (a point
already broken cannot become robust again), the work shrinks, and the per-threat numbers after the
first become upper bounds (a point that was not attacked counts as robust for that threat).

Points go through the suite in chunks; after each chunk its flags are written to the state file,
so an interrupted run resumes at the next chunk. Split over several processes (a :class:`Shard`
each, ``torchrun``), process ``r`` of ``w`` attacks chunks ``r, r + w, r + 2w, …`` of every threat and
the flags are summed across processes after each threat: the chunks, their points and their seeds
are the single process's, so the flags are too (on the same kind of device).

Every adversarial input is verified here — inside the threat set, finite, in [0, 1] — and its
prediction recomputed, never taken from the attack; a point whose adversarial output is NaN or Inf
counts as broken (never as the class ``argmax`` would pick), and the ``finite-outputs`` check flags it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from metaat.attacks.base import attack_mode, name_points, predictions
from metaat.eval.state import EvalState
from metaat.eval.suites import Suite
from metaat.models import model_device
from metaat.threats import ThreatModel, in_threat

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)`` — called after every chunk (a raising callback aborts the run)."""


@dataclass(frozen=True)
class Shard:
    """This process's share of an evaluation split over ``world`` processes.

    ``merge`` sums a tensor over all processes and returns the sum on every one (an all-reduce);
    ``gather`` returns every process's JSON-able value, in rank order. Every process must call them
    the same number of times, in the same order.
    """

    rank: int
    world: int
    merge: Callable[[torch.Tensor], torch.Tensor]
    gather: Callable[[Any], list[Any]]

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"shard rank must be in [0, {self.world}), got {self.rank}")

    def owns(self, chunk_index: int) -> bool:
        return chunk_index % self.world == self.rank


@dataclass(frozen=True)
class ThreatOutcome:
    """Per-point robust flags under one threat (CPU bool tensor over all n points)."""

    threat: str
    flags: torch.Tensor
    attacked: int
    upper_bound: bool
    seconds: float


def fraction(flags: torch.Tensor) -> float:
    """Share of True entries as an exact Python float (count / n, no float32 rounding)."""
    return int(flags.sum()) / flags.numel() if flags.numel() else 0.0


def predict(model: nn.Module, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """Predicted labels for ``x`` in chunks, without gradients; ``-1`` where the model's output is
    not finite (NaN/Inf), so such a point never counts as correct or robust."""
    with torch.no_grad():
        return torch.cat([predictions(model(x[s : s + chunk])) for s in range(0, x.shape[0], chunk)])


def clean_predictions(model: nn.Module, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """Predicted labels of the clean points; ``ValueError`` naming the points whose outputs are not
    finite (a model that is NaN on clean data has no accuracy to report)."""
    pred = predict(model, x, chunk)
    bad = pred < 0
    if bool(bad.any()):
        raise ValueError(f"the model returns non-finite logits (NaN or Inf) on {name_points(bad.cpu())}")
    return pred


def verify_adversarial(x_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel, suite_name: str) -> None:
    """AutoAttack's final check: inside the threat set, in [0, 1], no NaN; otherwise an error."""
    if x_adv.shape != x.shape:
        raise RuntimeError(f"suite {suite_name} returned shape {tuple(x_adv.shape)} for {tuple(x.shape)}")
    if not bool(torch.isfinite(x_adv).all()):
        raise RuntimeError(f"suite {suite_name} returned non-finite adversarial inputs under {threat}")
    ok = in_threat(x_adv, x, threat, tol=1e-4)
    if not bool(ok.all()):
        raise RuntimeError(
            f"suite {suite_name} returned {int((~ok).sum())} adversarial input(s) outside {threat} ∩ [0, 1]"
        )


def attack_threat(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    pending: torch.Tensor,
    threat: ThreatModel,
    suite: Suite,
    *,
    chunk: int,
    seed: int,
    state: EvalState,
    progress: Progress | None = None,
    shard: Shard | None = None,
) -> tuple[torch.Tensor, float]:
    """Robust flags of the ``pending`` points (others False) and the seconds spent, chunk by chunk
    (with a ``shard``: this process's chunks, then every process's flags merged; the seconds are
    summed over processes, so they count the work rather than the wall time)."""
    key = str(threat)
    flags = torch.zeros(x.shape[0], dtype=torch.bool)
    idx = pending.nonzero().squeeze(1)
    state.threat_entry(key, pending)
    device = model_device(model)
    n_chunks = (idx.numel() + chunk - 1) // chunk
    for j in range(n_chunks):
        if shard is not None and not shard.owns(j):
            continue
        ids = idx[j * chunk : (j + 1) * chunk]
        saved = state.chunk(key, j)
        if saved is None or saved.numel() != ids.numel():
            t0 = time.perf_counter()
            xs, ys = x[ids].to(device), y[ids].to(device)
            with attack_mode(model):
                x_adv = suite.attack(model, xs, ys, ids, threat, seed).detach()
                verify_adversarial(x_adv, xs, threat, type(suite).__name__)
                saved = (predict(model, x_adv, chunk) == ys).cpu()
            state.record_chunk(key, j, saved, time.perf_counter() - t0)
        flags[ids] = saved
        if progress is not None:
            progress(key, min((j + 1) * chunk, idx.numel()), idx.numel())
    seconds = float(state.threats[key].get("seconds", 0.0))
    if shard is not None:
        merged = shard.merge(torch.cat([flags.double(), torch.tensor([seconds], dtype=torch.float64)]))
        flags, seconds = merged[:-1] > 0.5, float(merged[-1])
    return flags, seconds


def worst_case_ensemble(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    clean: torch.Tensor,
    threats: tuple[ThreatModel, ...],
    suite: Suite,
    *,
    union_only: bool,
    chunk: int,
    seed: int,
    state: EvalState,
    progress: Progress | None = None,
    shard: Shard | None = None,
) -> tuple[list[ThreatOutcome], torch.Tensor]:
    """Per-threat outcomes and the union flags (robust under every threat)."""
    union = clean.clone()
    outcomes = []
    for k, threat in enumerate(threats):
        pending = union.clone() if union_only else clean.clone()
        flags, seconds = attack_threat(
            model, x, y, pending, threat, suite, chunk=chunk, seed=seed, state=state, progress=progress, shard=shard
        )
        upper = union_only and k > 0
        if upper:
            # Points broken earlier were not attacked here: count them as robust (an upper bound).
            flags = flags | (clean & ~pending)
        union &= flags
        outcomes.append(ThreatOutcome(str(threat), flags, int(pending.sum()), upper, seconds))
    return outcomes, union
