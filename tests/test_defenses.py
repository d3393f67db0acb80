"""Defenses: every registered one lowers its own loss; contract properties; algorithm details."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import metaat.data as data
import metaat.defenses as defenses
import metaat.models as models
from metaat.defenses import TrainContext
from metaat.defenses.eat import EAT, threat_probabilities
from metaat.defenses.msd import msd_attack
from metaat.threats import ThreatModel, in_threat, parse_threats

torch.set_num_threads(1)

MULTI = ("linf:0.1", "l2:1.0", "l1:5")
SINGLE = ("linf:0.1",)


def threats_for(name: str) -> tuple[str, ...]:
    return MULTI if defenses.DEFENSES.get(name).multi_threat else SINGLE  # type: ignore[attr-defined]


def cheap_options(name: str) -> dict[str, object]:
    """Two attack steps wherever the defense has a ``steps`` option (fast tests)."""
    fields = {f.name for f in dataclasses.fields(defenses.DEFENSES.get(name).config_class)}  # type: ignore[attr-defined]
    return {"steps": 2} if "steps" in fields else {}


# The core's defenses (a domain that registers its own tests them on its own inputs).
CORE = [n for n in defenses.available() if not defenses.DEFENSES.get(n).__module__.startswith("metaat.domains.")]
MULTI_THREAT = [n for n in CORE if defenses.DEFENSES.get(n).multi_threat]  # type: ignore[attr-defined]


def make_ctx(threats: tuple[str, ...], seed: int = 0) -> TrainContext:
    return TrainContext(threats=parse_threats(list(threats)), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return data.load("synthetic", "train", n=64)


@pytest.mark.parametrize("name", CORE)
def test_every_defense_lowers_its_loss(name: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    threats = threats_for(name)
    torch.manual_seed(0)
    model = models.create("mlp", 10, 1, 12)
    defense = defenses.create(name, list(threats), **cheap_options(name))
    defense.setup(model, torch.device("cpu"), 10, tuple(x.shape[1:]))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_now() -> float:
        loss, _ = defense(model.train(), x, y, make_ctx(threats, seed=123))
        return float(loss.detach())

    before = loss_now()
    ctx = make_ctx(threats)
    for step in range(25):
        ctx.step = step
        loss, metrics = defense(model.train(), x, y, ctx)
        assert torch.isfinite(loss) and loss.dim() == 0
        assert all(isinstance(v, float) for v in metrics.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_now()
    assert after < 0.8 * before, f"{name}: loss {before:.3f} -> {after:.3f}"


@pytest.mark.parametrize("name", CORE)
def test_contract_input_untouched_mode_restored_gradients_reach_every_parameter(
    name: str, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = batch
    x_copy = x.clone()
    model = models.create("mlp", 10, 1, 12).train()
    defense = defenses.create(name, list(threats_for(name)), **cheap_options(name))
    loss, metrics = defense(model, x, y, make_ctx(threats_for(name)))
    assert torch.equal(x, x_copy)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert {"loss", "acc"} <= set(metrics)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", [n for n in CORE if n not in MULTI_THREAT])
def test_single_threat_defenses_refuse_several_threats(name: str) -> None:
    with pytest.raises(ValueError, match=f"defense {name} trains against one threat.*Multi-threat defenses: .*msd"):
        defenses.create(name, ["linf:0.1", "l2:1.5"])


@pytest.mark.parametrize("name", CORE)
def test_setup_runs_once_before_the_first_step(name: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Called directly (no training loop), a defense sets itself up on its first step, once: what it
    trains besides the model exists after that step and a later ``setup`` rebuilds nothing."""
    x, y = batch
    model = models.create("mlp", 10, 1, 12).train()
    defense = defenses.create(name, list(threats_for(name)), **cheap_options(name))
    assert not defense._set_up
    defense(model, x, y, make_ctx(threats_for(name)))
    assert defense._set_up
    built = dict(defense.modules())
    defense.setup(model, torch.device("cpu"), 10, tuple(x.shape[1:]))
    assert all(defense.modules()[k] is m for k, m in built.items()) and defense.modules().keys() == built.keys()


def test_unknown_option_and_bad_values_are_one_line_errors() -> None:
    with pytest.raises(TypeError, match="unknown option.*stepz.*valid options: .*steps"):
        defenses.create("pgd", "linf:0.1", stepz=3)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        defenses.create("pgd", "linf:0.1", steps=0)
    with pytest.raises(ValueError, match="step_sizes has 2 value.*3 threats"):
        defenses.create("avg", list(MULTI), step_sizes=(0.1, 0.2))
    with pytest.raises(KeyError, match="unknown defense 'nope'; valid defenses: .*pgd"):
        defenses.create("nope", "linf:0.1")


def test_same_generator_same_loss(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    model = models.create("mlp", 10, 1, 12)
    defense = defenses.create("sat", list(MULTI), steps=2)
    a, _ = defense(model, x, y, make_ctx(MULTI, seed=7))
    b, _ = defense(model, x, y, make_ctx(MULTI, seed=7))
    assert torch.equal(a, b)


def test_trades_loss_is_clean_ce_plus_nonnegative_kl(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    model = models.create("mlp", 10, 1, 12)
    loss, metrics = defenses.create("trades", "linf:0.1", steps=2, beta=6.0)(model, x, y, make_ctx(SINGLE))
    clean_ce = float(nn.functional.cross_entropy(model(x), y).detach())
    assert metrics["kl"] >= 0
    assert float(loss.detach()) == pytest.approx(clean_ce + 6.0 * metrics["kl"], rel=1e-5)


def test_msd_example_lies_in_the_union_and_beats_each_single_step(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    torch.manual_seed(0)
    model = models.create("mlp", 10, 1, 12).eval()
    threats = tuple(ThreatModel.parse(t) for t in MULTI)
    x_adv = msd_attack(model, x, y, threats, (0.025, 0.25, 1.25), steps=10)
    inside = torch.stack([in_threat(x_adv, x, t) for t in threats]).any(dim=0)
    assert bool(inside.all())
    ce = nn.functional.cross_entropy
    with torch.no_grad():
        assert float(ce(model(x_adv), y)) > float(ce(model(x), y))


def test_eat_sampling_follows_the_authors_law_and_its_state_round_trips() -> None:
    # uniform until every threat has been attacked, then p_i ∝ 1 − acc_i (fra31/robust-finetuning)
    assert threat_probabilities([5.0, 0.0], [10.0, 0.0]).tolist() == pytest.approx([0.5, 0.5])
    assert threat_probabilities([20.0, 60.0], [100.0, 100.0]).tolist() == pytest.approx([0.8 / 1.2, 0.4 / 1.2])
    assert threat_probabilities([10.0, 10.0], [10.0, 10.0]).tolist() == pytest.approx([0.5, 0.5])  # all robust
    eat = defenses.create("eat", ["linf:0.1", "l1:10"])
    eat.robust, eat.seen = [30.0, 90.0], [100.0, 100.0]  # type: ignore[attr-defined]
    other = defenses.create("eat", ["linf:0.1", "l1:10"])
    other.load_state_dict(eat.state_dict())
    assert (other.robust, other.seen) == ([30.0, 90.0], [100.0, 100.0])  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="saved state is for threats"):
        defenses.create("eat", ["linf:0.1", "l2:1"]).load_state_dict(eat.state_dict())
    with pytest.raises(ValueError, match="earlier E-AT sampling law"):
        other.load_state_dict({"threats": ["linf:0.1", "l1:10"], "running_acc": [0.5, 0.5]})


def test_eat_averages_over_all_batches_since_the_start_and_picks_the_weak_threat_more_often(
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, y = batch
    model = models.create("mlp", 10, 1, 12)
    eat = EAT(["linf:0.1", "l1:10"], steps=1)
    eat.robust, eat.seen = [1000.0, 9000.0], [10000.0, 10000.0]  # a long history: acc 0.1 vs 0.9
    ctx = make_ctx(("linf:0.1", "l1:10"))
    picks = []
    for _ in range(40):
        _, metrics = eat(model, x[:8], y[:8], ctx)
        picks.append(metrics["picked/linf:0.1"])
    assert sum(picks) > 28  # expected 36 of 40
    assert sum(eat.seen) == 20000 + 40 * 8  # every attacked example counted, none forgotten
    assert 0.0 <= metrics["robust_acc/linf:0.1"] <= 1.0


def test_sat_weights_skew_the_draw_and_bad_weights_are_clear_errors(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    model = models.create("mlp", 10, 1, 12)
    sat = defenses.create("sat", ["linf:0.1", "l1:10"], steps=1, weights=[1, 9])
    ctx = make_ctx(("linf:0.1", "l1:10"))
    picks = [sat(model, x[:8], y[:8], ctx)[1]["picked/l1:10"] for _ in range(40)]
    assert sum(picks) > 28  # expected 36 of 40
    for bad in ([1.0, 0.0], [1.0, float("nan")], [1.0, True], "two"):
        with pytest.raises(ValueError, match="defense sat: (option )?weights must"):
            defenses.create("sat", ["linf:0.1", "l1:10"], weights=bad)
    with pytest.raises(ValueError, match="weights has 3 value.*2 threats"):
        defenses.create("sat", ["linf:0.1", "l1:10"], weights=[1, 1, 2])
