"""IBP over synonym hulls (text): the logit bounds enclose every point of the hulls and every actual
substitution, a certificate survives exhaustive search, the defense trains with its stated passes,
its schedule and its option errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from test_text_attacks import TEXTS, _encode, _space
from test_text_training import Y, _cnn

import metaat.domains.text  # noqa: F401  (registers kinds, attacks and defenses)
from metaat import defenses
from metaat.defenses.base import TrainContext
from metaat.domains.text.defenses.ibp import (
    IBPConfig,
    certified,
    certified_margin,
    hull_bounds,
    hull_table,
    schedule,
    worst_case_logits,
)
from metaat.domains.text.models import BiLSTM, WordCNN
from metaat.domains.text.space import TextSpace, activate
from metaat.threats import parse_threats
from metaat.train.cost import CostMeter


def _texts_in_set(ids: torch.Tensor, space: TextSpace, kinds: tuple[str, ...]) -> torch.Tensor:
    """Every text that replaces any number of words of ``ids`` ``(L,)`` by their hull substitutes."""
    table = hull_table(space, kinds)
    choices = [(t, *table.row(t)) for t in ids.tolist()]
    return torch.tensor(list(itertools.product(*choices)), dtype=torch.long)


def _inside(z: torch.Tensor, bounds: torch.Tensor) -> bool:
    return bool((bounds[..., 0, :] <= z + 1e-5).all() and (z <= bounds[..., 1, :] + 1e-5).all())


@pytest.mark.parametrize(("chars", "kinds"), [(False, ("syn",)), (True, ("syn",)), (True, ("syn", "typo"))])
def test_bounds_enclose_the_hulls_and_every_substitution(chars: bool, kinds: tuple[str, ...]) -> None:
    space = _space()
    ids = _encode(space, TEXTS)
    model = _cnn(0, chars).eval()
    emb, lo, hi = hull_bounds(model, ids, hull_table(space, kinds))
    assert torch.equal(emb, model.embed(ids)) and (lo <= emb).all() and (emb <= hi).all()
    bounds = model(ids, bounds=(lo, hi))
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert _inside(model(ids, embedded=lo + (hi - lo) * torch.rand(emb.shape, generator=gen)), bounds)
    for b in range(len(ids)):
        texts = _texts_in_set(ids[b], space, kinds)
        if kinds == ("syn",):
            assert len(texts) > 1  # the brute force covers real substitutions
        assert _inside(model(texts), bounds[b])
    # eps scales the box towards the word's vector: nested boxes, a point at eps = 0
    _, lo_half, hi_half = hull_bounds(model, ids, hull_table(space, kinds), eps=0.5)
    assert (lo <= lo_half).all() and (hi_half <= hi).all()
    _, lo0, hi0 = hull_bounds(model, ids, hull_table(space, kinds), eps=0.0)
    assert torch.equal(lo0, emb) and torch.equal(hi0, emb)


def test_worst_case_logits_and_margin() -> None:
    bounds = torch.tensor([[[1.0, -2.0, 0.0], [3.0, 0.5, 0.9]], [[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]]])
    y = torch.tensor([0, 1])
    assert torch.equal(worst_case_logits(bounds, y), torch.tensor([[1.0, 0.5, 0.9], [2.0, 0.0, 2.0]]))
    assert torch.allclose(certified_margin(bounds, y), torch.tensor([0.1, -2.0]))


def _train(model: WordCNN, ids: torch.Tensor, y: torch.Tensor, steps: int, **options: object) -> list[float]:
    defense = defenses.create("ibp", ["syn:2"], **options)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    ctx = TrainContext(threats=tuple(parse_threats(["syn:2"])), generator=torch.Generator(), num_classes=2)
    ctx.steps_per_epoch = steps
    losses = []
    for step in range(steps):
        ctx.step = step
        model.train()
        loss, _ = defense(model, ids, y, ctx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_certified_points_survive_exhaustive_substitution() -> None:
    space = _space()
    ids = _encode(space, TEXTS * 2)
    y = torch.tensor([0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 1, 0])  # the second copy half-mislabelled: some fail
    activate(space)
    model = _cnn(1)
    _train(model, ids[:6], Y, 40, ramp=0.0)
    cert = certified(model, ids, y, space)
    assert cert.dtype == torch.bool and cert.shape == (12,) and model.training  # mode restored
    assert 0 < int(cert.sum()) < 12
    model.eval()
    with torch.no_grad():
        assert torch.equal(cert, certified(model, ids, y, space, batch_size=5))  # chunking changes nothing
        for b in cert.nonzero().flatten().tolist():
            texts = _texts_in_set(ids[b], space, ("syn",))  # every number of substitutions (⊇ syn:1, syn:2)
            assert (model(texts).argmax(dim=1) == y[b]).all()
        wrong = model(ids).argmax(dim=1) != y
        assert not (cert & wrong).any()


def test_ibp_trains_with_two_counted_passes_and_lowers_the_certified_loss() -> None:
    space = activate(_space())
    ids = _encode(space, TEXTS)
    model = _cnn(0)
    meter = CostMeter()
    meter.attach(model)
    defense = defenses.create("ibp", ["syn:2", "typo:2"])
    ctx = TrainContext(threats=defense.threats, generator=torch.Generator(), num_classes=2)
    loss, metrics = defense(model.train(), ids, Y, ctx)
    loss.backward()
    meter.train_examples = len(Y)
    assert meter.passes_per_example == pytest.approx(2.0)
    assert metrics["eps"] == 0.0 and metrics["kappa"] == 1.0 and metrics["loss"] == pytest.approx(float(loss))
    assert model.embedding.weight.grad is not None and model.fc.weight.grad is not None
    losses = _train(model, ids, Y, 30, ramp=0.0)  # final eps and kappa from the start: one objective
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_schedule_ramps_then_holds() -> None:
    cfg = IBPConfig()
    assert schedule(0.0, cfg) == (0.0, 1.0)
    eps, kappa = schedule(cfg.ramp / 2, cfg)
    assert eps == pytest.approx(0.5) and kappa == pytest.approx(0.6)
    for p in (cfg.ramp, 0.9, 1.0):
        eps, kappa = schedule(p, cfg)
        assert eps == pytest.approx(1.0) and kappa == pytest.approx(0.2)
    assert schedule(0.0, IBPConfig(ramp=0.0, kappa_final=0.5, eps_final=0.8)) == (0.8, 0.5)
    warm = IBPConfig(warmup=0.5, ramp=0.25)
    assert schedule(0.4, warm) == (0.0, 1.0)  # plain training first
    assert schedule(0.625, warm) == pytest.approx((0.5, 0.6)) and schedule(0.8, warm) == pytest.approx((1.0, 0.2))
    ctx = TrainContext(threats=(), generator=torch.Generator(), epoch=1, step=0, steps_per_epoch=10, total_epochs=3)
    eps, kappa = schedule(ctx.progress, cfg)  # a third of training = half the ramp
    assert eps == pytest.approx(0.5) and kappa == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"ramp": -0.1}, "ramp"),
        ({"ramp": 1.5}, "ramp"),
        ({"kappa_final": 2}, "kappa_final"),
        ({"eps_final": 0}, "eps_final"),
        ({"eps_final": "big"}, "eps_final"),
        ({"warmup": -1}, "warmup"),
        ({"warmup": 0.5, "ramp": 0.6}, "warmup \\+ ramp"),
    ],
)
def test_bad_options_give_one_line_errors(options: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        defenses.create("ibp", ["syn:2"], **options)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("threat", ["nbr:1", "linf:0.1"])
def test_threats_other_than_syn_and_typo_are_refused(threat: str) -> None:
    with pytest.raises(ValueError, match="ibp certifies") as err:
        defenses.create("ibp", ["syn:1", threat])
    assert "\n" not in str(err.value)


def test_models_without_bounds_say_so() -> None:
    space = activate(_space())
    model = BiLSTM(2, len(space.vocab), embed_dim=8, hidden=4)
    ctx = TrainContext(threats=tuple(parse_threats(["syn:1"])), generator=torch.Generator(), num_classes=2)
    with pytest.raises(NotImplementedError, match="word-cnn"):
        defenses.create("ibp", ["syn:1"])(model, _encode(space, TEXTS), Y, ctx)
