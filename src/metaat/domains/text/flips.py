"""First-order word flips: the cheap training-time attack for ``syn:k`` and ``typo:k``.

HotFlip (Ebrahimi, Rao, Lowd, Dou, ACL 2018, "HotFlip: White-Box Adversarial Examples for Text
Classification") scores every allowed replacement ``c`` at every position ``t`` by the first-order
change of the loss, ``(e_c − e_t) · ∂L/∂e_t``, from one forward and one backward pass; A2T (Yoo & Qi,
Findings of EMNLP 2021, "Towards Improving Adversarial Training of NLP Models") shows that such cheap,
gradient-guided substitutions suffice for adversarial training. Here ``steps`` rounds each take one
pass and apply the best not-yet-edited positions (an equal share of the remaining budget per round,
each position at its best replacement), so the result lies in the set exactly:

* ``syn:k`` — at most ``k`` positions, each one of the original word's allowed synonyms
  (the nearest :data:`SYN_WIDTH` of them);
* ``typo:k`` — at most ``k`` positions, each a word one character edit away from the original
  (``k`` edits in all): the vocabulary's one-edit variants first, then spelled (out-of-vocabulary)
  variants drawn with a fixed per-word seed, :data:`TYPO_WIDTH` candidates per word.

Candidate tables are built once per vocabulary word and cached (:class:`CandidateTable`).
"""

from __future__ import annotations

import math
import random
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from metaat.domains.text.space import TextSpace
from metaat.domains.text.typos import typo_eligible, typo_variants
from metaat.domains.text.vocab import PAD, UNK, is_spelled
from metaat.models import unwrap
from metaat.threats import ThreatModel

SYN_WIDTH = 16
TYPO_WIDTH = 8


class CandidateTable:
    """Replacement ids per original id, padded with −1: ``table(ids) -> (B, L, C)``."""

    def __init__(self, space: TextSpace, kind: str, width: int | None = None) -> None:
        if kind not in ("syn", "nbr", "typo"):
            raise ValueError(f"candidate tables exist for syn, nbr and typo; got {kind!r}")
        self.space, self.kind = space, kind
        self.width = width or (TYPO_WIDTH if kind == "typo" else SYN_WIDTH)
        self._rows: dict[int, tuple[int, ...]] = {}
        self._padded: dict[int, torch.Tensor] = {}

    def row(self, token_id: int) -> tuple[int, ...]:
        """The candidates of one original id (at most ``width``; deterministic)."""
        found = self._rows.get(token_id)
        if found is None:
            found = self._build(token_id)
            self._rows[token_id] = found
        return found

    def _build(self, token_id: int) -> tuple[int, ...]:
        if token_id in (PAD, UNK):
            return ()
        if self.kind == "syn":
            return tuple(int(c) for c in self.space.substitutes(token_id)[: self.width])
        if self.kind == "nbr":
            return tuple(int(c) for c in self.space.neighbours(token_id)[: self.width])
        vocab = self.space.vocab
        word = vocab.word(token_id)
        if not typo_eligible(word):
            return ()
        ids = [vocab.id(w) for w in typo_variants(word)]
        known = [i for i in ids if not is_spelled(i) and i != UNK]
        spelled = sorted(i for i in ids if is_spelled(i))
        random.Random(token_id).shuffle(spelled)
        return tuple((known + spelled)[: self.width])

    def padded(self, token_id: int) -> torch.Tensor:
        """:meth:`row` as a ``(width,)`` tensor padded with −1 (cached)."""
        found = self._padded.get(token_id)
        if found is None:
            cands = self.row(token_id)
            found = torch.full((self.width,), -1, dtype=torch.long)
            found[: len(cands)] = torch.tensor(cands, dtype=torch.long)
            self._padded[token_id] = found
        return found

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        unique, inverse = torch.unique(ids.detach().cpu(), return_inverse=True)
        rows = torch.stack([self.padded(int(t)) for t in unique.tolist()]) if unique.numel() else None
        if rows is None:
            return torch.full((*ids.shape, self.width), -1, dtype=torch.long, device=ids.device)
        return rows[inverse].to(ids.device)


@lru_cache(maxsize=8)
def candidate_table(space: TextSpace, kind: str) -> CandidateTable:
    """The cached table of ``space`` for ``kind`` (one per vocabulary and kind)."""
    return CandidateTable(space, kind)


def flip_attack(
    model: nn.Module,
    ids: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    space: TextSpace,
    steps: int = 1,
) -> torch.Tensor:
    """A point of ``threat``'s set around ``ids`` from ``min(steps, k)`` forward+backward passes
    (eval mode and frozen parameters are the caller's business; the passes go through
    ``model(ids, embedded=...)`` so a cost meter on ``model`` counts them)."""
    budget = int(threat.eps)
    table = candidate_table(space, threat.norm)
    base = unwrap(model)
    cand = table(ids)  # (B, L, C)
    allowed = cand >= 0
    cand_emb = base.embed(cand.clamp_min(0)).detach()  # type: ignore[operator]
    adv = ids.clone()
    edited = torch.zeros_like(ids, dtype=torch.bool)
    rounds = max(1, min(int(steps), budget))
    left = budget
    for r in range(rounds):
        take = math.ceil(left / (rounds - r))
        left -= take
        with torch.enable_grad():
            emb = base.embed(adv).detach().requires_grad_(True)  # type: ignore[operator]
            loss = F.cross_entropy(model(adv, embedded=emb), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, emb)
        gain = ((cand_emb - emb.detach().unsqueeze(2)) * grad.unsqueeze(2)).sum(dim=-1)
        gain = gain.masked_fill(~allowed | edited.unsqueeze(-1), -math.inf)
        best, which = gain.max(dim=-1)  # (B, L)
        top, where = best.topk(min(take, best.shape[1]), dim=1)
        ok = torch.isfinite(top)
        new = cand.gather(2, which.unsqueeze(-1)).squeeze(-1).gather(1, where)
        adv.scatter_(1, where, torch.where(ok, new, adv.gather(1, where)))
        edited.scatter_(1, where, ok | edited.gather(1, where))
    return adv
