"""Sensor attacks: the attack contract, and the known optimum on a linear model."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import metaat.attacks as A
import metaat.domains.sensors.drift_attack
import metaat.domains.sensors.spike_attack  # noqa: F401  (registers the attacks)
from metaat.losses import margin
from metaat.threats import ThreatModel, in_threat

BOX = (-8.0, 8.0)
CASES = [
    ("spike-search", "spike:3,1.5", {"steps": 5, "queries": 30}),
    ("drift-search", "drift:0.5", {"restarts": 10, "steps": 5}),
]


def _conv_model(channels: int = 3, classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(channels, 8, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, classes)
    )


def _batch(n: int = 12, channels: int = 3, length: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(n, channels, length, generator=gen) * 2).clamp(*BOX)
    x[0, 0, :5] = 8.0  # saturated samples: the box binds there
    return x, torch.randint(0, 4, (n,), generator=gen)


@pytest.mark.parametrize(("name", "threat", "options"), CASES)
def test_attack_contract(name: str, threat: str, options: dict[str, int]) -> None:
    tm = ThreatModel.parse(threat).with_box(*BOX)
    model = _conv_model()
    x, y = _batch()
    x0 = x.clone()
    attack = A.create(name, threat=tm, **options)
    x_adv = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x0)
    assert bool(in_threat(x_adv, x, tm).all())
    again = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_adv, again)
    with torch.no_grad():
        clean = model(x).argmax(dim=1) == y
        robust = model(x_adv).argmax(dim=1) == y
        assert not bool((robust & ~clean).any())  # robust <= clean, per example
        assert bool((margin(model(x_adv), y) >= margin(model(x), y) - 1e-6).all())
    assert model.training  # the mode is restored


def test_attacks_refuse_other_threats() -> None:
    with pytest.raises(ValueError, match="spike:k,a threats only"):
        A.create("spike-search", threat="linf:0.1")
    with pytest.raises(ValueError, match="drift:b threats only"):
        A.create("drift-search", threat="spike:2,1")


def _linear_pair(channels: int, length: int) -> tuple[nn.Module, torch.Tensor]:
    """Two-class linear model; the margin of class 0 is ``-w·x`` with ``w = W1 - W0``."""
    torch.manual_seed(3)
    linear = nn.Linear(channels * length, 2)
    w = (linear.weight[1] - linear.weight[0]).detach().reshape(channels, length)
    return nn.Sequential(nn.Flatten(), linear), w


def test_spike_search_reaches_the_linear_optimum() -> None:
    model, w = _linear_pair(2, 12)
    x, y = torch.zeros(1, 2, 12), torch.zeros(1, dtype=torch.long)
    k, a = 3, 0.7
    # Optimum of w·δ over the set: the k time steps with the largest a·Σ_c |w[c, t]|, each δ = a·sign(w).
    best_gain = (a * w.abs().sum(dim=0)).topk(k).values.sum()
    tm = ThreatModel.parse(f"spike:{k},{a}").with_box(*BOX)
    x_adv = A.create("spike-search", threat=tm, steps=20, queries=50)(model, x, y)
    with torch.no_grad():
        gained = margin(model(x_adv), y) - margin(model(x), y)
    assert float(gained) == pytest.approx(float(best_gain), rel=1e-5)


def test_drift_search_reaches_the_linear_optimum() -> None:
    model, w = _linear_pair(2, 16)
    x, y = torch.zeros(1, 2, 16), torch.zeros(1, dtype=torch.long)
    b = 0.5
    tm = ThreatModel.parse(f"drift:{b}").with_box(*BOX)
    s = torch.linspace(0, 1, 16)
    best_gain = max(  # enumerate every vertex of the endpoint square (a linear objective peaks there)
        float(sum((w[c] * (u[c] * (1 - s) + v[c] * s)).sum() for c in range(2)))
        for u in itertools.product((-b, b), repeat=2)
        for v in itertools.product((-b, b), repeat=2)
    )
    x_adv = A.create("drift-search", threat=tm, restarts=8, steps=10)(model, x, y)
    with torch.no_grad():
        gained = margin(model(x_adv), y) - margin(model(x), y)
    assert float(gained) == pytest.approx(best_gain, rel=1e-5)
