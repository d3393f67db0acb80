"""Tokeniser, vocabulary and the id encoding every text model and attack shares.

Tokeniser (deterministic, no model): Unicode NFKD with combining marks dropped (``é`` -> ``e``),
lower case, then the tokens are the maximal runs of ``[a-z0-9]`` plus each ``!`` and ``?``; every
other character separates tokens (``"Isn't it GREAT?!"`` -> ``isn t it great ? !``).

Ids: ``0`` is padding, ``1`` is ``<unk>``, ``2 .. V-1`` are vocabulary words. A word outside the
vocabulary that is spelled only with ``a-z`` and has at most :data:`MAX_SPELLED` letters is encoded
*by its spelling* as the id ``SPELLED + code`` (``code`` = the word read as a base-27 number,
``a`` = 1 ... ``z`` = 26; :data:`SPELLED` = 2**62, far above any vocabulary; ids stay non-negative),
so that a typo such as ``terible`` stays a distinct, decodable token without any shared table:
word-embedding models read it as ``<unk>`` (every id at or above their vocabulary size does); the
character-aware model reads its letters. Other unknown tokens become ``<unk>``.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

PAD, UNK = 0, 1
PAD_TOKEN, UNK_TOKEN = "<pad>", "<unk>"
MAX_SPELLED = 13
"""Longest word encoded by its spelling: 27**13 < 2**63, so the code fits in an int64."""
_BASE = 27
SPELLED = 1 << 62
"""Ids from here on are spelled words (``SPELLED + code``; every id stays a non-negative int64)."""
_TOKEN = re.compile(r"[a-z0-9]+|[!?]")
_LETTERS = re.compile(r"[a-z]+")


def tokenize(text: str) -> list[str]:
    """Split ``text`` into lower-case tokens (see the module docstring for the exact rule).

    >>> tokenize("Isn't it GREAT?! Café")
    ['isn', 't', 'it', 'great', '?', '!', 'cafe']
    """
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(c for c in folded if not unicodedata.combining(c)).lower()
    return _TOKEN.findall(folded)


def spellable(word: str) -> bool:
    """True when ``word`` can be encoded by its spelling (``a-z`` only, 1..13 letters)."""
    return 0 < len(word) <= MAX_SPELLED and _LETTERS.fullmatch(word) is not None


def spell(word: str) -> int:
    """The id of a spellable word.

    >>> spell("ab") - SPELLED, unspell(spell("terible"))
    (29, 'terible')
    """
    if not spellable(word):
        raise ValueError(f"{word!r} cannot be spelled as an id (a-z only, at most {MAX_SPELLED} letters)")
    code = 0
    for ch in word:
        code = code * _BASE + (ord(ch) - 96)
    return SPELLED + code


def is_spelled(token_id: int) -> bool:
    """True for the id of a word encoded by its spelling."""
    return int(token_id) > SPELLED


def unspell(token_id: int) -> str:
    """Inverse of :func:`spell`."""
    code = int(token_id) - SPELLED
    if code <= 0:
        raise ValueError(f"{token_id} is not a spelled id (spelled ids are above {SPELLED})")
    letters: list[str] = []
    while code:
        code, digit = divmod(code, _BASE)
        if digit == 0:
            raise ValueError(f"{token_id} is not a valid spelled id")
        letters.append(chr(96 + digit))
    return "".join(reversed(letters))


@dataclass(frozen=True)
class Vocab:
    """Words by id: ``words[0] = "<pad>"``, ``words[1] = "<unk>"``, then the vocabulary."""

    words: tuple[str, ...]
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.words[:2] != (PAD_TOKEN, UNK_TOKEN):
            raise ValueError(f"a vocabulary starts with {PAD_TOKEN!r}, {UNK_TOKEN!r}; got {self.words[:2]}")
        index = {w: i for i, w in enumerate(self.words)}
        if len(index) != len(self.words):
            raise ValueError("a vocabulary must not repeat a word")
        object.__setattr__(self, "index", index)

    def __len__(self) -> int:
        return len(self.words)

    def id(self, word: str) -> int:
        """The id of ``word``: its vocabulary id, else its spelled id, else ``<unk>``."""
        found = self.index.get(word)
        if found is not None:
            return found
        return spell(word) if spellable(word) else UNK

    def word(self, token_id: int) -> str:
        """The string of an id (vocabulary word, spelled word, ``<pad>`` or ``<unk>``)."""
        token_id = int(token_id)
        if is_spelled(token_id):
            return unspell(token_id)
        if token_id < 0 or token_id >= len(self.words):
            raise ValueError(f"id {token_id} is outside the vocabulary of {len(self.words)} words")
        return self.words[token_id]

    def encode(self, tokens: Sequence[str], length: int) -> np.ndarray:
        """int64 ids ``(length,)``: the first ``length`` tokens, right-padded with 0."""
        ids = np.zeros(length, dtype=np.int64)
        for i, token in enumerate(tokens[:length]):
            ids[i] = self.id(token)
        return ids

    def encode_all(self, texts: Sequence[Sequence[str]], length: int) -> np.ndarray:
        """int64 ids ``(N, length)`` for tokenised texts."""
        out = np.zeros((len(texts), length), dtype=np.int64)
        for row, tokens in enumerate(texts):
            out[row] = self.encode(tokens, length)
        return out

    def decode(self, ids: Iterable[int]) -> list[str]:
        """The tokens of one id row, padding left out."""
        return [self.word(i) for i in ids if int(i) != PAD]


def build_vocab(texts: Iterable[Sequence[str]], min_count: int = 2, extra: Iterable[str] = ()) -> Vocab:
    """A vocabulary of the tokens seen at least ``min_count`` times in ``texts`` (most frequent first,
    ties alphabetical), followed by the ``extra`` words not already in it (sorted): pass the
    training split only, and the synonyms attacks may substitute as ``extra``."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    counts: Counter[str] = Counter()
    for tokens in texts:
        counts.update(tokens)
    kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    seen = set(kept) | {PAD_TOKEN, UNK_TOKEN}
    added = sorted(set(extra) - seen)
    return Vocab((PAD_TOKEN, UNK_TOKEN, *kept, *added))
