"""Typos as the ``typo:k`` threat defines them: QWERTY neighbours, the one-edit variants of a word and
the number of edits between two words (restricted Damerau-Levenshtein of the interiors; first and
last letters kept). See :mod:`metaat.domains.text.threats`."""

from __future__ import annotations

import math
from functools import lru_cache

from metaat.domains.text.vocab import spellable

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
