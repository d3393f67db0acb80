"""Text domain: WordNet parsing, counter-fitting and the synonym filter (synthetic, then real data)."""

from __future__ import annotations

import numpy as np
import pytest

from metaat.data.base import DataError
from metaat.domains.text import files
from metaat.domains.text.space import TextSpace
from metaat.domains.text.synonyms import (
    CounterFitConfig,
    WordNet,
    allowed_substitutions,
    constraint_pairs,
    counter_fit,
    parse_wordnet_lines,
)
from metaat.domains.text.vocab import build_vocab

# Two adjective synsets with a lexical antonym pointer (good <-> bad, word 1 to word 1), one noun
# synset with a collocation and a proper noun, in WordNet's data-file format.
ADJ = [
    "  1 This software and database is being provided ...",
    "00000001 00 a 02 good 0 fine 0 001 ! 00000002 a 0101 | having desirable qualities",
    "00000002 00 a 02 bad 0 awful(p) 0 001 ! 00000001 a 0101 | having undesirable qualities",
]
NOUN = [
    "00000010 05 n 03 film 0 movie 0 motion_picture 0 000 | a story told with pictures",
    "00000011 05 n 01 Paris 0 000 | x",
]


def _wordnet() -> WordNet:
    return parse_wordnet_lines({"a": ADJ, "n": NOUN, "v": [], "r": []})


def test_parse_wordnet_keeps_single_lowercase_lemmas_and_antonyms() -> None:
    wn = _wordnet()
    assert ("a", ("good", "fine")) in wn.synsets
    assert ("a", ("bad", "awful")) in wn.synsets  # the (p) marker stripped
    assert ("n", ("film", "movie")) in wn.synsets  # motion_picture dropped
    assert all("Paris" not in lemmas for _, lemmas in wn.synsets)
    assert wn.antonyms == frozenset({("bad", "good")})
    assert wn.synonym_pos()["film"] == {"movie": frozenset({"n"})}


def test_parse_wordnet_malformed_line_is_a_one_line_error() -> None:
    with pytest.raises(DataError, match="data.adj line 1: malformed"):
        parse_wordnet_lines({"a": ["00000001 00 a zz good"]})


def _vectors(words: list[str]) -> np.ndarray:
    # good/bad close (as in distributional vectors); fine near good; movie near film; far words apart
    base = {
        "good": [1.0, 0.2, 0.0, 0.0],
        "bad": [0.9, 0.4, 0.0, 0.1],
        "fine": [0.7, 0.0, 0.7, 0.0],
        "awful": [0.5, 0.5, 0.1, 0.6],
        "film": [0.0, 0.0, 1.0, 0.3],
        "movie": [0.0, 0.1, 0.9, 0.5],
        "rock": [0.0, 1.0, 0.0, 0.0],
    }
    return np.array([base[w] for w in words], dtype=np.float32)


def _cos(v: np.ndarray, i: int, j: int) -> float:
    return float(v[i] @ v[j] / np.linalg.norm(v[i]) / np.linalg.norm(v[j]))


def test_counter_fitting_repels_antonyms_and_attracts_synonyms() -> None:
    words = ["good", "bad", "fine", "awful", "film", "movie", "rock"]
    vectors = _vectors(words)
    syn, ant = constraint_pairs(words, _wordnet())
    assert ant.tolist() == [[0, 1]]
    assert sorted(map(tuple, syn.tolist())) == [(0, 2), (1, 3), (4, 5)]
    fitted = counter_fit(vectors, syn, ant, CounterFitConfig(epochs=30, lr=0.1, batch_size=4))
    assert np.allclose(np.linalg.norm(fitted, axis=1), 1.0, atol=1e-5)
    i = {w: n for n, w in enumerate(words)}
    assert _cos(fitted, i["good"], i["bad"]) < _cos(vectors, i["good"], i["bad"]) - 0.3
    assert _cos(fitted, i["film"], i["movie"]) > _cos(vectors, i["film"], i["movie"])
    again = counter_fit(vectors, syn, ant, CounterFitConfig(epochs=30, lr=0.1, batch_size=4))
    assert np.array_equal(fitted, again)  # deterministic


def test_filter_keeps_close_synonyms_and_never_antonyms() -> None:
    words = ["good", "bad", "fine", "awful", "film", "movie", "rock"]
    unit = _vectors(words)
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    table = allowed_substitutions(words, unit, _wordnet(), delta=0.5)
    assert table["film"] == ("movie",) and table["movie"] == ("film",)
    assert "bad" not in table.get("good", ())  # an antonym is never a WordNet synonym
    tight = allowed_substitutions(words, unit, _wordnet(), delta=0.01)
    assert "film" not in tight  # distance filter applies


def test_nearest_neighbours() -> None:
    from metaat.domains.text.synonyms import nearest_neighbours

    words = ["good", "bad", "fine", "awful", "film", "movie", "rock"]
    unit = _vectors(words)
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    near = nearest_neighbours(["film", "movie", "rock", "good", "absent"], words, unit, k=2, delta=0.5)
    assert near["film"] == ("movie",) and near["movie"] == ("film",)
    assert "rock" not in near and "absent" not in near  # nothing within delta; no vector
    assert "good" not in near
    wide = nearest_neighbours(["film", "movie", "rock", "good"], words, unit, k=2, delta=1.5)
    assert wide["good"] == ("rock", "movie")  # bad and fine are nearer but not among the candidates


def test_text_space_maps_the_table_to_ids() -> None:
    vocab = build_vocab([["film", "good", "film", "good"]], min_count=2, extra=["movie"])
    space = TextSpace.from_table(vocab, {"film": ("movie", "flick"), "good": ("good",)})
    film, movie, good = (vocab.index[w] for w in ("film", "movie", "good"))
    assert space.substitutes(film).tolist() == [movie]  # flick is not in the vocabulary
    assert space.substitutes(good).tolist() == []  # never itself
    assert space.substitutes(0).tolist() == [] and space.substitutes(-5).tolist() == []
    assert space.allowed(film, movie) and not space.allowed(movie, film)


def _have_real_data() -> bool:
    try:
        files.locate(files.VECTORS_FILE)
        files.locate(files.WORDNET_DIR)
    except FileNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _have_real_data(), reason="text data not fetched (make data)")
def test_real_filter_known_synonyms_survive_antonyms_pushed_apart() -> None:
    from metaat.domains.text.synonyms import counterfitted_vectors, load_vectors, substitution_table

    table = substitution_table()
    assert "movie" in table["film"] and "film" in table["movie"]
    assert "dull" in table["boring"] and "tedious" in table["boring"]
    assert "awful" in table["terrible"]
    words, raw = load_vectors()
    _, fitted = counterfitted_vectors()
    i = {w: n for n, w in enumerate(words)}
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    for a, b in [("love", "hate"), ("good", "bad"), ("happy", "sad")]:
        assert _cos(fitted, i[a], i[b]) < _cos(unit, i[a], i[b])
        assert b not in table.get(a, ())
