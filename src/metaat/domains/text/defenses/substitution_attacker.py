"""A learned word-substitution attacker for the discrete text threats (``syn:k``, ``typo:k``, ``nbr:k``).

The learned attacker of L2L (Jiang, Ma, Chen, Bailey, Wang, AISTATS 2021, "Learning to Defend by
Learning to Attack"), adapted to sets of discrete edits. A small network reads the target's token
vectors ``(B, L, D)`` (detached) and the threat (kind one-hot and budget ``k``) and gives, per token,

* a **position score** ``s_t`` — where to edit;
* a **query** ``q_t`` ``(D,)`` — which replacement: candidate ``c`` of token ``t`` (from the kind's
  :class:`~metaat.domains.text.flips.CandidateTable`) scores ``q_t · (e_c − e_t)``, the form of
  HotFlip's first-order gain (Ebrahimi et al., ACL 2018) with the query in the gradient's place.

Two readings of these scores:

* **discrete proposal** (:func:`propose`) — the ``k`` best positions by ``s_t`` (plus seeded
  Gumbel noise: ``explore`` = its scale, 0 = greedy), each at its best candidate. It lies in the set
  by construction: at most ``k`` positions, each an allowed candidate (a typo candidate is one
  character edit away, so ``typo:k`` holds too).
* **continuous relaxation** (:func:`relax`) — soft position weights ``w = min(1, k · softmax(s))``
  and candidate probabilities ``π_t = softmax_c(q_t · (e_c − e_t))`` give the vectors
  ``e_t + w_t Σ_c π_tc (e_c − e_t)``; the target's loss at that point is differentiable in the
  attacker's parameters, so the attacker learns by gradient ascent on it (L2L's inner max).

:func:`flip_choice` re-chooses the edits from an input gradient (HotFlip's top-``k``), the
refinement of metaat's recipe; :func:`imitation_loss` teaches the attacker to propose that choice.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metaat.domains.text.flips import candidate_table
from metaat.domains.text.space import TextSpace
from metaat.domains.text.vocab import PAD
from metaat.models import unwrap
from metaat.threats import ThreatModel

KINDS = ("syn", "typo", "nbr")
NEG = -1e4  # a finite "minus infinity" for logits that go into a softmax (a row may have no candidate)


@dataclasses.dataclass(frozen=True)
class SubstitutionSpec:
    """The attacker's architecture: token-vector width, hidden width, the threat kinds it knows."""

    embed_dim: int
    hidden: int = 64
    kinds: tuple[str, ...] = KINDS

    def to_dict(self) -> dict[str, Any]:
        return {"embed_dim": self.embed_dim, "hidden": self.hidden, "kinds": list(self.kinds)}


class SubstitutionAttacker(nn.Module):
    """Token vectors + threat → position scores ``(B, L)`` and queries ``(B, L, D)``.

    A linear layer over ``[e_t, kind one-hot, k / 4]``, two residual 1-d convolutions (width 3)
    over the sequence, then two linear heads.
    """

    kind = "text-substitution"

    def __init__(self, spec: SubstitutionSpec) -> None:
        super().__init__()
        self.spec = spec
        h = spec.hidden
        self.inp = nn.Linear(spec.embed_dim + len(spec.kinds) + 1, h)
        self.convs = nn.ModuleList(nn.Conv1d(h, h, 3, padding=1) for _ in range(2))
        self.position = nn.Linear(h, 1)
        self.query = nn.Linear(h, spec.embed_dim)

    def condition(self, threat: ThreatModel, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
        """The threat as per-token features ``(B, L, kinds + 1)``."""
        if threat.norm not in self.spec.kinds:
            raise ValueError(f"the substitution attacker knows {', '.join(self.spec.kinds)}; got {threat}")
        c = torch.zeros(len(self.spec.kinds) + 1, device=device)
        c[self.spec.kinds.index(threat.norm)] = 1.0
        c[-1] = float(threat.eps) / 4.0
        return c.expand(*shape, -1)

    def forward(self, emb: torch.Tensor, valid: torch.Tensor, threat: ThreatModel) -> tuple[torch.Tensor, torch.Tensor]:
        mask = valid.unsqueeze(-1).to(emb.dtype)
        h = (
            F.gelu(
                self.inp(torch.cat([emb, self.condition(threat, (valid.shape[0], valid.shape[1]), emb.device)], dim=-1))
            )
            * mask
        )
        h = h.transpose(1, 2)  # (B, H, L)
        for conv in self.convs:
            h = (h + F.gelu(conv(h))) * mask.transpose(1, 2)
        h = h.transpose(1, 2)
        return self.position(h).squeeze(-1), self.query(h)


@dataclasses.dataclass
class Candidates:
    """The replacements of a batch: ids ``(B, L, C)`` (−1 = none), their mask, the target's vectors
    of the original tokens ``(B, L, D)`` and of the candidates ``(B, L, C, D)`` (detached).

    Scores of the form ``v_t · (e_c − e_t)`` are computed as ``v_t · e_c − v_t · e_t`` (:meth:`gain`),
    batched matrix products that never build the ``(B, L, C, D)`` differences."""

    ids: torch.Tensor
    allowed: torch.Tensor
    emb: torch.Tensor
    vectors: torch.Tensor

    @property
    def has(self) -> torch.Tensor:
        """Positions with at least one candidate ``(B, L)``."""
        return self.allowed.any(dim=-1)

    def gain(self, v: torch.Tensor) -> torch.Tensor:
        """``v_t · (e_c − e_t)`` ``(B, L, C)`` for per-token vectors ``v`` ``(B, L, D)``."""
        along = torch.einsum("bld,blcd->blc", v, self.vectors)
        return along - (v * self.emb).sum(dim=-1, keepdim=True)

    def mix(self, weights: torch.Tensor) -> torch.Tensor:
        """``Σ_c weights_tc (e_c − e_t)`` ``(B, L, D)`` for weights ``(B, L, C)``."""
        return torch.einsum("blc,blcd->bld", weights, self.vectors) - weights.sum(dim=-1, keepdim=True) * self.emb


def candidates(model: nn.Module, ids: torch.Tensor, threat: ThreatModel, space: TextSpace) -> Candidates:
    """The candidate table of ``threat``'s kind for ``ids``, with the target's (detached) vectors."""
    cand = candidate_table(space, threat.norm)(ids)
    base = unwrap(model)
    with torch.no_grad():
        emb = base.embed(ids)  # type: ignore[operator]
        vectors = base.embed(cand.clamp_min(0))  # type: ignore[operator]
    return Candidates(cand, cand >= 0, emb, vectors)


@dataclasses.dataclass
class Scores:
    """The attacker's logits for a batch: positions ``(B, L)`` and candidates ``(B, L, C)``, both
    ``NEG`` where nothing may be chosen."""

    positions: torch.Tensor
    choices: torch.Tensor


def score(attacker: SubstitutionAttacker, ids: torch.Tensor, cands: Candidates, threat: ThreatModel) -> Scores:
    """Run the attacker on the batch (gradients flow to its parameters)."""
    s, q = attacker(cands.emb, ids != PAD, threat)
    choices = cands.gain(q) / q.shape[-1] ** 0.5
    return Scores(s.masked_fill(~cands.has, NEG), choices.masked_fill(~cands.allowed, NEG))


def relax(scores: Scores, cands: Candidates, k: int) -> torch.Tensor:
    """The relaxed token vectors ``e_t + w_t Σ_c π_tc (e_c − e_t)`` ``(B, L, D)``, ``Σ_t w_t <= k``."""
    w = (k * F.softmax(scores.positions, dim=1)).clamp(max=1.0) * cands.has
    pi = F.softmax(scores.choices, dim=-1) * cands.allowed
    return cands.emb + w.unsqueeze(-1) * cands.mix(pi)


def apply(ids: torch.Tensor, cands: Candidates, chosen: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """``ids`` with each ``chosen`` position ``(B, L)`` replaced by its candidate number ``which`` ``(B, L)``."""
    new = cands.ids.gather(2, which.unsqueeze(-1)).squeeze(-1)
    return torch.where(chosen & (new >= 0), new, ids)


def top_positions(value: torch.Tensor, k: int) -> torch.Tensor:
    """Mask ``(B, L)`` of the (at most) ``k`` largest finite entries of ``value`` per row above ``NEG``."""
    top, where = value.topk(min(k, value.shape[1]), dim=1)
    chosen = torch.zeros_like(value, dtype=torch.bool)
    return chosen.scatter_(1, where, top > NEG / 2)


def propose(
    scores: Scores, cands: Candidates, k: int, generator: torch.Generator, explore: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The discrete proposal: chosen positions ``(B, L)`` and candidate numbers ``(B, L)``.

    Positions are the top ``k`` of ``s_t + explore · Gumbel`` (``k`` positions drawn without
    replacement from ``softmax(s / explore)``; ``explore = 0``: the best ``k``), each at its best candidate."""
    s = scores.positions.detach()
    if explore > 0:
        u = torch.rand(s.shape, generator=generator, device=generator.device).to(s.device)
        s = torch.where(s > NEG / 2, s - explore * torch.log(-torch.log(u.clamp(1e-12, 1 - 1e-7))), s)
    return top_positions(s, k), scores.choices.detach().argmax(dim=-1)


def flip_choice(grad: torch.Tensor, cands: Candidates, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HotFlip's choice from an input gradient ``(B, L, D)``: the ``k`` positions with the largest
    first-order gain ``(e_c − e_t) · g_t``, each at its best candidate ``c`` (the whole budget is
    spent wherever there are candidates, as :func:`~metaat.domains.text.flips.flip_attack` does).

    The gain is measured from the original token, so it is the linear model's value of an edit
    wherever the gradient was taken (at the relaxed point, or at an earlier discrete choice): a
    proposed position stays only if no other position's edit gains more."""
    gain = cands.gain(grad).masked_fill(~cands.allowed, -torch.inf)
    best, which = gain.max(dim=-1)
    best = torch.where(torch.isfinite(best), best.clamp_min(NEG / 4), torch.full_like(best, NEG))
    return top_positions(best, k), which


def imitation_loss(scores: Scores, chosen: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the attacker towards a choice: ``−mean_{t ∈ R} [log softmax(s)_t + log π_t,c_t]``
    per example with a non-empty ``R`` (``chosen``), averaged over those examples (0 if none)."""
    log_pos = F.log_softmax(scores.positions, dim=1)
    log_c = F.log_softmax(scores.choices, dim=-1).gather(-1, which.unsqueeze(-1)).squeeze(-1)
    n = chosen.sum(dim=1)
    per = -((log_pos + log_c) * chosen).sum(dim=1) / n.clamp_min(1)
    some = n > 0
    return per[some].mean() if bool(some.any()) else per.sum() * 0.0
