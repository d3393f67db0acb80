"""The substitution space of one vocabulary: which id may replace which.

A :class:`TextSpace` pairs a :class:`~metaat.domains.text.vocab.Vocab` with two substitution tables
in the compressed (CSR) layout — the entries of id ``i`` are ``targets[offsets[i]:offsets[i + 1]]``,
nearest first:

* the allowed **synonyms** (threat ``syn``; WordNet ∩ counter-fitted distance, :mod:`.synonyms`);
* the held-out **vector neighbours** (threat ``nbr``, the unseen family): the counter-fitted nearest
  neighbours within the vocabulary (at most :data:`NEIGHBOURS` = 8, cosine distance ≤ δ = 0.5) that
  are *not* allowed synonyms, so the two sets never overlap.

The threat kinds ``syn``, ``nbr`` and ``typo`` need the space to test membership, and the text
attacks to enumerate edits; the text datasets activate theirs when loaded (:func:`activate`), and
an attack or test may pass one explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from metaat.domains.text.vocab import Vocab

NEIGHBOURS = 8
NEIGHBOUR_DELTA = 0.5


def space_table(vocab: Vocab, table: Mapping[str, Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """One substitution table in CSR form over ``vocab``'s ids (entries outside it and self dropped)."""
    offsets = np.zeros(len(vocab) + 1, dtype=np.int64)
    targets: list[int] = []
    for i, word in enumerate(vocab.words):
        if i >= 2:
            targets += [vocab.index[s] for s in table.get(word, ()) if s in vocab.index and s != word]
        offsets[i + 1] = len(targets)
    return offsets, np.asarray(targets, dtype=np.int64)


def _row(offsets: np.ndarray, targets: np.ndarray, token_id: int) -> np.ndarray:
    token_id = int(token_id)
    if token_id < 0 or token_id + 1 >= len(offsets):
        return targets[:0]
    return targets[offsets[token_id] : offsets[token_id + 1]]


@dataclass(frozen=True, eq=False)
class TextSpace:
    """A vocabulary, its synonym substitutions and its held-out neighbour substitutions (ids)."""

    vocab: Vocab
    offsets: np.ndarray
    targets: np.ndarray
    neighbour_offsets: np.ndarray | None = None
    neighbour_targets: np.ndarray | None = None
    neighbour_table: Callable[[], Mapping[str, Sequence[str]]] | None = field(default=None, repr=False)
    """Computes the neighbour table on first use (it costs a pass over the vocabulary's vectors)."""

    @classmethod
    def from_table(
        cls, vocab: Vocab, table: Mapping[str, Sequence[str]], neighbours: Mapping[str, Sequence[str]] | None = None
    ) -> TextSpace:
        """Substitutes of each vocabulary word: its ``table`` (and ``neighbours``) entries that are in
        the vocabulary (order kept), never the word itself; a neighbour that is also a synonym is dropped."""
        offsets, targets = space_table(vocab, table)
        if neighbours is None:
            return cls(vocab, offsets, targets)
        held_out = {w: [n for n in ns if n not in set(table.get(w, ()))] for w, ns in neighbours.items()}
        n_offsets, n_targets = space_table(vocab, held_out)
        return cls(vocab, offsets, targets, n_offsets, n_targets)

    def substitutes(self, token_id: int) -> np.ndarray:
        """Allowed synonym ids of ``token_id`` (empty for padding, ``<unk>`` and spelled ids)."""
        return _row(self.offsets, self.targets, token_id)

    def neighbours(self, token_id: int) -> np.ndarray:
        """Held-out vector-neighbour ids of ``token_id`` (never one of its synonyms)."""
        if self.neighbour_offsets is None and self.neighbour_table is not None:
            synonyms = {
                w: tuple(self.vocab.words[j] for j in self.substitutes(i)) for i, w in enumerate(self.vocab.words)
            }
            built = TextSpace.from_table(self.vocab, synonyms, self.neighbour_table())
            object.__setattr__(self, "neighbour_offsets", built.neighbour_offsets)
            object.__setattr__(self, "neighbour_targets", built.neighbour_targets)
        if self.neighbour_offsets is None or self.neighbour_targets is None:
            return self.targets[:0]
        return _row(self.neighbour_offsets, self.neighbour_targets, token_id)

    def allowed(self, original: int, replacement: int, table: str = "syn") -> bool:
        """True when ``replacement`` is one of ``original``'s synonyms (``table="nbr"``: neighbours)."""
        row = self.neighbours(original) if table == "nbr" else self.substitutes(original)
        return bool((row == replacement).any())

    def stats(self) -> dict[str, float]:
        """Number of words with a substitute (a neighbour) and the mean number per such word."""
        counts = np.diff(self.offsets)
        having = int((counts > 0).sum())
        out = {
            "vocab": float(len(self.vocab)),
            "words_with_substitutes": float(having),
            "substitutes_per_word": float(counts[counts > 0].mean()) if having else 0.0,
        }
        if self.neighbour_offsets is not None or self.neighbour_table is not None:
            self.neighbours(0)
            assert self.neighbour_offsets is not None
            n_counts = np.diff(self.neighbour_offsets)
            n_having = int((n_counts > 0).sum())
            out["words_with_neighbours"] = float(n_having)
            out["neighbours_per_word"] = float(n_counts[n_counts > 0].mean()) if n_having else 0.0
        return out


_ACTIVE: list[TextSpace] = []


def activate(space: TextSpace) -> TextSpace:
    """Make ``space`` the one the ``syn``/``typo`` threat kinds and the text attacks use by default."""
    _ACTIVE[:] = [space]
    return space


def active_space() -> TextSpace:
    """The space activated last (by loading a text dataset, or :func:`activate`)."""
    if not _ACTIVE:
        raise RuntimeError(
            "no text vocabulary is active: load a text dataset first (metaat.data.load('mr', ...)) "
            "or call metaat.domains.text.space.activate(metaat.domains.text.data.space_for('mr'))"
        )
    return _ACTIVE[0]
