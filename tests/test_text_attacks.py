"""Text attacks: the contract (in the set, input untouched, deterministic), strength ordering,
the worst case over attacks, on a tiny synthetic vocabulary."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import metaat.domains.text  # noqa: F401  (registers the attacks)
from metaat.attacks.base import ATTACKS
from metaat.domains.text.attacks import (
    BeamAttack,
    ExhaustiveAttack,
    GeneticAttack,
    GreedyAttack,
    TextAttack,
    default_attacks,
    worst_case,
)
from metaat.domains.text.models import WordCNN
from metaat.domains.text.space import TextSpace
from metaat.domains.text.threats import syn_contains, typo_contains
from metaat.domains.text.vocab import build_vocab

WORDS = "the a film movie picture was is terrible awful dreadful boring dull tedious great fine good fun plot".split()
TABLE = {
    "film": ("movie", "picture"),
    "movie": ("film", "picture"),
    "terrible": ("awful", "dreadful"),
    "awful": ("terrible", "dreadful"),
    "boring": ("dull", "tedious"),
    "dull": ("boring", "tedious"),
    "great": ("good", "fine"),
    "good": ("great", "fine"),
}


NEIGHBOURS = {
    "terrible": ("awful", "boring"),  # awful is a synonym: dropped from the neighbour table
    "boring": ("tedious", "plot"),
    "great": ("fun", "good"),
    "film": ("plot",),
    "good": ("fun",),
}


def _space() -> TextSpace:
    return TextSpace.from_table(build_vocab([WORDS, WORDS], min_count=1), TABLE, NEIGHBOURS)


class BagOfWords(nn.Module):
    """logits = sum of per-word class scores (a model whose weak spots are known)."""

    def __init__(self, scores: torch.Tensor) -> None:
        super().__init__()
        self.embedding = nn.Embedding(scores.shape[0], scores.shape[1], padding_idx=0)
        with torch.no_grad():
            self.embedding.weight.copy_(scores)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(torch.where(ids < self.embedding.num_embeddings, ids, torch.ones_like(ids)))

    def forward_embedded(self, emb: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return (emb * (ids != 0).unsqueeze(-1)).sum(dim=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(self.embed(ids), ids)


def _bag(space: TextSpace) -> BagOfWords:
    scores = torch.zeros(len(space.vocab), 2)
    for word, neg in {"terrible": 3.0, "awful": -1.0, "dreadful": 2.5, "boring": 2.0, "dull": 0.5}.items():
        scores[space.vocab.index[word], 0] = neg
    for word, pos in {"great": 2.0, "good": 1.0, "fine": 0.2, "fun": 1.0}.items():
        scores[space.vocab.index[word], 1] = pos
    return BagOfWords(scores)


def _encode(space: TextSpace, texts: list[str], length: int = 8) -> torch.Tensor:
    return torch.stack([torch.as_tensor(space.vocab.encode(t.split(), length)) for t in texts])


def _cnn(space: TextSpace, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return WordCNN(2, len(space.vocab), embed_dim=8, filters=4).eval()


TEXTS = [
    "the film was terrible",
    "the movie was boring and dull",
    "a great film",
    "the plot was good fun",
    "the film was terrible and boring",
    "a good movie",
]


def _attacks(threat: str, space: TextSpace) -> list[TextAttack]:
    out: list[TextAttack] = [
        GreedyAttack(threat, space=space, ranking="deletion"),
        GreedyAttack(threat, space=space, ranking="gradient"),
        BeamAttack(threat, space=space, beam_width=2, positions=5),
        GeneticAttack(threat, space=space, population=6, generations=4, max_queries=300),
    ]
    out.append(ExhaustiveAttack(threat, space=space))  # every single edit (complete for k = 1)
    return out


@pytest.mark.parametrize("threat", ["syn:1", "syn:2", "nbr:1", "nbr:2", "typo:1", "typo:2"])
def test_attacks_stay_in_their_set_and_leave_the_input_alone(threat: str) -> None:
    space = _space()
    ids = _encode(space, TEXTS)
    y = torch.tensor([0, 0, 1, 1, 0, 1])
    before = ids.clone()
    k = int(threat.split(":")[1])
    kind = threat.split(":")[0]
    for seed in (0, 1):
        model = _cnn(space, seed)
        for attack in _attacks(threat, space):
            result = attack.run(model, ids, y)
            assert torch.equal(ids, before), attack
            assert result.adv.dtype == torch.int64 and result.adv.shape == ids.shape
            inside = (
                typo_contains(result.adv, ids, k, space)
                if kind == "typo"
                else syn_contains(result.adv, ids, k, space, kind)
            )
            assert inside.all(), (attack, threat)
            assert (result.queries >= 1).all()
            assert not model.training


def test_neighbour_table_is_disjoint_from_synonyms() -> None:
    space = _space()
    v = space.vocab.index
    assert space.neighbours(v["terrible"]).tolist() == [v["boring"]]
    assert space.neighbours(v["great"]).tolist() == [v["fun"]]  # good is a synonym
    for i in range(len(space.vocab)):
        assert not set(space.neighbours(i).tolist()) & set(space.substitutes(i).tolist())


def test_attacks_find_the_known_weak_spot() -> None:
    space = _space()
    model = _bag(space)
    ids = _encode(space, ["the film was terrible"])
    y = torch.tensor([0])
    assert model(ids).argmax(1).item() == 0
    for attack in _attacks("syn:1", space):
        adv = attack(model, ids, y)
        assert model(adv).argmax(1).item() == 1, attack  # terrible -> awful flips it
        assert space.vocab.decode(adv[0].tolist()) == ["the", "film", "was", "awful"]


def test_exhaustive_is_at_least_as_strong_as_greedy() -> None:
    space = _space()
    ids = _encode(space, TEXTS * 2)
    y = torch.tensor([0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 1, 0])
    for seed in range(4):
        model = _cnn(space, seed)
        exhaustive = ExhaustiveAttack("syn:1", space=space)(model, ids, y)
        for ranking in ("deletion", "gradient"):
            greedy = GreedyAttack("syn:1", space=space, ranking=ranking)(model, ids, y)
            greedy_broke = model(greedy).argmax(1) != y
            exhaustive_broke = model(exhaustive).argmax(1) != y
            assert (exhaustive_broke | ~greedy_broke).all()  # never robust where greedy broke it


def test_deterministic_and_generator_driven() -> None:
    space = _space()
    ids = _encode(space, TEXTS)
    y = torch.tensor([0, 0, 1, 1, 0, 1])
    model = _cnn(space, 3)
    attack = GeneticAttack("syn:2", space=space, population=6, generations=4, max_queries=300)
    a = attack(model, ids, y, generator=torch.Generator().manual_seed(5))
    b = attack(model, ids, y, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(attack(model, ids, y), attack(model, ids, y))  # config seed


def test_worst_case_is_the_and_over_attacks() -> None:
    space = _space()
    ids = _encode(space, TEXTS)
    y = torch.tensor([0, 0, 1, 1, 0, 1])
    model = _cnn(space, 1)
    attacks = _attacks("syn:1", space)
    result = worst_case(model, ids, y, "syn:1", attacks)
    clean_ok = model(ids).argmax(1) == y
    assert (result.robust <= clean_ok).all()
    for attack in attacks:
        broke = model(attack(model, ids, y)).argmax(1) != y
        assert not (result.robust & broke).any()  # robust means no attack broke it
    assert syn_contains(result.adv, ids, 1, space).all()
    assert (model(result.adv).argmax(1) != y)[~result.robust].all()
    assert int(result.queries.sum()) == result.to_dict()["queries_total"]
    with pytest.raises(ValueError, match="configured for"):
        worst_case(model, ids, y, "syn:2", attacks)


def test_registry_and_option_errors() -> None:
    space = _space()
    for name in ("text-greedy", "text-beam", "text-genetic", "text-exhaustive"):
        assert name in ATTACKS.available()
        assert isinstance(ATTACKS.create(name, "syn:1", space=space), TextAttack)
    assert ExhaustiveAttack("syn:1", space=space).complete and not ExhaustiveAttack("syn:2", space=space).complete
    with pytest.raises(ValueError, match="syn:k, nbr:k or typo:k"):
        GreedyAttack("linf:0.1", space=space)
    with pytest.raises(ValueError, match="ranking"):
        GreedyAttack("syn:1", space=space, ranking="random")
    with pytest.raises(ValueError, match="int64 token ids"):
        GreedyAttack("syn:1", space=space)(_cnn(space, 0), torch.zeros(2, 8), torch.zeros(2, dtype=torch.long))
    options: dict[str, Any] = {"batch_size": 64}
    ensemble = default_attacks("syn:1", space=space, **options)
    assert [a.name for a in ensemble] == ["text-greedy", "text-greedy", "text-exhaustive", "text-beam", "text-genetic"]
    assert all(a.config.batch_size == 64 and a.space is space for a in ensemble)
    with pytest.raises(ValueError, match="discrete text threat"):
        default_attacks("linf:0.1")


def test_genetic_respects_its_query_budget() -> None:
    space = _space()
    ids = _encode(space, TEXTS[:2])
    model = _cnn(space, 0)
    y = model(ids).argmax(1)  # every example correct: the attack has to work for each
    longest = max(len(space.vocab.word(int(t))) for t in ids.flatten() if int(t) > 1)
    bound = 400 + 26 * (longest - 1) + 4 * longest + 8  # budget + one position's edits + one population
    capped = GeneticAttack("typo:2", space=space, population=8, generations=50, max_queries=400).run(model, ids, y)
    free = GeneticAttack("typo:2", space=space, population=8, generations=15, max_queries=10**6).run(model, ids, y)
    assert (capped.queries <= bound).all()
    assert int(free.queries.max()) > bound  # the cap is what held it


@pytest.mark.parametrize("threat", ["syn:2", "typo:2", "nbr:2"])
def test_edit_cost_is_the_sum_of_fresh_pair_costs_over_changed_positions(threat: str) -> None:
    """The memoised total cost equals a from-scratch sum; unreachable pairs cost infinity; rows of
    different lengths are refused."""
    from metaat.domains.text.attacks.search import EditSpace
    from metaat.threats import ThreatModel

    space = _space()
    edits = EditSpace(ThreatModel.parse(threat), space)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, len(space.vocab), (40, 6), generator=gen).numpy()
    for row in ids:
        for _ in range(3):
            adv = row.copy()
            for t in torch.randperm(6, generator=gen)[:2].tolist():
                options = edits.candidates(int(row[t]), int(row[t]))
                if options:
                    adv[t] = options[int(torch.randint(len(options), (1,), generator=gen))]
            fresh = EditSpace(ThreatModel.parse(threat), space)
            expected = sum(fresh._pair_cost(int(a), int(b)) for a, b in zip(row, adv, strict=True) if a != b)
            assert edits.cost(row, adv) == expected
    film, plot = space.vocab.id("film"), space.vocab.id("plot")
    assert edits.position_cost(film, plot) == (1.0 if threat == "nbr:2" else float("inf"))  # typo: first letter kept
    with pytest.raises(ValueError, match="differ in length"):
        edits.cost(ids[0], ids[0][:3])
