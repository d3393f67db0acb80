"""Synonym sets for word-substitution threats: WordNet filtered by counter-fitted vector distance.

* **WordNet 3.0** is read straight from its database files (``data.noun``, ``data.verb``,
  ``data.adj``, ``data.adv``; format ``wndb(5WN)``): two words are WordNet synonyms when they are
  lemmas of one synset; only single-word, lower-case lemmas are kept (``a-z`` only: no proper nouns,
  no collocations), with the synset's part of speech (adjective satellites count as adjectives).
  Antonyms are the ``!`` pointers (lexical: the two words named; semantic: every word of both synsets).
* **Counter-fitting** (Mrkšić et al., NAACL 2016, "Counter-fitting Word Vectors to Linguistic
  Constraints") moves unit-length word vectors to minimise, with ``d = 1 - cos`` and ``τ(x) = max(0, x)``,
  ``Σ_antonyms τ(δ_ant - d(u, w)) + Σ_synonyms τ(d(u, w) - δ_syn) + Σ_i Σ_(j ∈ N(i)) τ(d'(i, j) - d(i, j))``:
  antonyms are repelled to distance ``δ_ant = 1``, synonyms attracted, and each constrained word keeps
  its original neighbourhood ``N(i)`` (original distance below ``ρ = 0.2``, the constrained pairs
  left out) no farther than it was (vector space preservation). Mini-batch SGD over the constraints for a few epochs.
* **The filter**: ``w -> s`` is an allowed substitution when ``s`` is a WordNet synonym of ``w`` and
  the counter-fitted cosine distance ``d(w, s) <= δ`` (:data:`DEFAULT_DELTA` = 0.5, TextFooler's
  similarity threshold). Without a tagger the part of speech is that of the synset the two words
  share, not checked against the sentence.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from metaat.data.base import DataError
from metaat.domains.text import files

POS_FILES: dict[str, str] = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
DEFAULT_DELTA = 0.5
COUNTERFIT_VERSION = "2"
"""Part of the counter-fitted cache's key: bump it when :func:`counter_fit` changes."""
_LEMMA = re.compile(r"[a-z]+")
_MARKER = re.compile(r"\([a-z]+\)$")  # adjective position markers: (a), (p), (ip)


@dataclass(frozen=True)
class WordNet:
    """WordNet reduced to what substitutions need: synsets of single-word lemmas, antonym pairs."""

    synsets: tuple[tuple[str, tuple[str, ...]], ...]
    """``(pos, lemmas)`` per synset with at least one kept lemma (pos in n, v, a, r)."""
    antonyms: frozenset[tuple[str, str]]
    """Unordered antonym pairs ``(a, b)`` with ``a < b``."""

    def synonym_pos(self) -> dict[str, dict[str, frozenset[str]]]:
        """``word -> {synonym -> parts of speech of the synsets they share}``."""
        out: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for pos, lemmas in self.synsets:
            for a in lemmas:
                for b in lemmas:
                    if a != b:
                        out[a][b].add(pos)
        return {w: {s: frozenset(p) for s, p in d.items()} for w, d in out.items()}


def _keep(lemma: str) -> str | None:
    word = _MARKER.sub("", lemma)
    return word if _LEMMA.fullmatch(word) else None


def parse_wordnet_lines(lines_by_pos: Mapping[str, Iterable[str]]) -> WordNet:
    """Parse ``wndb`` data-file lines (per part of speech ``n v a r``) into a :class:`WordNet`."""
    raw: dict[tuple[str, int], tuple[str, list[str]]] = {}
    pointers: list[tuple[str, int, str, int, int, int]] = []
    for file_pos, lines in lines_by_pos.items():
        for number, line in enumerate(lines, 1):
            if not line or line.startswith("  ") or not line[0].isdigit():
                continue  # the licence header
            try:
                fields = line.split(" | ", 1)[0].split()
                offset, pos = int(fields[0]), fields[2]
                count = int(fields[3], 16)
                lemmas = [fields[4 + 2 * i] for i in range(count)]
                at = 4 + 2 * count
                n_ptr = int(fields[at])
                for p in range(n_ptr):
                    symbol, target, target_pos, st = fields[at + 1 + 4 * p : at + 5 + 4 * p]
                    if symbol == "!":
                        tp = "a" if target_pos == "s" else target_pos
                        pointers.append((file_pos, offset, tp, int(target), int(st[:2], 16), int(st[2:], 16)))
            except (IndexError, ValueError) as exc:
                raise DataError(f"WordNet {POS_FILES[file_pos]} line {number}: malformed ({exc})") from None
            raw[(file_pos, offset)] = ("a" if pos == "s" else pos, lemmas)
    synsets = []
    for pos, lemmas in raw.values():
        kept = tuple(dict.fromkeys(w for w in (_keep(x) for x in lemmas) if w))
        if kept:
            synsets.append((pos, kept))
    antonyms: set[tuple[str, str]] = set()
    for file_pos, offset, target_pos, target_offset, src, dst in pointers:
        source_lemmas = raw[(file_pos, offset)][1]
        target_entry = raw.get((target_pos, target_offset))
        if target_entry is None:
            continue
        left = source_lemmas if src == 0 else source_lemmas[src - 1 : src]
        right = target_entry[1] if dst == 0 else target_entry[1][dst - 1 : dst]
        for a in (_keep(x) for x in left):
            for b in (_keep(x) for x in right):
                if a and b and a != b:
                    antonyms.add((min(a, b), max(a, b)))
    return WordNet(tuple(synsets), frozenset(antonyms))


def read_wordnet(folder: Path) -> WordNet:
    """Read WordNet's four data files from ``folder`` (each checked against its pinned SHA-256)."""
    lines: dict[str, list[str]] = {}
    for pos, name in POS_FILES.items():
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"WordNet file {path} not found; run {files.FETCH_COMMAND}")
        files.check_sha256(path, files.WORDNET_SHA256[name])
        lines[pos] = path.read_text(encoding="utf-8", errors="strict").splitlines()
    return parse_wordnet_lines(lines)


@lru_cache(maxsize=2)
def load_wordnet(data_dir: Path | None = None) -> WordNet:
    """The fetched WordNet (cached per process)."""
    return read_wordnet(files.locate(files.WORDNET_DIR, data_dir))


@dataclass(frozen=True)
class CounterFitConfig:
    """Counter-fitting hyper-parameters (Mrkšić et al. 2016 use δ_ant = 1, δ_syn = 0, ρ = 0.2)."""

    epochs: int = 5
    lr: float = 0.05
    batch_size: int = 256
    antonym_margin: float = 1.0
    synonym_margin: float = 0.0
    neighbour_radius: float = 0.2
    max_neighbours: int = 20
    seed: int = 0


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _neighbours(unit: torch.Tensor, rows: torch.Tensor, radius: float, cap: int) -> torch.Tensor:
    """Pairs ``(i, j)``, ``i`` in ``rows``, ``j != i`` with original distance ``< radius`` (at most
    ``cap`` nearest per ``i``), shape ``(P, 2)``."""
    pairs = []
    for start in range(0, len(rows), 1024):
        idx = rows[start : start + 1024]
        sims = unit[idx] @ unit.T  # (b, V)
        sims[torch.arange(len(idx)), idx] = -2.0
        k = min(cap, unit.shape[0] - 1)
        if k <= 0:
            break
        top, cols = sims.topk(k, dim=1)
        mask = top > 1.0 - radius
        left = idx[:, None].expand_as(cols)[mask]
        pairs.append(torch.stack([left, cols[mask]], dim=1))
    return torch.cat(pairs) if pairs else torch.zeros(0, 2, dtype=torch.long)


def counter_fit(
    vectors: np.ndarray,
    synonyms: np.ndarray,
    antonyms: np.ndarray,
    config: CounterFitConfig = CounterFitConfig(),
) -> np.ndarray:
    """Counter-fit ``vectors`` ``(V, D)`` to synonym and antonym index pairs ``(P, 2)`` / ``(Q, 2)``;
    returns unit-length float32 vectors ``(V, D)``. Deterministic for a fixed ``config.seed``."""
    original = _unit(torch.as_tensor(vectors, dtype=torch.float32))
    syn = torch.as_tensor(synonyms, dtype=torch.long).reshape(-1, 2)
    ant = torch.as_tensor(antonyms, dtype=torch.long).reshape(-1, 2)
    constrained = torch.unique(torch.cat([syn.flatten(), ant.flatten()]))
    with torch.no_grad():
        near = _neighbours(original, constrained, config.neighbour_radius, config.max_neighbours)
        # A constrained pair is not also held in place (an antonym is often a distributional neighbour).
        n = original.shape[0]
        fixed = torch.cat([syn, ant, syn.flip(1), ant.flip(1)])
        keep = ~torch.isin(near[:, 0] * n + near[:, 1], fixed[:, 0] * n + fixed[:, 1])
        near = near[keep]
        near_dist = 1.0 - (original[near[:, 0]] * original[near[:, 1]]).sum(-1)
    current = original.clone()
    gen = torch.Generator().manual_seed(config.seed)
    kinds = [(0, syn), (1, ant), (2, near)]
    jobs = [(k, i) for k, pairs in kinds for i in range(0, len(pairs), config.batch_size)]
    for _ in range(config.epochs):
        perms = [torch.randperm(len(pairs), generator=gen) for _, pairs in kinds]
        for j in torch.randperm(len(jobs), generator=gen).tolist():
            kind, start = jobs[j]
            sel = perms[kind][start : start + config.batch_size]
            pairs = kinds[kind][1][sel]
            # Only the rows in the batch move (a sparse SGD step): gather, differentiate, scatter back.
            left = current[pairs[:, 0]].requires_grad_(True)
            right = current[pairs[:, 1]].requires_grad_(True)
            dist = 1.0 - (_unit(left) * _unit(right)).sum(-1)
            if kind == 0:
                loss = torch.relu(dist - config.synonym_margin).sum()
            elif kind == 1:
                loss = torch.relu(config.antonym_margin - dist).sum()
            else:
                loss = torch.relu(dist - near_dist[sel]).sum()
            g_left, g_right = torch.autograd.grad(loss, (left, right))
            current.index_add_(0, pairs[:, 0], g_left, alpha=-config.lr)
            current.index_add_(0, pairs[:, 1], g_right, alpha=-config.lr)
    return _unit(current).numpy().astype(np.float32)


def constraint_pairs(words: Sequence[str], wordnet: WordNet) -> tuple[np.ndarray, np.ndarray]:
    """Synonym and antonym index pairs among ``words`` (each unordered pair once, sorted)."""
    index = {w: i for i, w in enumerate(words)}
    syn: set[tuple[int, int]] = set()
    for _, lemmas in wordnet.synsets:
        ids = sorted({index[w] for w in lemmas if w in index})
        syn.update((a, b) for n, a in enumerate(ids) for b in ids[n + 1 :])
    ant = {tuple(sorted((index[a], index[b]))) for a, b in wordnet.antonyms if a in index and b in index}
    as_array = lambda s: np.array(sorted(s), dtype=np.int64).reshape(-1, 2)  # noqa: E731
    return as_array(syn), as_array(ant)


def allowed_substitutions(
    words: Sequence[str],
    unit_vectors: np.ndarray,
    wordnet: WordNet,
    delta: float = DEFAULT_DELTA,
) -> dict[str, tuple[str, ...]]:
    """``word -> substitutes``: WordNet synonyms with counter-fitted cosine distance ``<= delta``,
    nearest first (ties alphabetical); only words in ``words`` (rows of ``unit_vectors``)."""
    index = {w: i for i, w in enumerate(words)}
    out: dict[str, tuple[str, ...]] = {}
    for word, syns in sorted(wordnet.synonym_pos().items()):
        i = index.get(word)
        if i is None:
            continue
        cands = sorted(s for s in syns if s in index)
        if not cands:
            continue
        dist = 1.0 - unit_vectors[[index[s] for s in cands]] @ unit_vectors[i]
        keep = sorted((float(d), s) for d, s in zip(dist, cands, strict=True) if d <= delta)
        if keep:
            out[word] = tuple(s for _, s in keep)
    return out


def nearest_neighbours(
    among: Sequence[str], words: Sequence[str], unit_vectors: np.ndarray, k: int, delta: float
) -> dict[str, tuple[str, ...]]:
    """For each word of ``among`` that has a vector: its ``k`` nearest other words of ``among`` by
    cosine distance, those within ``delta``, nearest first (ties alphabetical)."""
    index = {w: i for i, w in enumerate(words)}
    kept = sorted(w for w in set(among) if w in index)
    if not kept:
        return {}
    mat = torch.as_tensor(unit_vectors[[index[w] for w in kept]], dtype=torch.float32)
    out: dict[str, tuple[str, ...]] = {}
    for start in range(0, len(kept), 2048):
        sims = mat[start : start + 2048] @ mat.T
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = -2.0
        top, cols = sims.topk(min(k, len(kept) - 1), dim=1) if len(kept) > 1 else (sims[:, :0], sims[:, :0].long())
        for r in range(sims.shape[0]):
            pairs = sorted((1.0 - float(s), kept[int(c)]) for s, c in zip(top[r], cols[r], strict=True))
            near = tuple(w for d, w in pairs if d <= delta)
            if near:
                out[kept[start + r]] = near
    return out


def load_vectors(data_dir: Path | None = None) -> tuple[list[str], np.ndarray]:
    """The fetched vector subset: ``(words, float32 (V, 100))``, checked against its manifest."""
    path = files.locate(files.VECTORS_FILE, data_dir)
    folder = path.parent.parent
    manifest = files.read_manifest(folder / files.VECTORS_MANIFEST)
    words_path = folder / files.VECTOR_WORDS_FILE
    for p, name in ((path, files.VECTORS_FILE), (words_path, files.VECTOR_WORDS_FILE)):
        if not p.is_file():
            raise FileNotFoundError(f"text data file {p} not found; run {files.FETCH_COMMAND}")
        if name not in manifest:
            raise DataError(f"{folder / files.VECTORS_MANIFEST}: no checksum for {name}; run {files.FETCH_COMMAND}")
        files.check_sha256(p, manifest[name])
    words = words_path.read_text(encoding="utf-8").split("\n")
    vectors = np.load(path, allow_pickle=False)
    if vectors.ndim != 2 or vectors.shape[0] != len(words) or vectors.dtype != np.float32:
        raise DataError(f"{path}: expected float32 ({len(words)}, D) vectors, got {vectors.dtype} {vectors.shape}")
    return words, vectors


def _cache_key(parts: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:16]


def counterfitted_vectors(
    data_dir: Path | None = None, config: CounterFitConfig = CounterFitConfig()
) -> tuple[list[str], np.ndarray]:
    """Counter-fitted unit vectors of the fetched subset, computed once and cached on disk
    (``vectors/counterfit-<key>.npy`` plus its SHA-256 in ``.sha256``; key = inputs + config)."""
    words, vectors = load_vectors(data_dir)
    folder = files.locate(files.VECTORS_FILE, data_dir).parent
    manifest = files.read_manifest(folder.parent / files.VECTORS_MANIFEST)
    key = _cache_key(
        [
            COUNTERFIT_VERSION,
            manifest[files.VECTORS_FILE],
            *sorted(files.WORDNET_SHA256.values()),
            json.dumps(asdict(config)),
        ]
    )
    for cache_dir in (folder, files.default_dir() / files.VECTORS_DIR):
        cached = cache_dir / f"counterfit-{key}.npy"
        digest = cached.with_suffix(".sha256")
        if cached.is_file() and digest.is_file():
            files.check_sha256(cached, digest.read_text().strip())
            return words, np.load(cached, allow_pickle=False)
    syn, ant = constraint_pairs(words, load_wordnet(data_dir))
    fitted = counter_fit(vectors, syn, ant, config)
    for cache_dir in (folder, files.default_dir() / files.VECTORS_DIR):
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            cached = cache_dir / f"counterfit-{key}.npy"
            tmp = cache_dir / f".counterfit-{key}.tmp.npy"
            np.save(tmp, fitted, allow_pickle=False)
            tmp.replace(cached)
            cached.with_suffix(".sha256").write_text(files.sha256_file(cached) + "\n")
            break
        except OSError:
            continue
    return words, fitted


@lru_cache(maxsize=4)
def substitution_table(data_dir: Path | None = None, delta: float = DEFAULT_DELTA) -> dict[str, tuple[str, ...]]:
    """The allowed substitutions over the fetched vocabulary (see the module docstring)."""
    words, fitted = counterfitted_vectors(data_dir)
    return allowed_substitutions(words, fitted, load_wordnet(data_dir), delta)
