"""Text classifiers over token ids ``(B, L)`` (int64, 0 = padding) returning logits.

Every model has the same three entry points, so that attacks and embedding-space training share them:

* ``embed(ids) -> (B, L, D)`` — the token vectors;
* ``forward_embedded(emb, ids) -> (B, num_classes)`` — the classifier on (possibly perturbed)
  vectors; ``ids`` marks padding, whose vectors are zeroed, so a perturbation there does nothing;
* ``forward(ids) = forward_embedded(embed(ids), ids)``; ``forward(ids, embedded=emb)`` runs the
  classifier on given vectors and ``forward(ids, bounds=(lo, hi))`` propagates a box of token vectors
  to logit bounds ``(B, 2, C)`` (interval bound propagation, Gowal et al. 2018; word-CNN heads).
  Training code calls these through ``model(...)`` so that the cost meter's forward hook counts them.

Registered (``metaat.models.create(name, num_classes, in_channels=1, image_size=L, vocab="mr")``):

* ``word-cnn`` — Kim (EMNLP 2014), "Convolutional Neural Networks for Sentence Classification":
  windows 3, 4, 5 with 100 filters each, ReLU, max over time, dropout 0.5;
* ``bilstm`` — one bidirectional LSTM layer (150 units per direction), max over the valid positions;
* ``charngram-cnn`` — character-aware: a token's vector is its word vector plus the mean of hashed
  character 2-, 3- and 4-gram vectors of its spelling (with word-boundary marks; fastText's subword
  idea, Bojanowski et al. 2017), then the word-CNN head. A typo'd or unseen word (a spelled id, see
  :mod:`.vocab`) keeps most of its n-grams instead of collapsing to ``<unk>``.

How the vocabulary reaches the factory: ``vocab="<dataset>"`` names a registered text dataset; the
factory reads that dataset's vocabulary and initialises the embedding rows from the fetched word
vectors (rows without a vector: N(0, σ²) with σ the vectors' standard deviation, seed 0; padding 0).
The name is recorded in the model's spec, so ``metaat.models.load_model`` rebuilds the same shapes
(the trained weights then replace the initial ones). Without data (tests), pass ``vocab_size``
(and ``words`` for ``charngram-cnn``) instead: embeddings are then random.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metaat.domains.text.vocab import MAX_SPELLED, PAD, SPELLED, UNK, Vocab
from metaat.models.base import MODELS

EMBED_DIM = 100
MAX_CHARS = 16
NGRAMS = (2, 3, 4)
BUCKETS = 1 << 15
_BOS, _EOS, _ALPHABET = 38, 39, 40


def _char_code(ch: str) -> int:
    if "a" <= ch <= "z":
        return ord(ch) - 96
    if "0" <= ch <= "9":
        return 27 + ord(ch) - 48
    return 37


def chars_of_words(words: Sequence[str]) -> torch.Tensor:
    """Character codes ``(V, MAX_CHARS)`` of each word (a-z = 1..26 as in spelled ids, 0 = none)."""
    out = torch.zeros(len(words), MAX_CHARS, dtype=torch.long)
    for i, word in enumerate(words):
        if i in (PAD, UNK):
            continue
        codes = [_char_code(c) for c in word[:MAX_CHARS]]
        out[i, : len(codes)] = torch.tensor(codes, dtype=torch.long)
    return out


def chars_of_spelled(ids: torch.Tensor) -> torch.Tensor:
    """Character codes ``(..., MAX_CHARS)`` of spelled ids (``>= SPELLED``); zeros elsewhere."""
    code = (ids - SPELLED).clamp_min(0)
    digits = []
    for _ in range(MAX_SPELLED):
        digits.append(code % 27)
        code = code // 27
    rev = torch.stack(digits, dim=-1)  # last letter first
    length = (rev > 0).sum(dim=-1, keepdim=True)
    pos = torch.arange(MAX_SPELLED, device=ids.device)
    letters = rev.gather(-1, (length - 1 - pos).clamp_min(0)) * (pos < length)
    return F.pad(letters, (0, MAX_CHARS - MAX_SPELLED))


def ngram_buckets(chars: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hashed n-gram buckets ``(N, G)`` and their validity ``(N, G)`` for char codes ``(N, C)``."""
    n_tok = chars.shape[0]
    length = (chars > 0).sum(dim=1)
    seq = torch.zeros(n_tok, chars.shape[1] + 2, dtype=torch.long, device=chars.device)
    seq[:, 1:-1] = chars
    seq[:, 0] = _BOS
    seq.scatter_(1, (length + 1)[:, None], _EOS)
    valid_tok = (length > 0)[:, None]
    buckets, valid = [], []
    for n in NGRAMS:
        windows = seq.unfold(1, n, 1)  # (N, C + 3 - n, n)
        h = torch.full(windows.shape[:2], n, dtype=torch.long, device=chars.device)
        for k in range(n):
            h = (h * 1_000_003 + windows[..., k]) % 2_147_483_647
        buckets.append(h % BUCKETS)
        valid.append((windows > 0).all(dim=-1) & valid_tok)
    return torch.cat(buckets, dim=1), torch.cat(valid, dim=1)


class TextClassifier(nn.Module):
    """Shared embedding logic: ids outside ``[0, V)`` read the ``<unk>`` row."""

    def __init__(self, vocab_size: int, embed_dim: int, init: torch.Tensor | None, freeze: bool) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        if init is not None:
            with torch.no_grad():
                self.embedding.weight.copy_(init)
        self.embedding.weight.requires_grad_(not freeze)

    def word_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.where((ids >= 0) & (ids < self.vocab_size), ids, torch.full_like(ids, UNK))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token vectors ``(B, L, D)``."""
        return self.embedding(self.word_ids(ids))

    def head(self, emb: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Logits from masked token vectors ``(B, L, D)`` and the valid-position mask ``(B, L)``."""
        raise NotImplementedError

    def forward_embedded(self, emb: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits from token vectors ``emb`` ``(B, L, D)``; padding positions of ``ids`` are zeroed."""
        mask = (ids != PAD).unsqueeze(-1).to(emb.dtype)
        return self.head(emb * mask, ids != PAD)

    def head_bounds(self, lo: torch.Tensor, hi: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Lower and upper logits ``(B, 2, C)`` over every token-vector tensor in ``[lo, hi]``."""
        raise NotImplementedError(
            f"{type(self).__name__} has no interval bounds; IBP is implemented for word-cnn and charngram-cnn"
        )

    def forward(
        self,
        ids: torch.Tensor,
        embedded: torch.Tensor | None = None,
        bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if bounds is not None:
            lo, hi = bounds
            mask = (ids != PAD).unsqueeze(-1).to(lo.dtype)
            return self.head_bounds(lo * mask, hi * mask, ids != PAD)
        return self.forward_embedded(self.embed(ids) if embedded is None else embedded, ids)


class WordCNN(TextClassifier):
    """Kim (2014) CNN over word vectors."""

    def __init__(
        self,
        num_classes: int,
        vocab_size: int,
        embed_dim: int = EMBED_DIM,
        init: torch.Tensor | None = None,
        freeze: bool = False,
        filters: int = 100,
        windows: Sequence[int] = (3, 4, 5),
        dropout: float = 0.5,
    ) -> None:
        super().__init__(vocab_size, embed_dim, init, freeze)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, filters, w, padding=w - 1) for w in windows)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(filters * len(windows), num_classes)

    def head(self, emb: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = emb.transpose(1, 2)  # (B, D, L)
        pooled = [F.relu(conv(h)).amax(dim=2) for conv in self.convs]
        return self.fc(self.dropout(torch.cat(pooled, dim=1)))

    def head_bounds(self, lo: torch.Tensor, hi: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Interval arithmetic through the head: convolution and linear layers map (centre, radius)
        to (W·c + b, |W|·r); ReLU and max over time are monotone. In train mode one dropout mask
        scales both bounds (it is non-negative, so they stay ordered)."""
        centre, radius = ((lo + hi) / 2).transpose(1, 2), ((hi - lo) / 2).transpose(1, 2)
        lows, highs = [], []
        for conv in self.convs:
            assert isinstance(conv, nn.Conv1d)
            c = conv(centre)
            r = F.conv1d(radius, conv.weight.abs(), None, padding=conv.padding[0])
            lows.append(F.relu(c - r).amax(dim=2))
            highs.append(F.relu(c + r).amax(dim=2))
        low, high = torch.cat(lows, dim=1), torch.cat(highs, dim=1)
        keep = self.dropout(torch.ones_like(low))
        low, high = low * keep, high * keep
        c, r = self.fc((low + high) / 2), F.linear((high - low) / 2, self.fc.weight.abs())
        return torch.stack((c - r, c + r), dim=1)


class BiLSTM(TextClassifier):
    """One bidirectional LSTM layer; max over valid positions; linear classifier."""

    def __init__(
        self,
        num_classes: int,
        vocab_size: int,
        embed_dim: int = EMBED_DIM,
        init: torch.Tensor | None = None,
        freeze: bool = False,
        hidden: int = 150,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(vocab_size, embed_dim, init, freeze)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * hidden, num_classes)

    def head(self, emb: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(emb)  # (B, L, 2H)
        out = out.masked_fill(~valid.unsqueeze(-1), float("-inf"))
        pooled = out.amax(dim=1)
        pooled = torch.where(torch.isfinite(pooled), pooled, torch.zeros_like(pooled))  # an all-padding row
        return self.fc(self.dropout(pooled))


class CharNgramCNN(WordCNN):
    """Word-CNN whose token vector adds the mean of hashed character n-gram vectors."""

    vocab_chars: torch.Tensor

    def __init__(self, num_classes: int, vocab_size: int, words: Sequence[str], **kwargs: Any) -> None:
        super().__init__(num_classes, vocab_size, **kwargs)
        if len(words) != vocab_size:
            raise ValueError(f"charngram-cnn needs one word per id: {len(words)} words for {vocab_size} ids")
        dim = self.embedding.embedding_dim
        self.ngrams = nn.Embedding(BUCKETS, dim)
        nn.init.normal_(self.ngrams.weight, std=0.1)
        self.register_buffer("vocab_chars", chars_of_words(words))

    def token_chars(self, ids: torch.Tensor) -> torch.Tensor:
        known = self.vocab_chars[ids.clamp(0, self.vocab_size - 1)]
        known = known * ((ids >= 0) & (ids < self.vocab_size)).unsqueeze(-1)
        return torch.where((ids > SPELLED).unsqueeze(-1), chars_of_spelled(ids), known)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        words = super().embed(ids)
        flat = self.token_chars(ids).reshape(-1, MAX_CHARS)
        buckets, valid = ngram_buckets(flat)
        weights = valid.to(words.dtype)
        sums = F.embedding_bag(buckets, self.ngrams.weight, mode="sum", per_sample_weights=weights)
        mean = sums / weights.sum(dim=1, keepdim=True).clamp_min(1.0)
        return words + mean.reshape(words.shape)


@lru_cache(maxsize=4)
def _pretrained(vocab: str, data_dir: str | None) -> tuple[Vocab, torch.Tensor]:
    from metaat.domains.text.data import load_corpus
    from metaat.domains.text.synonyms import load_vectors

    folder = Path(data_dir) if data_dir else None
    v = load_corpus(vocab, folder).vocab
    words, vectors = load_vectors(folder)
    return v, embedding_matrix(v, words, vectors)


def embedding_matrix(vocab: Vocab, words: Sequence[str], vectors: np.ndarray, seed: int = 0) -> torch.Tensor:
    """``(len(vocab), D)`` float32: the vector of each vocabulary word, N(0, σ²) where it has none
    (σ = the vectors' standard deviation; seeded), zeros for padding."""
    index = {w: i for i, w in enumerate(words)}
    gen = torch.Generator().manual_seed(seed)
    sigma = float(vectors.std()) if vectors.size else 0.1
    out = torch.randn(len(vocab), vectors.shape[1], generator=gen) * sigma
    rows = [(i, index[w]) for i, w in enumerate(vocab.words) if w in index]
    if rows:
        mine, theirs = zip(*rows, strict=True)
        out[list(mine)] = torch.as_tensor(vectors[list(theirs)])
    out[PAD] = 0.0
    return out


def _resolve(
    vocab: str | None, vocab_size: int | None, data_dir: str | None
) -> tuple[int, torch.Tensor | None, Vocab | None]:
    if vocab is not None:
        v, init = _pretrained(vocab, data_dir)
        return len(v), init, v
    if vocab_size is None or vocab_size < 3:
        raise ValueError("a text model needs vocab='<text dataset>' (e.g. vocab='mr') or vocab_size >= 3")
    return vocab_size, None, None


def _factory(cls: type[TextClassifier], chars: bool = False) -> Any:
    def factory(
        num_classes: int,
        in_channels: int = 1,
        image_size: int = 50,
        *,
        vocab: str | None = None,
        vocab_size: int | None = None,
        words: Sequence[str] | None = None,
        data_dir: str | None = None,
        freeze_embeddings: bool = False,
        **kwargs: Any,
    ) -> nn.Module:
        if in_channels != 1:
            raise ValueError(f"text models take token ids (in_channels=1); got in_channels={in_channels}")
        size, init, v = _resolve(vocab, vocab_size, data_dir)
        if chars:
            names = list(v.words) if v is not None else list(words or [])
            return cls(num_classes, size, names, init=init, freeze=freeze_embeddings, **kwargs)  # type: ignore[call-arg,arg-type,misc]
        return cls(num_classes, size, init=init, freeze=freeze_embeddings, **kwargs)  # type: ignore[call-arg]

    factory.input_rank = 0  # type: ignore[attr-defined]
    factory.domain = "text"  # type: ignore[attr-defined]
    return factory


word_cnn = MODELS.register("word-cnn", help="Kim (2014) word CNN over token ids (text)")(_factory(WordCNN))
bilstm = MODELS.register("bilstm", help="Bidirectional LSTM over token ids (text)")(_factory(BiLSTM))
charngram_cnn = MODELS.register("charngram-cnn", help="Word CNN with hashed character n-grams, robust to typos (text)")(
    _factory(CharNgramCNN, chars=True)
)
