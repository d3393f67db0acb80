"""Text training: the first-order flip attack stays in its set and finds known weak spots, the
interval bounds of the word-CNN enclose its logits, and the text defenses (a2t, freelb, sat/avg/max
on discrete threats) run with the passes their docstrings state."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from test_text_attacks import TEXTS, _bag, _encode, _space

import metaat.domains.text  # noqa: F401  (registers kinds, attacks and defenses)
from metaat import defenses
from metaat.defenses.base import TrainContext, pgd_attack
from metaat.domains.text.flips import CandidateTable, flip_attack
from metaat.domains.text.models import CharNgramCNN, WordCNN
from metaat.domains.text.space import activate
from metaat.domains.text.threats import syn_contains, typo_contains
from metaat.threats import ThreatModel, parse_threats
from metaat.train.cost import CostMeter

Y = torch.tensor([0, 0, 1, 1, 0, 1])


def _cnn(seed: int, chars: bool = False) -> WordCNN:
    torch.manual_seed(seed)
    space = _space()
    if chars:
        return CharNgramCNN(2, len(space.vocab), list(space.vocab.words), embed_dim=8, filters=4)
    return WordCNN(2, len(space.vocab), embed_dim=8, filters=4)


@pytest.mark.parametrize("threat", ["syn:1", "syn:2", "typo:1", "typo:2", "nbr:1"])
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_flips_stay_in_the_set(threat: str, steps: int) -> None:
    space = _space()
    ids = _encode(space, TEXTS)
    before = ids.clone()
    t = ThreatModel.parse(threat)
    for seed in (0, 1):
        adv = flip_attack(_cnn(seed, chars=seed == 1).eval(), ids, Y, t, space, steps)
        assert torch.equal(ids, before)
        k = int(t.eps)
        inside = typo_contains(adv, ids, k, space) if t.norm == "typo" else syn_contains(adv, ids, k, space, t.norm)
        assert inside.all(), (threat, steps, seed)
        assert ((adv != ids).sum(dim=1) <= k).all()


def test_flips_find_the_known_weak_spot() -> None:
    space = _space()
    model = _bag(space)
    ids = _encode(space, ["the film was terrible"])
    adv = flip_attack(model_with_embedded(model), ids, torch.tensor([0]), ThreatModel.parse("syn:1"), space, 1)
    assert space.vocab.decode(adv[0].tolist()) == ["the", "film", "was", "awful"]


def model_with_embedded(bag: torch.nn.Module) -> torch.nn.Module:
    """The test's bag-of-words model with the text models' ``forward(ids, embedded=...)``."""

    class Bag(type(bag)):  # type: ignore[misc]
        def forward(self, ids: torch.Tensor, embedded: torch.Tensor | None = None) -> torch.Tensor:
            return self.forward_embedded(self.embed(ids) if embedded is None else embedded, ids)

    bag.__class__ = Bag
    return bag


def test_candidate_tables_are_deterministic_and_padded() -> None:
    space = _space()
    ids = _encode(space, TEXTS)
    a, b = CandidateTable(space, "typo")(ids), CandidateTable(space, "typo")(ids)
    assert torch.equal(a, b) and a.shape == (*ids.shape, 8)
    assert (CandidateTable(space, "syn")(ids)[ids == 0] == -1).all()  # padding has no candidates
    with pytest.raises(ValueError, match="syn, nbr and typo"):
        CandidateTable(space, "emb")


@pytest.mark.parametrize("chars", [False, True])
def test_interval_bounds_enclose_the_logits(chars: bool) -> None:
    space = _space()
    ids = _encode(space, TEXTS)
    model = _cnn(0, chars).eval()
    emb = model.embed(ids).detach()
    same = model(ids, bounds=(emb, emb))
    assert torch.allclose(same[:, 0], model(ids), atol=1e-5) and torch.allclose(same[:, 1], model(ids), atol=1e-5)
    lo, hi = emb - 0.3, emb + 0.3
    bounds = model(ids, bounds=(lo, hi))
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        point = lo + (hi - lo) * torch.rand(emb.shape, generator=gen)
        z = model(ids, embedded=point)
        assert (bounds[:, 0] <= z + 1e-5).all() and (z <= bounds[:, 1] + 1e-5).all()


def _ctx(threats: Sequence[str]) -> TrainContext:
    gen = torch.Generator().manual_seed(0)
    return TrainContext(threats=tuple(parse_threats(list[str | ThreatModel](threats))), generator=gen, num_classes=2)


@pytest.mark.parametrize(
    ("name", "options", "passes"),
    [
        ("a2t", {}, 3.0),
        ("a2t", {"steps": 2}, 4.0),
        ("freelb", {"steps": 3}, 4.0),
        ("freelb", {"steps": 3, "accumulate": False}, 3.0),
        ("sat", {"steps": 2}, 3.0),
        ("avg", {"steps": 1}, 4.0),
        ("max", {"steps": 1}, 4.0),
    ],
)
def test_text_defenses_train_with_the_stated_passes(name: str, options: dict[str, object], passes: float) -> None:
    space = activate(_space())
    ids = _encode(space, TEXTS)
    model = _cnn(0).train()
    meter = CostMeter()
    meter.attach(model)
    defense = defenses.create(name, ["syn:2", "typo:2"], **options)
    loss, metrics = defense(model, ids, Y, _ctx(["syn:2", "typo:2"]))
    loss.backward()
    meter.train_examples = len(Y)
    assert torch.isfinite(loss) and metrics["loss"] == pytest.approx(float(loss.detach()))
    assert meter.passes_per_example == pytest.approx(passes)
    assert model.embedding.weight.grad is not None and model.convs[0].weight.grad is not None


def test_freelb_radius_is_calibrated_on_synonym_distances() -> None:
    space = activate(_space())
    model = _cnn(0)
    defense = defenses.create("freelb", ["syn:1"])
    defense.setup(model, torch.device("cpu"), 2, (8,))
    w = model.embedding.weight.detach()
    dists = [float((w[s] - w[i]).norm()) for i in range(len(space.vocab)) for s in space.substitutes(i).tolist()]
    assert defense.radius == pytest.approx(0.25 * float(torch.tensor(dists).median()))  # type: ignore[attr-defined]
    assert defense.state_dict()["radius"] == defense.radius  # type: ignore[attr-defined]


def test_pgd_attack_dispatches_discrete_threats_to_their_training_attack() -> None:
    space = activate(_space())
    ids = _encode(space, TEXTS)
    model = _cnn(0).train()
    adv = pgd_attack(model, ids, Y, ThreatModel.parse("syn:2"), torch.Generator(), steps=2)
    assert model.training and all(p.requires_grad for p in model.parameters())  # state restored
    assert syn_contains(adv, ids, 2, space).all() and not torch.equal(adv, ids)


def test_continuous_only_defenses_refuse_discrete_threats_and_name_the_others() -> None:
    with pytest.raises(ValueError, match="a2t.*freelb|freelb.*a2t"):
        defenses.create("pgd", ["syn:2"])
    with pytest.raises(ValueError, match="alpha"):
        defenses.create("a2t", ["syn:2"], alpha=-1)
    with pytest.raises(ValueError, match="continuous"):
        defenses.create("a2t", ["syn:2", "linf:0.1"])
    with pytest.raises(ValueError, match="radius"):
        defenses.create("freelb", ["syn:2"], radius=0)
