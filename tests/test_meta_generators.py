"""Generators, the universal-perturbation bank and generator files (metaat.meta)."""

from __future__ import annotations

import json

import pytest
import torch

from metaat.attacks.patch import apply_universal, project_universal
from metaat.meta import (
    AttackerSpec,
    LearnedAttacker,
    NoiseGenerator,
    NoiseSpec,
    PerturbationBank,
    load_generator,
    save_generator,
)
from metaat.models import count_parameters
from metaat.threats import ThreatModel, in_threat, lp_norm

THREATS = [ThreatModel("linf", 0.1), ThreatModel("l2", 1.0), ThreatModel("l1", 4.0), ThreatModel("l1", 40.0)]


def _batch(seed: int = 0, channels: int = 1, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, channels, size, size, generator=g)
    x[0] = 0.0  # points on the box's faces: projections must respect them
    x[1] = 1.0
    return x, torch.randn(x.shape, generator=g)


@pytest.mark.parametrize("threat", THREATS, ids=str)
def test_attacker_output_in_threat_and_box(threat: ThreatModel) -> None:
    torch.manual_seed(0)
    attacker = LearnedAttacker(in_channels=1)
    x, grad = _batch()
    delta = attacker(x, torch.zeros_like(x), grad, threat)
    assert bool(in_threat(x + delta, x, threat).all())
    # a second step from there, with a large raw output, still stays inside
    with torch.no_grad():
        attacker.step_raw.fill_(10.0)
    delta2 = attacker(x, delta.detach(), -grad, threat)
    assert bool(in_threat(x + delta2, x, threat).all())
    # it uses the budget (a sparse L1 step cannot fill a ball that is a large share of the box)
    room = float(lp_norm(torch.maximum(x, 1 - x), threat.norm).min())
    if threat.eps <= 0.25 * room:
        assert float(lp_norm(delta2.detach(), threat.norm).max()) > 0.5 * threat.eps


@pytest.mark.parametrize("source", ["input", "noise"])
@pytest.mark.parametrize("threat", THREATS, ids=str)
def test_noise_generator_output_in_threat_and_box(threat: ThreatModel, source: str) -> None:
    torch.manual_seed(0)
    gen = NoiseGenerator(NoiseSpec(in_channels=3, source=source))
    x, _ = _batch(channels=3)
    noise = gen.sample_noise(x, torch.Generator().manual_seed(1))
    delta = gen(x, noise, threat)
    assert bool(in_threat(x + delta, x, threat).all())


def test_gradients_reach_every_attacker_parameter() -> None:
    torch.manual_seed(0)
    attacker = LearnedAttacker(in_channels=2, hidden=8)
    x, grad = _batch(channels=2)
    total = sum(attacker(x, torch.zeros_like(x), grad, t).pow(2).sum() for t in THREATS[:3])
    total.backward()  # type: ignore[union-attr]
    for name, p in attacker.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


@pytest.mark.parametrize("source", ["input", "noise"])
def test_gradients_reach_every_noise_generator_parameter(source: str) -> None:
    torch.manual_seed(0)
    gen = NoiseGenerator(NoiseSpec(in_channels=1, source=source))
    x = torch.full((4, 1, 8, 8), 0.5)
    noise = gen.sample_noise(x, torch.Generator().manual_seed(0))
    gen(x, noise, ThreatModel("linf", 0.1)).pow(2).sum().backward()
    for name, p in gen.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_attacker_is_small_and_threat_conditioned() -> None:
    torch.manual_seed(0)
    attacker = LearnedAttacker(in_channels=1)
    assert 1_000 < count_parameters(attacker) < 100_000
    x, grad = _batch()
    zero = torch.zeros_like(x)
    with torch.no_grad():
        a = attacker(x, zero, grad, ThreatModel("linf", 0.1))
        b = attacker(x, zero, grad, ThreatModel("linf", 0.05))
    assert not torch.allclose(a, b)  # the budget is an input, not just a clip


def test_attacker_starts_as_a_steepest_ascent_step() -> None:
    """At initialisation the gradient skip dominates: the L∞ step is ≈ eps·sign(grad)."""
    torch.manual_seed(0)
    attacker = LearnedAttacker(in_channels=1)
    x = torch.full((4, 1, 8, 8), 0.5)
    grad = torch.randn_like(x)
    with torch.no_grad():
        delta = attacker(x, torch.zeros_like(x), grad, ThreatModel("linf", 0.1))
    agree = (delta.sign() == grad.sign()).float().mean()
    assert float(agree) > 0.95


def test_bad_inputs_are_one_line_errors() -> None:
    attacker = LearnedAttacker(in_channels=3)
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="expects"):
        attacker(x, x, x, ThreatModel("linf", 0.1))
    with pytest.raises(ValueError, match="source"):
        NoiseSpec(source="both")
    with pytest.raises(ValueError, match="depth"):
        LearnedAttacker(AttackerSpec(depth=1))


@pytest.mark.parametrize("kind", ["attacker", "noise"])
def test_save_load_roundtrip(tmp_path: object, kind: str) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path)) / "gen"
    torch.manual_seed(0)
    gen = (
        LearnedAttacker(in_channels=1, hidden=8)
        if kind == "attacker"
        else NoiseGenerator(in_channels=1, source="noise")
    )
    save_generator(gen, folder, metadata={"note": "test"})
    meta = json.loads((folder / "generator.json").read_text())
    assert meta["kind"] == kind and meta["metadata"] == {"note": "test"}
    loaded = load_generator(folder / "generator.safetensors")
    assert type(loaded) is type(gen) and not loaded.training
    for (k, v), (k2, v2) in zip(gen.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)


def test_load_errors(tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no generator"):
        load_generator(folder / "missing")
    save_generator(LearnedAttacker(in_channels=1, hidden=8), folder / "g")
    weights = folder / "g" / "generator.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ValueError, match="checksum"):
        load_generator(folder / "g")
    (folder / "other").mkdir()
    (folder / "other" / "generator.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a metaat generator"):
        load_generator(folder / "other")


@pytest.mark.parametrize("threat", THREATS[:3], ids=str)
def test_bank_entries_are_universal_perturbations(threat: ThreatModel) -> None:
    bank = PerturbationBank((threat,), size=4, shape=(1, 8, 8))
    bank.initialise(torch.Generator().manual_seed(0))
    assert float(bank.bank.abs().sum()) > 0
    x, _ = _batch()
    for j in range(4):
        u = bank.entry(0, j)
        assert float(lp_norm(u, threat.norm)[0]) <= threat.eps * (1 + 1e-5)
        assert bool(in_threat(apply_universal(x, u), x, threat).all())
    target = project_universal(torch.ones(1, 1, 8, 8), threat)
    before = (bank.entry(0, 1) - target).norm()
    bank.reptile_update(0, 1, target, meta_lr=0.5)
    after = (bank.entry(0, 1) - target).norm()
    assert float(after) == pytest.approx(0.5 * float(before), rel=1e-4)
