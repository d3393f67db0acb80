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
from functools import lru_cache

import torch

from metaat.domains.text.space import TextSpace, active_space
from metaat.domains.text.vocab import spellable
from metaat.threats import ThreatKind, ThreatModel, register_threat_kind

MIN_TYPO_LENGTH = 4
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def _keyboard() -> dict[str, frozenset[str]]:
    """QWERTY neighbours: left/right on the row, and the touching keys of the rows above and below
    (rows are staggered by half a key: key ``c`` of a row touches ``c`` and ``c + 1`` above, ``c - 1``
    and ``c`` below)."""
    out: dict[str, set[str]] = {ch: set() for row in _ROWS for ch in row}
    for r, row in enumerate(_ROWS):
        for c, ch in enumerate(row):
            near = [(r, c - 1), (r, c + 1), (r - 1, c), (r - 1, c + 1), (r + 1, c - 1), (r + 1, c)]
            for rr, cc in near:
                if 0 <= rr < len(_ROWS) and 0 <= cc < len(_ROWS[rr]):
                    out[ch].add(_ROWS[rr][cc])
    return {k: frozenset(v) for k, v in out.items()}


KEYBOARD: dict[str, frozenset[str]] = _keyboard()


def typo_eligible(word: str) -> bool:
    """True for a word the ``typo`` threat may edit."""
    return len(word) >= MIN_TYPO_LENGTH and spellable(word)


def typo_variants(word: str) -> list[str]:
    """Every word one edit away (swap, delete, insert, keyboard neighbour; inside the word only),
    sorted, without ``word`` itself; empty for a word that may not be edited."""
    if not typo_eligible(word):
        return []
    out: set[str] = set()
    n = len(word)
    for i in range(1, n - 1):
        out.add(word[:i] + word[i + 1 :])  # delete
        out.update(word[:i] + k + word[i + 1 :] for k in KEYBOARD[word[i]])  # neighbour key
        if i + 1 < n - 1:
            out.add(word[:i] + word[i + 1] + word[i] + word[i + 2 :])  # swap
    for i in range(1, n):
        out.update(word[:i] + c + word[i:] for c in _ALPHABET)  # insert
    out.discard(word)
    return sorted(w for w in out if spellable(w))


@lru_cache(maxsize=65536)
def typo_distance(original: str, edited: str) -> float:
    """Number of allowed edits turning ``original`` into ``edited`` (``inf`` when impossible)."""
    if original == edited:
        return 0.0
    if not typo_eligible(original) or not spellable(edited) or len(edited) < 2:
        return math.inf
    if original[0] != edited[0] or original[-1] != edited[-1]:
        return math.inf
    a, b = original[1:-1], edited[1:-1]
    inf = math.inf
    d = [[0.0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = float(i)
    for j in range(len(b) + 1):
        d[0][j] = float(j)
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            if a[i - 1] == b[j - 1]:
                sub = d[i - 1][j - 1]
            elif b[j - 1] in KEYBOARD.get(a[i - 1], frozenset()):
                sub = d[i - 1][j - 1] + 1
            else:
                sub = inf
            best = min(d[i - 1][j] + 1, d[i][j - 1] + 1, sub)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                best = min(best, d[i - 2][j - 2] + 1)
            d[i][j] = best
    return d[len(a)][len(b)]


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
