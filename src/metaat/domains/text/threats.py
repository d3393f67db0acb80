"""Text threat models: ``syn:k``, ``typo:k`` (discrete edits) and ``emb:eps`` (training relaxation).

Inputs are int64 token ids ``(B, L)`` (see :mod:`metaat.domains.text.vocab`); ``x_adv`` is in the set
around ``x`` when:

* ``syn:k`` — at most ``k`` positions differ, and at each the new id is one of the allowed synonym
  substitutes of the original id (WordNet ∩ counter-fitted distance ≤ δ; :mod:`.synonyms`).
* ``nbr:k`` — the held-out family (never trained on): at most ``k`` positions differ, each holding
  one of the original word's counter-fitted vector neighbours that is *not* an allowed synonym
  (:mod:`.space`): TextFooler-style neighbour swaps outside WordNet.
* ``typo:k`` — the changed words need at most ``k`` character edits in total. An edit is an adjacent
  swap, a deletion, an insertion of any letter, or a substitution by a QWERTY neighbour key, always
  strictly inside the word: the first and last letters are kept. Only words of ``a-z`` letters with
  at least :data:`MIN_TYPO_LENGTH` letters are edited, and the result must be spellable (at most 13
  letters; it becomes its vocabulary id, or its spelled id). The number of edits a changed word
  needs is the restricted Damerau-Levenshtein (optimal string alignment) distance of the interiors.
* ``emb:eps`` — not a set of texts: a per-token L2 ball ``||δ_t||₂ <= eps`` around the *embedded*
  tokens ``(B, L, D)``, the continuous relaxation that embedding-space adversarial training
  (Miyato et al. 2017; FreeLB) perturbs. It is registered as a continuous kind so that metaat's
  PGD geometry (projection, random start, ascent) applies to ``model.embed(ids)``; it has no box
  (embeddings are unbounded) and is for training only, never a threat a model is evaluated under.

``syn``, ``nbr`` and ``typo`` are discrete (``continuous = False``): only the text attacks handle them; their
membership needs the vocabulary, taken from the active :class:`~.space.TextSpace`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metaat.domains.text.flips import flip_attack
from metaat.domains.text.space import TextSpace, active_space
from metaat.domains.text.typos import KEYBOARD, MIN_TYPO_LENGTH, typo_distance, typo_eligible, typo_variants
from metaat.threats import ThreatKind, ThreatModel, register_threat_kind

__all__ = ["KEYBOARD", "MIN_TYPO_LENGTH", "typo_distance", "typo_eligible", "typo_variants"]


def _check_ids(x_adv: torch.Tensor, x: torch.Tensor) -> None:
    if x.shape != x_adv.shape or x.dim() != 2:
        raise ValueError(
            f"x and x_adv must be token ids of one shape (B, L); got {tuple(x.shape)}, {tuple(x_adv.shape)}"
        )


def syn_contains(x_adv: torch.Tensor, x: torch.Tensor, k: int, space: TextSpace, table: str = "syn") -> torch.Tensor:
    """Per-example ``(B,)``: at most ``k`` positions changed, each to an allowed substitute
    (``table="nbr"``: to a held-out neighbour)."""
    _check_ids(x_adv, x)
    changed = x_adv != x
    out = changed.sum(dim=1) <= k
    for b, t in changed.nonzero().tolist():
        if out[b] and not space.allowed(int(x[b, t]), int(x_adv[b, t]), table):
            out[b] = False
    return out


def typo_edits(x_adv: torch.Tensor, x: torch.Tensor, space: TextSpace) -> torch.Tensor:
    """Per-example total number of character edits ``(B,)`` (``inf`` where a change is not a typo)."""
    _check_ids(x_adv, x)
    edits = torch.zeros(x.shape[0], dtype=torch.float64)
    for b, t in (x_adv != x).nonzero().tolist():
        a_id, e_id = int(x[b, t]), int(x_adv[b, t])
        if a_id in (0, 1) or e_id in (0, 1):
            edits[b] = math.inf
            continue
        edits[b] += typo_distance(space.vocab.word(a_id), space.vocab.word(e_id))
    return edits


def typo_contains(x_adv: torch.Tensor, x: torch.Tensor, k: int, space: TextSpace) -> torch.Tensor:
    """Per-example ``(B,)``: the changes are typos with at most ``k`` edits in total."""
    return typo_edits(x_adv, x, space) <= k


def _count(args: str, name: str) -> tuple[float, tuple[float, ...]]:
    try:
        k = int(args.strip())
    except ValueError:
        raise ValueError(f"threat {name}:{args!r}: expected {name}:k with an integer k >= 1 (e.g. {name}:2)") from None
    if k < 1:
        raise ValueError(f"threat {name}:{args}: k must be >= 1")
    return float(k), ()


EVALUATION_ATTACKS: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = (
    ("text-greedy", (("ranking", "gradient"),)),
    ("text-greedy", (("ranking", "deletion"),)),
    ("text-exhaustive", ()),
    ("text-beam", ()),
    ("text-genetic", ()),
)
"""The worst case over these (each on the points still robust) is a discrete text threat's robust
accuracy: cheapest first; for k = 1 the exhaustive search decides every remaining point."""


class _Discrete(ThreatKind):
    continuous = False
    evaluation_attacks = EVALUATION_ATTACKS

    def parse_args(self, args: str) -> tuple[float, tuple[float, ...]]:
        return _count(args, self.name)

    def format_args(self, threat: ThreatModel) -> str:
        return str(int(threat.eps))

    def train_attack(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        generator: torch.Generator,
        steps: int,
    ) -> torch.Tensor:
        """First-order word flips (HotFlip; :mod:`metaat.domains.text.flips`) in ``min(steps, k)`` passes."""
        return flip_attack(model, x, y, threat, active_space(), steps)


class SynonymKind(_Discrete):
    """``syn:k`` — at most k words replaced by allowed synonyms."""

    name = "syn"
    syntax = "syn:k (k >= 1 words replaced by synonyms)"

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel, tol: float) -> torch.Tensor:
        return syn_contains(x_adv, x, int(threat.eps), active_space())


class NeighbourKind(_Discrete):
    """``nbr:k`` — at most k words replaced by vector neighbours that are not synonyms (held out)."""

    name = "nbr"
    syntax = "nbr:k (k >= 1 words replaced by counter-fitted neighbours outside WordNet; unseen family)"

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel, tol: float) -> torch.Tensor:
        return syn_contains(x_adv, x, int(threat.eps), active_space(), "nbr")


class TypoKind(_Discrete):
    """``typo:k`` — at most k character edits inside words."""

    name = "typo"
    syntax = "typo:k (k >= 1 character edits: swap, delete, insert, keyboard neighbour)"

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel, tol: float) -> torch.Tensor:
        return typo_contains(x_adv, x, int(threat.eps), active_space())


def _token_norm(delta: torch.Tensor) -> torch.Tensor:
    return delta.norm(dim=-1, keepdim=True)


class EmbeddingKind(ThreatKind):
    """``emb:eps`` — per-token L2 ball in embedding space (training only; perturbations ``(B, L, D)``)."""

    name = "emb"
    syntax = "emb:eps (per-token L2 radius in embedding space)"

    def parse_args(self, args: str) -> tuple[float, tuple[float, ...]]:
        try:
            eps = float(args)
        except ValueError:
            raise ValueError(f"threat emb:{args!r}: expected emb:eps with a number eps > 0") from None
        return eps, ()

    def format_args(self, threat: ThreatModel) -> str:
        return f"{threat.eps:g}" if float(f"{threat.eps:g}") == threat.eps else repr(threat.eps)

    def project(self, delta: torch.Tensor, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        scale = (threat.eps / _token_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
        return delta * scale

    def random_init(self, x: torch.Tensor, threat: ThreatModel, generator: torch.Generator | None) -> torch.Tensor:
        device = generator.device if generator is not None else torch.device("cpu")
        g = torch.randn(x.shape, generator=generator, device=device)
        r = torch.rand((*x.shape[:-1], 1), generator=generator, device=device) ** (1.0 / x.shape[-1])
        delta = g / _token_norm(g).clamp_min(1e-12) * r * threat.eps
        return delta.to(device=x.device, dtype=x.dtype)

    def ascent(self, grad: torch.Tensor, threat: ThreatModel, x_adv: torch.Tensor | None) -> torch.Tensor:
        return grad / _token_norm(grad).clamp_min(1e-12)

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel, tol: float) -> torch.Tensor:
        norms = _token_norm(x_adv - x).squeeze(-1)
        return (norms <= threat.eps * (1 + tol) + tol).reshape(x.shape[0], -1).all(dim=1)


SYN = register_threat_kind(SynonymKind())
NBR = register_threat_kind(NeighbourKind())
TYPO = register_threat_kind(TypoKind())
EMB = register_threat_kind(EmbeddingKind())
