"""The substitution space of one vocabulary: which id may replace which.

A :class:`TextSpace` pairs a :class:`~metaat.domains.text.vocab.Vocab` with its allowed synonym
substitutions as a compressed table (``offsets``/``targets``, the CSR layout: the substitutes of id
``i`` are ``targets[offsets[i]:offsets[i + 1]]``, nearest first). The threat kinds ``syn`` and
``typo`` need it to test membership, and the text attacks to enumerate edits; the text datasets
activate theirs when loaded (:func:`activate`), and an attack or test may pass one explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from metaat.domains.text.vocab import Vocab


@dataclass(frozen=True, eq=False)
class TextSpace:
    """A vocabulary and its synonym substitutions (ids)."""

    vocab: Vocab
    offsets: np.ndarray
    targets: np.ndarray

    @classmethod
    def from_table(cls, vocab: Vocab, table: Mapping[str, Sequence[str]]) -> TextSpace:
        """Substitutes of each vocabulary word: its ``table`` entries that are in the vocabulary
        (order kept), never the word itself."""
        offsets = np.zeros(len(vocab) + 1, dtype=np.int64)
        targets: list[int] = []
        for i, word in enumerate(vocab.words):
            if i >= 2:
                targets += [vocab.index[s] for s in table.get(word, ()) if s in vocab.index and s != word]
            offsets[i + 1] = len(targets)
        return cls(vocab, offsets, np.asarray(targets, dtype=np.int64))

    def substitutes(self, token_id: int) -> np.ndarray:
        """Allowed replacement ids of ``token_id`` (empty for padding, ``<unk>`` and spelled ids)."""
        token_id = int(token_id)
        if token_id < 0 or token_id >= len(self.vocab):
            return self.targets[:0]
        return self.targets[self.offsets[token_id] : self.offsets[token_id + 1]]

    def allowed(self, original: int, replacement: int) -> bool:
        """True when ``replacement`` is one of ``original``'s substitutes."""
        return bool(np.isin(replacement, self.substitutes(original)).item())

    def stats(self) -> dict[str, float]:
        """Number of words with a substitute and the mean number per such word."""
        counts = np.diff(self.offsets)
        having = int((counts > 0).sum())
        return {
            "vocab": float(len(self.vocab)),
            "words_with_substitutes": float(having),
            "substitutes_per_word": float(counts[counts > 0].mean()) if having else 0.0,
        }


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
            "or call metaat.domains.text.space.activate(space_for('mr'))"
        )
    return _ACTIVE[0]


@lru_cache(maxsize=4)
def space_for(name: str, data_dir: Path | None = None) -> TextSpace:
    """The substitution space of text dataset ``name`` (its vocabulary and the synonym filter)."""
    from metaat.domains.text.data import load_corpus
    from metaat.domains.text.synonyms import substitution_table

    return TextSpace.from_table(load_corpus(name, data_dir).vocab, substitution_table(data_dir))
