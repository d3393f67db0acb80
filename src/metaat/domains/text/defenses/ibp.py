"""IBP — certified training over synonym hulls (Jia, Raghunathan, Göksel, Liang, EMNLP 2019,
"Certified Robustness to Adversarial Word Substitutions"; interval bound propagation from Gowal et
al. 2018, "On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust Models").

Threat: every combination of word substitutions — each position keeps its word or takes any of that
word's allowed synonyms, all positions at once — a set that contains ``syn:k`` for every ``k``. At
position ``t`` the box is the axis-aligned bounding box of the token vectors of ``{w_t} ∪ syn(w_t)``
(the model's own ``embed`` of those ids, so ``charngram-cnn``'s n-gram vectors are bounded too; the
full synonym list of :class:`~metaat.domains.text.space.TextSpace`, not the attacks' truncated table),
shrunk towards the word's vector by ``ε``: ``box = e + ε·(hull − e)``. ``model(ids, bounds=box)``
propagates it to logit bounds (the word-CNN heads' interval arithmetic; ``bilstm`` has none).

Loss: ``κ·CE(clean logits) + (1 − κ)·CE(worst-case logits)``, the worst case taking the true class's
lower bound and every other class's upper bound (an upper bound on the loss of every text in the set).

Schedule (the official code, robinjia/certified-word-sub, README recipe ``-T 60 --full-train-epochs 20
-c 0.8``: ``ε`` and the certified weight ramp linearly over the first 40 of 60 epochs, then stay):
with ``r = clamp((progress − warmup) / ramp, 0, 1)`` (``progress`` = ``ctx.progress``, the share of
training steps done), ``ε = eps_final · r`` and ``κ = 1 − (1 − kappa_final) · r``. ``warmup`` is that
code's ``--non-cert-train-epochs`` (plain training first; Gowal et al. warm up too). Defaults:
``warmup = 0``, ``ramp = 2/3``, ``eps_final = 1``, ``kappa_final = 0.2`` (that code's
``cert_frac = 0.8`` is ``1 − κ``; Gowal et al. end at ``κ = 0.5``). The official code ramps once
per epoch; here the ramp moves every step. It also keeps the word vectors fixed (a trained layer sits
above them); here the hulls are built from the model's current vectors, so they move as its embedding
trains (``freeze_embeddings=True`` fixes them).

Typos (an extension; the paper covers substitutions only): when a ``typo:k`` threat is given, each
hull also spans the word's typo candidates (:func:`~metaat.domains.text.flips.candidate_table`,
``"typo"``: at most 8 one-edit variants per word). The bound then certifies only against those
tabled variants, not against every text within ``k`` character edits.

Options: ``warmup`` (0), ``ramp`` (2/3; 0 jumps to the final values), ``kappa_final`` (0.2),
``eps_final`` (1.0); ``warmup + ramp <= 1``.
Cost per example: 2 passes as the cost meter counts them — the clean forward+backward and the bound
forward+backward, both through ``model(...)``; interval propagation runs the centre and the radius
through every layer, about two forwards of compute, though the meter counts it as one.
:func:`certified` gives the per-example certificate a benchmark reports as certified accuracy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metaat.defenses.base import DEFENSES, Defense, DefenseConfig, TrainContext, accuracy
from metaat.domains.text.flips import candidate_table
from metaat.domains.text.space import TextSpace, active_space
from metaat.domains.text.vocab import PAD, UNK
from metaat.models import unwrap

KINDS = ("syn", "typo")


def _number(name: str, value: object, low: float, high: float | None = None) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value > high):  # type: ignore[operator]
        span = f"in [{low:g}, {high:g}]" if high is not None else f"> {low:g}"
        raise ValueError(f"defense ibp: {name} must be a number {span}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class IBPConfig(DefenseConfig):
    ramp: float = 2 / 3
    kappa_final: float = 0.2
    eps_final: float = 1.0
    warmup: float = 0.0

    def __post_init__(self) -> None:
        _number("warmup", self.warmup, 0.0, 1.0)
        _number("ramp", self.ramp, 0.0, 1.0)
        if self.warmup + self.ramp > 1:
            raise ValueError(f"defense ibp: warmup + ramp must be <= 1, got {self.warmup!r} + {self.ramp!r}")
        _number("kappa_final", self.kappa_final, 0.0, 1.0)
        _number("eps_final", self.eps_final, 0.0)
        if self.eps_final == 0:
            raise ValueError("defense ibp: eps_final must be a number > 0, got 0")


def schedule(progress: float, config: IBPConfig) -> tuple[float, float]:
    """``(ε, κ)`` after ``progress`` ∈ [0, 1] of training: ``(0, 1)`` for the first ``warmup`` of it,
    then linear to ``(eps_final, kappa_final)`` over the next ``ramp``, constant after."""
    done = progress - config.warmup
    r = float(done >= 0) if config.ramp == 0 else min(1.0, max(0.0, done) / config.ramp)
    return config.eps_final * r, 1.0 - (1.0 - config.kappa_final) * r


class HullTable:
    """The substitutes each id's hull spans: its full synonym list, plus its typo candidates
    (``"typo"`` in ``kinds``); rows built once per id."""

    def __init__(self, space: TextSpace, kinds: tuple[str, ...]) -> None:
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            raise ValueError(f"hull kinds are {' and '.join(KINDS)}; got {', '.join(kinds) or 'none'}")
        self.space, self.kinds = space, kinds
        self._typo = candidate_table(space, "typo") if "typo" in kinds else None
        self._rows: dict[int, tuple[int, ...]] = {}

    def row(self, token_id: int) -> tuple[int, ...]:
        found = self._rows.get(token_id)
        if found is None:
            cands: list[int] = []
            if token_id not in (PAD, UNK):
                if "syn" in self.kinds:
                    cands += [int(c) for c in self.space.substitutes(token_id)]
                if self._typo is not None:
                    cands += list(self._typo.row(token_id))
            found = tuple(dict.fromkeys(c for c in cands if c != token_id))
            self._rows[token_id] = found
        return found

    def pairs(self, unique_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For ids ``(U,)``: the row index ``(N,)`` into ``unique_ids`` and the substitute ``(N,)``
        of every (id, substitute) pair."""
        seg: list[int] = []
        cand: list[int] = []
        for i, t in enumerate(unique_ids.tolist()):
            row = self.row(int(t))
            seg += [i] * len(row)
            cand += row
        device = unique_ids.device
        return torch.tensor(seg, dtype=torch.long, device=device), torch.tensor(cand, dtype=torch.long, device=device)


@lru_cache(maxsize=8)
def hull_table(space: TextSpace, kinds: tuple[str, ...] = ("syn",)) -> HullTable:
    """The cached :class:`HullTable` of ``space`` for ``kinds``."""
    return HullTable(space, kinds)


def hull_bounds(
    model: nn.Module, ids: torch.Tensor, table: HullTable, eps: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token vectors ``emb`` and the box ``(lo, hi)`` around them, each ``(B, L, D)``: per position the
    bounding box of the vectors of the word and its substitutes, scaled towards ``emb`` by ``eps``."""
    base = unwrap(model)
    unique, inverse = torch.unique(ids, return_inverse=True)
    vec = base.embed(unique)  # type: ignore[operator]  # (U, D); a token's vector ignores its context
    lo, hi = vec, vec
    seg, cand = table.pairs(unique)
    if cand.numel():
        index = seg.unsqueeze(1).expand(-1, vec.shape[1])
        cand_vec = base.embed(cand)  # type: ignore[operator]  # (N, D)
        lo = vec.scatter_reduce(0, index, cand_vec, "amin", include_self=True)
        hi = vec.scatter_reduce(0, index, cand_vec, "amax", include_self=True)
    emb = vec[inverse]
    return emb, torch.lerp(emb, lo[inverse], eps), torch.lerp(emb, hi[inverse], eps)  # lerp(·, ·, 1) = end exactly


def worst_case_logits(bounds: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """From logit bounds ``(B, 2, C)``: the true class's lower bound, every other class's upper one."""
    true = F.one_hot(y, bounds.shape[-1]).bool()
    return torch.where(true, bounds[:, 0], bounds[:, 1])


def certified_margin(bounds: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(B,)``: the true class's lower bound minus the largest upper bound of another class
    (> 0: no point of the box changes the prediction from ``y``)."""
    true = F.one_hot(y, bounds.shape[-1]).bool()
    others = bounds[:, 1].masked_fill(true, float("-inf")).amax(dim=1)
    return bounds[:, 0].gather(1, y.unsqueeze(1)).squeeze(1) - others


def certified(
    model: nn.Module,
    ids: torch.Tensor,
    y: torch.Tensor,
    space: TextSpace | None = None,
    kinds: Sequence[str] = ("syn",),
    batch_size: int = 256,
) -> torch.Tensor:
    """Per example ``(B,)`` bool: the interval bound proves that the model predicts ``y`` on every
    text that replaces any number of words by allowed synonyms (⊇ ``syn:k`` for every ``k``).
    With ``"typo"`` in ``kinds`` the set also takes each word's tabled typo candidates (see the module
    docstring). Runs in eval mode (the model's mode is restored) without gradients."""
    table = hull_table(space if space is not None else active_space(), tuple(kinds))
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(y), batch_size):
                xb, yb = ids[start : start + batch_size], y[start : start + batch_size]
                _, lo, hi = hull_bounds(model, xb, table)
                out.append(certified_margin(model(xb, bounds=(lo, hi)), yb) > 0)
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=ids.device)


@DEFENSES.register("ibp", help="certified training over synonym hulls (IBP, Jia et al. 2019; text)")
class IBP(Defense):
    """``κ·CE(clean) + (1 − κ)·CE(worst case over the ε-scaled synonym hulls)``."""

    name = "ibp"
    config_class = IBPConfig
    config: IBPConfig
    multi_threat = True
    discrete = True

    def __init__(self, threats: Any, **options: Any) -> None:
        super().__init__(threats, **options)
        other = [str(t) for t in self.threats if t.continuous or t.norm not in KINDS]
        if other:
            raise ValueError(
                f"defense ibp certifies word substitutions (syn:k) and tabled typos (typo:k); got {', '.join(other)}"
            )
        self.kinds = tuple(k for k in KINDS if any(t.norm == k for t in self.threats))

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        eps, kappa = schedule(ctx.progress, self.config)
        emb, lo, hi = hull_bounds(model, x, hull_table(active_space(), self.kinds), eps)
        clean = model(x, embedded=emb)
        worst = worst_case_logits(model(x, bounds=(lo, hi)), y)
        clean_loss, cert_loss = F.cross_entropy(clean, y), F.cross_entropy(worst, y)
        loss = kappa * clean_loss + (1.0 - kappa) * cert_loss
        return loss, {
            "loss": float(loss.detach()),
            "acc": accuracy(clean, y),
            "cert_acc": accuracy(worst, y),
            "ce_clean": float(clean_loss.detach()),
            "ce_cert": float(cert_loss.detach()),
            "eps": eps,
            "kappa": kappa,
        }
