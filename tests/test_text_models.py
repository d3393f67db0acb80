"""Text models: shapes, the embed / forward_embedded split, padding, spelled ids, checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import torch

import metaat.domains.text  # noqa: F401  (registers the models)
from metaat.domains.text.models import (
    MODELS,
    TextClassifier,
    chars_of_spelled,
    chars_of_words,
    embedding_matrix,
    ngram_buckets,
)
from metaat.domains.text.vocab import Vocab, build_vocab, spell
from metaat.models import create, load_model, save_model

WORDS = ["the", "film", "was", "terrible", "and", "boring", "great", "fun"]
NAMES = ("word-cnn", "bilstm", "charngram-cnn")


def _vocab() -> Vocab:
    return build_vocab([WORDS, WORDS], min_count=1)


def _model(name: str, seed: int = 0) -> TextClassifier:
    torch.manual_seed(seed)
    v = _vocab()
    extra: dict[str, Any] = {"words": list(v.words)} if name == "charngram-cnn" else {}
    return cast(
        TextClassifier, create(name, num_classes=3, in_channels=1, image_size=12, vocab_size=len(v), **extra).eval()
    )


def _ids(words: list[str], length: int = 12) -> torch.Tensor:
    return torch.as_tensor(_vocab().encode(words, length)).unsqueeze(0)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_embedded_path(name: str) -> None:
    model = _model(name)
    ids = torch.cat([_ids(["the", "film", "was", "great"]), _ids(["boring", "xqz"])])
    logits = model(ids)
    assert logits.shape == (2, 3) and logits.dtype == torch.float32
    emb = model.embed(ids)
    assert emb.shape == (2, 12, model.embedding.embedding_dim)
    assert torch.allclose(model.forward_embedded(emb, ids), logits)
    assert MODELS.get(name).input_rank == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", NAMES)
def test_padding_perturbation_does_nothing(name: str) -> None:
    model = _model(name)
    ids = _ids(["the", "film", "was", "great"])
    emb = model.embed(ids)
    noisy = emb.clone()
    noisy[:, 6:] += torch.randn_like(noisy[:, 6:])
    assert torch.allclose(model.forward_embedded(noisy, ids), model.forward_embedded(emb, ids), atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_the_embedding(name: str) -> None:
    model = _model(name).train()
    ids = _ids(["the", "film", "was", "terrible"])
    model(ids).sum().backward()
    assert model.embedding.weight.grad is not None and model.embedding.weight.grad.abs().sum() > 0


def test_word_models_read_unknown_ids_as_unk() -> None:
    model = _model("word-cnn")
    a = _ids(["the", "film", "was", "terible"])  # spelled id
    b = a.clone()
    b[0, 3] = 1
    assert torch.equal(model(a), model(b))


def test_char_model_tells_typos_apart_and_keeps_them_close() -> None:
    model = _model("charngram-cnn")
    v = _vocab()
    ids = torch.tensor([[v.index["terrible"], spell("terible"), spell("zzzzzz"), 1, spell("terrible")]])
    emb = model.embed(ids)[0]
    assert not torch.allclose(emb[1], emb[3])  # a typo is not <unk>
    # same word part (<unk>) for spelled ids: the n-grams decide; a typo shares most of them
    assert torch.dist(emb[4], emb[1]) < torch.dist(emb[4], emb[2])
    assert torch.dist(emb[4], emb[1]) < torch.dist(emb[4], emb[3])


def test_spelled_chars_match_word_chars() -> None:
    for word in ["a", "film", "terrible", "abcdefghijklm"]:
        spelled = chars_of_spelled(torch.tensor([spell(word)]))[0]
        listed = chars_of_words(["<pad>", "<unk>", word])[2]
        assert torch.equal(spelled, listed)
    buckets, valid = ngram_buckets(chars_of_words(["<pad>", "<unk>", "fun"]))
    assert not valid[0].any() and int(valid[2].sum()) == 4 + 3 + 2  # <f fu un n>, <fu fun un>, <fun fun>


def test_embedding_matrix_from_vectors() -> None:
    import numpy as np

    v = _vocab()
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    m = embedding_matrix(v, ["film", "fun", "zebra"], vectors)
    assert m.shape == (len(v), 4)
    assert torch.equal(m[v.index["film"]], torch.arange(4.0))
    assert torch.equal(m[0], torch.zeros(4))
    assert torch.equal(m, embedding_matrix(v, ["film", "fun", "zebra"], vectors))


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip(name: str, tmp_path: Path) -> None:
    model = _model(name, seed=1)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m").eval()
    ids = _ids(["the", "film", "was", "great", "fun"])
    assert torch.equal(loaded(ids), model(ids))


def test_factory_errors() -> None:
    with pytest.raises(ValueError, match="vocab"):
        create("word-cnn", num_classes=2, in_channels=1, image_size=10)
    with pytest.raises(ValueError, match="in_channels=1"):
        create("word-cnn", num_classes=2, in_channels=3, image_size=10, vocab_size=10)
