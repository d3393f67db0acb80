"""The learned attacker as an attack: the attack contract, loading, and strength after training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import metaat.attacks as attacks
import metaat.data as data
from metaat.losses import ce
from metaat.meta import LearnedAttacker, NoiseGenerator, attacker_rollout, save_generator
from metaat.meta.attack import LearnedAttack
from metaat.threats import ThreatModel, in_threat, random_init

THREATS = [ThreatModel("linf", 0.15), ThreatModel("l2", 0.8), ThreatModel("l1", 4.0)]


def _tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 36, 10))


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A standard-trained tiny CNN on the synthetic data, with train and test splits."""
    torch.manual_seed(0)
    x, y = data.load("synthetic", "train", n=1200)
    xt, yt = data.load("synthetic", "test", n=300)
    model = _tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for idx in torch.randperm(len(y), generator=g).split(64):
            loss = ce(model(x[idx]), y[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), x, y, xt, yt


def _train_attacker(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int = 150) -> LearnedAttacker:
    """Gradient ascent on the target's loss, one threat per batch in turn."""
    torch.manual_seed(0)
    attacker = LearnedAttacker(in_channels=1, hidden=16)
    opt = torch.optim.Adam(attacker.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    model.requires_grad_(False)
    for it in range(iters):
        idx = torch.randint(len(y), (64,), generator=g)
        threat = THREATS[it % len(THREATS)]
        delta = attacker_rollout(attacker, model, x[idx], y[idx], threat, delta0=torch.zeros_like(x[idx]))
        loss = -ce(model(x[idx] + delta), y[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.requires_grad_(True)
    return attacker.eval()


def test_trained_attacker_beats_noise_and_matches_fgsm(trained: tuple[torch.Tensor, ...]) -> None:
    model, x, y, xt, yt = trained
    assert isinstance(model, nn.Module)
    attacker = _train_attacker(model, x, y)
    for threat in THREATS:
        learned = attacks.create("learned", threat=threat, attacker=attacker)(model, xt, yt)
        fgsm = attacks.create("fgsm", threat=threat)(model, xt, yt)
        noise = xt + random_init(xt, threat, torch.Generator().manual_seed(0))
        with torch.no_grad():
            losses = {
                name: float(ce(model(v), yt).mean())
                for name, v in (("learned", learned), ("fgsm", fgsm), ("noise", noise))
            }
        assert losses["learned"] > losses["noise"], (threat, losses)
        assert losses["learned"] >= losses["fgsm"], (threat, losses)


@pytest.mark.parametrize("threat", THREATS, ids=str)
def test_learned_attack_honours_the_contract(threat: ThreatModel) -> None:
    torch.manual_seed(0)
    model = _tiny_model().train()
    flags = [False] + [True] * (len(list(model.parameters())) - 1)
    for p, f in zip(model.parameters(), flags, strict=True):
        p.requires_grad_(f)
    attacker = LearnedAttacker(in_channels=1, hidden=8).train()
    x, y = data.load("synthetic", "test", n=10)
    x_copy = x.clone()
    atk = attacks.create("learned", threat=threat, attacker=attacker, random_start=True, steps=2, seed=3)
    out = atk(model, x, y)
    assert torch.equal(x, x_copy)  # the input is untouched
    assert bool(in_threat(out, x, threat).all())
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert attacker.training and all(p.requires_grad for p in attacker.parameters())
    assert all(p.grad is None for p in model.parameters()) and all(p.grad is None for p in attacker.parameters())
    # same seed, same output; and chunking does not change it
    torch.testing.assert_close(atk(model, x, y), out)
    chunked = attacks.create(
        "learned", threat=threat, attacker=attacker, random_start=True, steps=2, seed=3, batch_size=3
    )
    torch.testing.assert_close(chunked(model, x, y), out)


def test_noise_generator_is_an_attack_too() -> None:
    torch.manual_seed(0)
    model = _tiny_model()
    x, y = data.load("synthetic", "test", n=8)
    threat = ThreatModel("l2", 0.5)
    out = attacks.create("learned", threat=threat, attacker=NoiseGenerator(in_channels=1))(model, x, y)
    assert bool(in_threat(out, x, threat).all()) and not torch.equal(out, x)


def test_create_from_saved_generator(tmp_path: Path) -> None:
    torch.manual_seed(0)
    attacker = LearnedAttacker(in_channels=1, hidden=8)
    save_generator(attacker, tmp_path / "attacker")
    atk = attacks.create("learned", threat="linf:0.1", path=str(tmp_path / "attacker"))
    assert isinstance(atk, LearnedAttack)
    model = _tiny_model()
    x, y = data.load("synthetic", "test", n=6)
    direct = attacks.create("learned", threat="linf:0.1", attacker=attacker.eval())(model, x, y)
    torch.testing.assert_close(atk(model, x, y), direct)


def test_learned_attack_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs path"):
        attacks.create("learned", threat="linf:0.1")
    with pytest.raises(FileNotFoundError, match="no generator"):
        attacks.create("learned", threat="linf:0.1", path=str(tmp_path / "nothing"))
    with pytest.raises(TypeError, match="unknown option"):
        attacks.create("learned", threat="linf:0.1", attacker=LearnedAttacker(), strength=3)
    atk = attacks.create("learned", threat="linf:0.1", attacker=LearnedAttacker(in_channels=3))
    x, y = data.load("synthetic", "test", n=4)
    with pytest.raises(ValueError, match="3-channel"):
        atk(_tiny_model(), x, y)
