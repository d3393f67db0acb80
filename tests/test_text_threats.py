"""Text domain threat kinds: syn:k, typo:k (discrete membership), emb:eps (embedding-space geometry)."""

from __future__ import annotations

import math

import pytest
import torch

import metaat.domains.text  # noqa: F401  (registers the kinds)
from metaat.domains.text.space import TextSpace, activate
from metaat.domains.text.threats import (
    KEYBOARD,
    syn_contains,
    typo_contains,
    typo_distance,
    typo_edits,
    typo_variants,
)
from metaat.domains.text.vocab import build_vocab, spell
from metaat.threats import ThreatModel, in_threat, project, random_init, threat_ascent


def _space() -> TextSpace:
    train = [["the", "film", "was", "terrible", "and", "boring"]] * 2
    vocab = build_vocab(train, min_count=2, extra=["movie", "awful", "dull", "terible"])
    table = {"film": ("movie",), "terrible": ("awful",), "boring": ("dull",)}
    return TextSpace.from_table(vocab, table)


def _ids(space: TextSpace, words: list[str]) -> torch.Tensor:
    return torch.as_tensor(space.vocab.encode(words, 8)).unsqueeze(0)


def test_parse_and_round_trip() -> None:
    for text in ("syn:1", "syn:4", "nbr:2", "typo:2", "emb:0.5", "emb:1.25"):
        threat = ThreatModel.parse(text)
        assert str(threat) == text
    assert ThreatModel.parse("syn:2") == ThreatModel("syn", 2.0)
    assert not ThreatModel.parse("syn:2").continuous and not ThreatModel.parse("typo:1").continuous
    assert ThreatModel.parse("emb:0.5").continuous
    kind = ThreatModel.parse("typo:2").kind
    assert kind is not None and [name for name, _ in kind.evaluation_attacks][:3] == [
        "text-greedy",
        "text-greedy",
        "text-exhaustive",
    ]
    for bad in ("syn:0", "syn:1.5", "typo:x", "emb:abc"):
        with pytest.raises(ValueError):
            ThreatModel.parse(bad)


def test_syn_membership() -> None:
    space = _space()
    x = _ids(space, ["the", "film", "was", "terrible", "and", "boring"])
    one = _ids(space, ["the", "movie", "was", "terrible", "and", "boring"])
    two = _ids(space, ["the", "movie", "was", "awful", "and", "boring"])
    wrong = _ids(space, ["the", "film", "was", "dull", "and", "boring"])  # dull is not a synonym of terrible
    assert syn_contains(x, x, 1, space).tolist() == [True]
    assert syn_contains(one, x, 1, space).tolist() == [True]
    assert syn_contains(two, x, 1, space).tolist() == [False]
    assert syn_contains(two, x, 2, space).tolist() == [True]
    assert syn_contains(wrong, x, 3, space).tolist() == [False]
    activate(space)
    batch = torch.cat([one, two, wrong])
    assert in_threat(batch, x.expand(3, -1), ThreatModel.parse("syn:1")).tolist() == [True, False, False]


def test_nbr_membership_is_the_neighbour_table() -> None:
    vocab = build_vocab([["the", "film", "was", "terrible"]] * 2, min_count=2, extra=["movie", "awful", "plot"])
    space = TextSpace.from_table(vocab, {"film": ("movie",)}, {"film": ("movie", "plot"), "terrible": ("awful",)})
    x = _ids(space, ["the", "film", "was", "terrible"])
    plot = _ids(space, ["the", "plot", "was", "terrible"])
    movie = _ids(space, ["the", "movie", "was", "terrible"])
    both = _ids(space, ["the", "plot", "was", "awful"])
    assert syn_contains(plot, x, 1, space, "nbr").tolist() == [True]
    assert syn_contains(movie, x, 1, space, "nbr").tolist() == [False]  # a synonym is not a held-out neighbour
    assert syn_contains(movie, x, 1, space).tolist() == [True]
    assert syn_contains(both, x, 1, space, "nbr").tolist() == [False]
    activate(space)
    assert in_threat(both, x, ThreatModel.parse("nbr:2")).tolist() == [True]


def test_keyboard_is_symmetric() -> None:
    for key, near in KEYBOARD.items():
        assert key not in near
        for other in near:
            assert key in KEYBOARD[other]
    assert KEYBOARD["s"] == frozenset("weadzx")


def test_typo_distance() -> None:
    assert typo_distance("terrible", "terrible") == 0
    assert typo_distance("terrible", "terible") == 1  # delete
    assert typo_distance("terrible", "tertible") == 1  # r -> t (neighbour)
    assert typo_distance("terrible", "tefrible") == 1
    assert typo_distance("terrible", "terrbile") == 1  # swap
    assert typo_distance("terrible", "terrpible") == 1  # insert
    assert typo_distance("terrible", "tebrible") == 2  # r -> b is not a neighbour: delete + insert
    assert typo_distance("terrible", "xerrible") == math.inf  # first letter kept
    assert typo_distance("terrible", "terriblx") == math.inf  # last letter kept
    assert typo_distance("bad", "bd") == math.inf  # too short to edit


def test_typo_variants_are_one_edit_away() -> None:
    variants = typo_variants("film")
    assert variants == sorted(set(variants)) and "film" not in variants
    assert {"flim", "fim", "fikm", "fiolm"} <= set(variants)
    assert all(typo_distance("film", v) == 1 for v in variants)
    assert typo_variants("bad") == [] and typo_variants("don") == []


def test_typo_membership_counts_edits_over_words() -> None:
    space = _space()
    x = _ids(space, ["the", "film", "was", "terrible", "and", "boring"])
    one = x.clone()
    one[0, 3] = space.vocab.id("terible")  # a vocabulary word
    two = one.clone()
    two[0, 5] = spell("bornig")  # spelled id: swap
    assert typo_edits(two, x, space).tolist() == [2.0]
    assert typo_contains(one, x, 1, space).tolist() == [True]
    assert typo_contains(two, x, 1, space).tolist() == [False]
    assert typo_contains(two, x, 2, space).tolist() == [True]
    unk = x.clone()
    unk[0, 1] = 1  # <unk> is not a typo
    assert typo_contains(unk, x, 5, space).tolist() == [False]


def test_emb_geometry() -> None:
    threat = ThreatModel.parse("emb:0.5")
    x = torch.randn(3, 7, 10)
    gen = torch.Generator().manual_seed(0)
    delta = random_init(x, threat, gen)
    assert delta.shape == x.shape
    assert (delta.norm(dim=-1) <= 0.5 + 1e-5).all()
    big = torch.randn(3, 7, 10) * 10
    p = project(big, x, threat)
    assert torch.allclose(p.norm(dim=-1), torch.full((3, 7), 0.5), atol=1e-5)
    small = big / big.norm(dim=-1, keepdim=True) * 0.1
    assert torch.allclose(project(small, x, threat), small)
    assert in_threat(x + p, x, threat).all()
    assert not in_threat(x + big, x, threat).any()
    step = threat_ascent(torch.randn(3, 7, 10), threat)
    assert torch.allclose(step.norm(dim=-1), torch.ones(3, 7), atol=1e-5)
