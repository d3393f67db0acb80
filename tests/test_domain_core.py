"""The modality-agnostic core: threat kinds registered by a domain, input boxes other than [0, 1],
signals (B, C, T) through the generators, the reference AutoAttack and the evaluation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import metaat
import metaat.attacks as A
from metaat.attacks.autoattack import from_reference, signal_grid, to_reference
from metaat.meta.generators import AttackerSpec, LearnedAttacker, NoiseGenerator, NoiseSpec
from metaat.threats import (
    ThreatKind,
    ThreatModel,
    in_threat,
    lp_norm,
    project,
    random_init,
    register_threat_kind,
    threat_ascent,
    threat_kinds,
)

BOX = (-3.0, 5.0)


class _ScaledLinf(ThreatKind):
    """A test kind: an L∞ ball of radius eps·scale (``scaled:scale,eps``)."""

    name = "scaledtest"
    syntax = "scaledtest:scale,eps"

    def parse_args(self, args: str) -> tuple[float, tuple[float, ...]]:
        parts = args.split(",")
        if len(parts) != 2:
            raise ValueError(f"expected {self.syntax}, got {args!r}")
        return float(parts[1]), (float(parts[0]),)

    def project(self, delta: torch.Tensor, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        r = threat.eps * threat.params[0]
        lo, hi = threat.box
        return torch.max(torch.min(delta.clamp(-r, r), hi - x), lo - x)

    def random_init(self, x: torch.Tensor, threat: ThreatModel, generator: torch.Generator | None) -> torch.Tensor:
        noise = torch.rand(x.shape, generator=generator) * 2 - 1
        return self.project(noise * threat.eps * threat.params[0], x, threat)

    def ascent(self, grad: torch.Tensor, threat: ThreatModel, x_adv: torch.Tensor | None) -> torch.Tensor:
        return grad.sign() * threat.params[0]

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel, tol: float) -> torch.Tensor:
        d = (x_adv - x).flatten(1).abs().amax(dim=1)
        flat = x_adv.flatten(1)
        lo, hi = threat.box
        ok_box = (flat >= lo - tol).all(dim=1) & (flat <= hi + tol).all(dim=1)
        return (d <= threat.eps * threat.params[0] * (1 + tol) + tol) & ok_box


if "scaledtest" not in threat_kinds():
    register_threat_kind(_ScaledLinf())


def _signal_model(channels: int = 3, classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(channels, 8, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, classes)
    )


def test_kind_parses_round_trips_and_dispatches() -> None:
    t = ThreatModel.parse("scaledtest:2,0.1")
    assert (t.norm, t.eps, t.params) == ("scaledtest", 0.1, (2.0,))
    assert str(t) == "scaledtest:2,0.1" and ThreatModel.parse(str(t)) == t
    assert not t.is_lp and t.continuous and t.lp_like == "linf"
    x = torch.rand(4, 1, 3, 3)
    d = project(torch.randn_like(x), x, t)
    assert float(d.abs().max()) <= 0.2 + 1e-7
    assert bool(in_threat(x + d, x, t).all())
    assert bool(in_threat(x + random_init(x, t, torch.Generator().manual_seed(0)), x, t).all())
    assert torch.equal(threat_ascent(torch.ones_like(x), t), 2 * torch.ones_like(x))


def test_unknown_kind_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid norms: linf, l2, l1"):
        ThreatModel.parse("nosuchkind:3")
    with pytest.raises(ValueError, match="no parameters"):
        ThreatModel("linf", 0.1, params=(2.0,))
    with pytest.raises(ValueError, match="box"):
        ThreatModel("linf", 0.1).with_box(1.0, 1.0)


@pytest.mark.parametrize("norm,eps", [("linf", 0.4), ("l2", 1.5), ("l1", 4.0)])
def test_projection_in_any_box_is_the_unit_box_projection_rescaled(norm: str, eps: float) -> None:
    """Projection commutes with the affine map x = lo + (hi - lo)·u (radii scale with it)."""
    g = torch.Generator().manual_seed(1)
    lo, hi = BOX
    width = hi - lo
    u = torch.rand(6, 2, 7, generator=g)
    z = torch.randn(6, 2, 7, generator=g) * eps
    in_box = project(z, lo + width * u, ThreatModel(norm, eps).with_box(lo, hi))
    in_unit = project(z / width, u, ThreatModel(norm, eps / width))
    torch.testing.assert_close(in_box, in_unit * width, atol=1e-5, rtol=1e-5)
    x = lo + width * u
    assert bool(in_threat(x + in_box, x, ThreatModel(norm, eps).with_box(lo, hi), tol=1e-5).all())


def test_unit_box_repr_and_equality_are_unchanged() -> None:
    assert repr(ThreatModel.parse("l2:1.5")) == "ThreatModel(norm='l2', eps=1.5)"
    assert ThreatModel("l2", 1.5) == ThreatModel.parse("l2:1.5").with_box(0.0, 1.0)
    assert ThreatModel("l2", 1.5) != ThreatModel("l2", 1.5).with_box(-1.0, 1.0)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_reference_autoattack_runs_on_signals_and_respects_budget(norm: str) -> None:
    model = _signal_model()
    x = torch.randn(12, 3, 23).clamp(*BOX)
    y = model(x).argmax(1)
    threat = ThreatModel(norm, 0.5 if norm == "linf" else 2.0).with_box(*BOX)
    attack = A.create("autoattack", threat=threat, version="custom", attacks=("apgd-ce",))
    x_adv = attack(model, x, y)
    assert x_adv.shape == x.shape
    assert bool(in_threat(x_adv, x, threat).all())
    assert float((model(x_adv).argmax(1) == y).float().mean()) < 1.0  # it does attack


def test_reference_view_round_trip_is_exact_within_the_set() -> None:
    x = torch.randn(3, 2, 10).clamp(*BOX)
    threat = ThreatModel("l2", 1.0).with_box(*BOX)
    view, u, ref = to_reference(_signal_model(2), x, threat)
    assert u.shape == (3, 2, *signal_grid(10)) and float(u.min()) >= 0 and float(u.max()) <= 1
    assert ref.eps == pytest.approx(1.0 / (BOX[1] - BOX[0]))
    torch.testing.assert_close(view(u), _signal_model(2)(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(from_reference(u, x, threat), x, atol=1e-5, rtol=1e-5)


def test_generators_take_signals() -> None:
    x = torch.randn(4, 3, 30).clamp(*BOX)
    threat = ThreatModel("l2", 1.0).with_box(*BOX)
    attacker = LearnedAttacker(AttackerSpec(in_channels=3, rank=1))
    out = attacker(x, torch.zeros_like(x), torch.randn_like(x), threat)
    assert out.shape == x.shape and bool(in_threat(x + out, x, threat, tol=1e-5).all())
    noise = NoiseGenerator(NoiseSpec(in_channels=3, rank=1))
    d = noise(x, noise.sample_noise(x, torch.Generator().manual_seed(0)), threat)
    assert d.shape == x.shape and bool(in_threat(x + d, x, threat, tol=1e-5).all())
    with pytest.raises(ValueError, match=r"\(B, 3, T\)"):
        attacker(x.unsqueeze(2), torch.zeros_like(x).unsqueeze(2), torch.zeros_like(x).unsqueeze(2), threat)
    kind = ThreatModel.parse("scaledtest:1,0.3").with_box(*BOX)
    assert bool(in_threat(x + attacker(x, torch.zeros_like(x), torch.randn_like(x), kind), x, kind).all())


def test_pgd_and_evaluation_on_signals_use_the_box() -> None:
    model = _signal_model()
    x = torch.randn(10, 3, 25).clamp(*BOX)
    y = model(x).argmax(1)
    threat = ThreatModel("linf", 0.5).with_box(*BOX)
    x_adv = A.create("pgd", threat=threat, steps=5)(model, x, y)
    assert bool(in_threat(x_adv, x, threat).all())
    with pytest.raises(ValueError, match=r"pixels must lie in \[0, 1\]"):
        A.create("pgd", threat="linf:0.5", steps=5)(model, x, y)
    result = metaat.evaluate(model, x, y, ["linf:0.5", "scaledtest:2,0.2"], suite="apgd", box=BOX, checks=False)
    assert result.union <= min(result.robust.values()) <= result.clean == 1.0
    assert result.examples and result.examples[0]["clean_png"]
    assert any("scaledtest" in line for line in result.protocol["attacks"]["scaledtest:2,0.2"]) is False
    norms = lp_norm(x_adv - x, "linf")
    assert float(norms.max()) <= 0.5 + 1e-6


@pytest.mark.parametrize("defense", ["metaat", "mng", "mat", "msd"])
def test_every_kind_of_defense_trains_on_signals(defense: str, tmp_path: object) -> None:
    """The meta-learners (1-d generators, universal banks) and a multi-norm baseline train on (B, C, T)
    inputs with a non-pixel box and a domain threat, through the same loop."""
    import metaat.defenses as D
    import metaat.models as M
    from metaat.train import TrainConfig, fit

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(48, 3, 32, generator=g) * 1.5).clamp(*BOX)
    y = (x[:, 0].mean(dim=1) > 0).long()
    threats = [ThreatModel("linf", 0.3).with_box(*BOX), ThreatModel.parse("scaledtest:2,0.1").with_box(*BOX)]
    config = TrainConfig(
        data="synthetic",
        model="fcn-small",
        defense=defense,
        threats=tuple(map(str, threats)),
        epochs=1,
        batch_size=16,
        eval_n=16,
        threads=1,
    )
    torch.manual_seed(0)
    model = M.create("fcn-small", 2, 3, 32, box=BOX)
    result = fit(model, D.create(defense, threats), x, y, config, tmp_path / "run", x[:16], y[:16], quiet=True)  # type: ignore[operator]
    assert result.status == "completed"
    assert 0.0 <= result.metrics["eval"]["clean"] <= 1.0
    assert result.cost["passes_per_example"] >= 1.0
    assert result.final_model is not None
    assert M.get_spec(M.load_model(result.final_model))["box"] == list(BOX)


def test_sensor_augmentation_baseline() -> None:
    from metaat.defenses import TrainContext, create
    from metaat.domains.sensors.augment import AugmentConfig, augment

    x = torch.randn(6, 3, 40)
    same = augment(x, AugmentConfig(p=0.0), torch.Generator().manual_seed(0))
    assert torch.equal(same, x)
    a = augment(x, AugmentConfig(p=1.0), torch.Generator().manual_seed(1))
    b = augment(x, AugmentConfig(p=1.0), torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x) and a.shape == x.shape
    blanked = augment(x, AugmentConfig(p=1.0, drift=0.0, max_warp=0.0, dropout_span=10), torch.Generator())
    assert int((blanked == 0).sum()) >= 6 * 10  # one channel span per window reads 0
    defense = create("sensor-augment", ["linf:0.1"])
    ctx = TrainContext(threats=(ThreatModel("linf", 0.1).with_box(*BOX),), generator=torch.Generator())
    loss, metrics = defense(_signal_model(), x, torch.zeros(6, dtype=torch.long), ctx)
    assert loss.dim() == 0 and set(metrics) == {"loss", "acc"}
    with pytest.raises(ValueError, match="signals"):
        defense(_signal_model(), x.unsqueeze(2), torch.zeros(6, dtype=torch.long), ctx)
    with pytest.raises(ValueError, match="p must"):
        AugmentConfig(p=2.0)


class _Flip(ThreatKind):
    """A discrete test kind: ``fliptest:k`` — at most k token ids set to 1 (the unknown word)."""

    name = "fliptest"
    syntax = "fliptest:k"
    continuous = False
    evaluation_attacks = (("fliptest-search", ()),)

    def parse_args(self, args: str) -> tuple[float, tuple[float, ...]]:
        return float(int(args)), ()

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel, tol: float) -> torch.Tensor:
        changed = x_adv != x
        return (changed.sum(dim=1) <= threat.eps) & ((x_adv == 1) | ~changed).all(dim=1)


class _FlipSearch(A.Attack):
    """Exhaustive search over one flipped position (the test kind's evaluation attack)."""

    name = "fliptest-search"

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        out = x.clone()
        for i in range(x.shape[0]):
            for pos in range(x.shape[1]):
                cand = x[i : i + 1].clone()
                cand[0, pos] = 1
                if int(model(cand).argmax(1)) != int(y[i]):
                    out[i] = cand[0]
                    break
        return out


if "fliptest" not in threat_kinds():
    register_threat_kind(_Flip())
    A.ATTACKS.register("fliptest-search")(_FlipSearch)


class _BagModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.EmbeddingBag(20, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(ids))


def test_token_ids_and_discrete_threats_through_the_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    from metaat.eval import plots, unseen

    model = _BagModel()
    x = torch.randint(2, 20, (12, 6), generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    view = {0: lambda a, b: {"tokens_clean": a.tolist(), "tokens_adversarial": b.tolist()}}
    monkeypatch.setattr(plots, "EXAMPLE_VIEWS", view)
    monkeypatch.setattr(unseen, "UNSEEN_BY_RANK", {})  # the text domain's families need its vocabulary
    for suite in ("quick", "apgd"):
        result = metaat.evaluate(model, x, y, ["fliptest:1"], suite=suite, checks=True, unseen=True, examples=2)
        assert result.clean == 1.0 and 0.0 <= result.union == result.robust["fliptest:1"] < 1.0
        assert result.protocol["attacks"]["fliptest:1"] == ["metaat fliptest-search"]
        assert all(c.status != "flagged" for c in result.checks)
        assert result.examples and "tokens_adversarial" in result.examples[0]
        broken = [e for e in result.examples if e["adversarial_prediction"] != e["label"]]
        assert all(e["perturbation_norm"] == 1.0 for e in broken)
    with pytest.raises(ValueError, match="token ids must be >= 0"):
        metaat.evaluate(model, x - 5, y, ["fliptest:1"], checks=False)
