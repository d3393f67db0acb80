"""The sensor threat sets: exact projections (against enumeration / a dense grid), membership, parsing."""

from __future__ import annotations

import itertools

import pytest
import torch

import metaat.domains.sensors.threats as sensor_threats
from metaat.threats import ThreatModel, in_threat, project, random_init, threat_ascent

BOX = (-2.0, 2.0)


def _spike(k: int, a: float, box: tuple[float, float] = BOX) -> ThreatModel:
    return ThreatModel("spike", a, (float(k),)).with_box(*box)


def _drift(b: float, box: tuple[float, float] = BOX) -> ThreatModel:
    return ThreatModel("drift", b).with_box(*box)


def _brute_spike(z: torch.Tensor, x: torch.Tensor, k: int, a: float, box: tuple[float, float]) -> torch.Tensor:
    """Minimum distance over every subset of at most k columns (z, x: (C, T), float64)."""
    lo, hi = box[0] - x, box[1] - x
    clipped = torch.max(torch.min(z.clamp(-a, a), hi), lo)
    best = torch.tensor(float("inf"), dtype=z.dtype)
    t = z.shape[1]
    for size in range(k + 1):
        for cols in itertools.combinations(range(t), size):
            d = torch.zeros_like(z)
            if cols:
                d[:, list(cols)] = clipped[:, list(cols)]
            best = torch.minimum(best, (z - d).pow(2).sum())
    return best


def test_spike_projection_matches_enumeration() -> None:
    gen = torch.Generator().manual_seed(0)
    for trial in range(40):
        c, t, k = 2, 5, 1 + trial % 3
        x = (torch.rand(1, c, t, generator=gen, dtype=torch.float64) * 4 - 2) * 0.9
        z = torch.randn(1, c, t, generator=gen, dtype=torch.float64) * 1.5
        threat = _spike(k, 0.7)
        p = project(z, x, threat)
        assert bool(in_threat(x + p, x, threat).all())
        dist = (z - p).pow(2).sum()
        assert torch.isclose(dist, _brute_spike(z[0], x[0], k, 0.7, BOX), atol=1e-12), trial


def _brute_drift(z: torch.Tensor, x: torch.Tensor, b: float, box: tuple[float, float], n: int = 801) -> torch.Tensor:
    """Least distance from z (T,) to a feasible linear drift, over an n x n grid of endpoints."""
    t = z.shape[0]
    s = torch.linspace(0, 1, t, dtype=torch.float64)
    g = torch.linspace(-b, b, n, dtype=torch.float64)
    u, v = torch.meshgrid(g, g, indexing="ij")
    d = u[..., None] * (1 - s) + v[..., None] * s  # (n, n, T)
    ok = ((x + d >= box[0]) & (x + d <= box[1])).all(dim=-1)
    cost = (d - z).pow(2).sum(dim=-1)
    return cost[ok].min()


@pytest.mark.parametrize("near_box", [False, True])
def test_drift_projection_is_optimal_against_a_dense_grid(near_box: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    b = 0.5
    for trial in range(12):
        t = 6
        x = torch.rand(1, 1, t, generator=gen, dtype=torch.float64) * 3.6 - 1.8
        if near_box:  # samples within b of the limits: box constraints become active
            x[0, 0, 0], x[0, 0, t - 2] = 1.8, -1.9
        z = torch.randn(1, 1, t, generator=gen, dtype=torch.float64)
        threat = _drift(b)
        p = project(z, x, threat)
        assert bool(in_threat(x + p, x, threat, tol=1e-9).all()), trial
        ours = (z - p).pow(2).sum()
        grid = _brute_drift(z[0, 0], x[0, 0], b, BOX)
        # Ours is exact: never worse than the grid, and the grid (step b/400) comes within its resolution.
        assert ours <= grid + 1e-10, trial
        assert grid - ours < 5e-3, trial


def test_drift_box_constraint_binds_exactly() -> None:
    x = torch.zeros(1, 1, 5, dtype=torch.float64)
    x[0, 0, 4] = 1.9  # only 0.1 of headroom at the end
    z = torch.full((1, 1, 5), 1.0, dtype=torch.float64)
    p = project(z, x, _drift(0.5))
    assert float(p[0, 0, 4]) == pytest.approx(0.1, abs=1e-12)
    assert float((x + p).max()) <= 2.0


@pytest.mark.parametrize("threat", [_spike(3, 0.8), _drift(0.6)])
def test_projection_is_idempotent_and_inside(threat: ThreatModel) -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(4, 3, 20, generator=gen) * 3.8 - 1.9
    z = torch.randn(4, 3, 20, generator=gen) * 2
    p = project(z, x, threat)
    assert bool(in_threat(x + p, x, threat).all())
    assert torch.allclose(project(p, x, threat), p, atol=1e-6)
    assert bool((x + p >= BOX[0]).all() and (x + p <= BOX[1]).all())


@pytest.mark.parametrize("threat", [_spike(3, 0.8), _drift(0.6)])
def test_random_init_and_ascent_stay_in_the_set(threat: ThreatModel) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(5, 2, 16, generator=gen) * 3.8 - 1.9
    d0 = random_init(x, threat, torch.Generator().manual_seed(4))
    assert torch.equal(d0, random_init(x, threat, torch.Generator().manual_seed(4)))
    assert bool(in_threat(x + d0, x, threat).all())
    assert float(d0.abs().max()) > 0
    step = threat_ascent(torch.randn(5, 2, 16, generator=gen), threat)
    d1 = project(d0 + 0.3 * step, x, threat)
    assert bool(in_threat(x + d1, x, threat).all())


def test_membership_rejects_what_lies_outside() -> None:
    x = torch.zeros(1, 2, 10)
    spike = _spike(2, 1.0)
    d = torch.zeros(1, 2, 10)
    d[0, :, [1, 4]] = 0.9
    assert bool(in_threat(x + d, x, spike).all())
    d[0, 0, 7] = 0.1  # a third time step
    assert not bool(in_threat(x + d, x, spike).any())
    d = torch.zeros(1, 2, 10)
    d[0, 1, 3] = 1.2  # too large
    assert not bool(in_threat(x + d, x, spike).any())
    drift = _drift(0.5)
    ramp = torch.linspace(-0.5, 0.5, 10).expand(1, 2, 10)
    assert bool(in_threat(x + ramp, x, drift).all())
    assert not bool(in_threat(x + ramp * 1.2, x, drift).any())  # peak 0.6 > 0.5
    bent = ramp.clone()
    bent[0, 0, 5] += 0.05  # not linear
    assert not bool(in_threat(x + bent, x, drift).any())
    assert not bool(in_threat(torch.full((1, 2, 10), 1.99) + 0.3, torch.full((1, 2, 10), 1.99), drift).any())


def test_parse_and_format_round_trip() -> None:
    assert isinstance(sensor_threats.SPIKE, sensor_threats.SpikeKind)
    t = ThreatModel.parse("spike:5,2")
    assert (t.norm, t.eps, t.params) == ("spike", 2.0, (5.0,))
    assert str(t) == "spike:5,2"
    d = ThreatModel.parse("drift:0.5")
    assert (d.norm, d.eps, d.params) == ("drift", 0.5, ())
    for text in ("spike:5,2", "spike:1,0.25", "drift:0.5", "drift:1.25"):
        assert str(ThreatModel.parse(text)) == text
        assert ThreatModel.parse(str(ThreatModel.parse(text))) == ThreatModel.parse(text)


@pytest.mark.parametrize(
    ("text", "syntax"),
    [
        ("spike:5", "spike:k,a"),
        ("spike:0,2", "spike:k,a"),
        ("spike:2.5,1", "spike:k,a"),
        ("spike:3,-1", "spike:k,a"),
        ("spike:a,b", "spike:k,a"),
        ("drift:x", "drift:b"),
        ("drift:0", "drift:b"),
        ("drift:1,2", "drift:b"),
    ],
)
def test_bad_syntax_is_one_line_naming_the_syntax(text: str, syntax: str) -> None:
    with pytest.raises(ValueError, match=syntax.replace(":", ":")) as info:
        ThreatModel.parse(text)
    assert "\n" not in str(info.value)


def test_wrong_rank_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\(B, C, T\)"):
        project(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), _spike(1, 1.0))


def test_one_spike_step_is_the_exact_linear_maximiser() -> None:
    gen = torch.Generator().manual_seed(6)
    g = torch.randn(3, 4, 25, generator=gen)
    x = torch.zeros(3, 4, 25)
    threat = _spike(4, 0.5, box=(-8.0, 8.0))
    step = threat.kind.step_size(threat, 10) if threat.kind else 0.0
    delta = project(step * threat_ascent(g, threat), x, threat)
    best = 0.5 * g.abs().sum(dim=1).topk(4, dim=1).values.sum(dim=1)  # top-k columns at ±a
    assert torch.allclose((g * delta).flatten(1).sum(dim=1), best, rtol=1e-6)
