"""Threat models and their pure functions: parsing, exact projections, random init, ascent directions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metaat.runtime import make_generator
from metaat.threats import (
    NORMS,
    ThreatModel,
    default_step_size,
    in_threat,
    lp_norm,
    parse_threats,
    project,
    random_init,
    steepest_ascent,
)

FAST = settings(max_examples=25, deadline=None)

# ---------------------------------------------------------------------------------------------------
# parsing


@FAST
@given(
    norm=st.sampled_from(NORMS),
    eps=st.floats(min_value=1e-8, max_value=1e4, allow_nan=False, allow_infinity=False),
)
def test_parse_str_round_trip(norm: str, eps: float) -> None:
    threat = ThreatModel(norm, eps)
    assert ThreatModel.parse(str(threat)) == threat
    assert ThreatModel.parse(threat) is threat


def test_str_is_short_for_customary_radii() -> None:
    assert str(ThreatModel("linf", 0.1)) == "linf:0.1"
    assert str(ThreatModel("l2", 1.5)) == "l2:1.5"
    assert str(ThreatModel("l1", 10)) == "l1:10"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("linf:0.1", ("linf", 0.1)), ("L2:1.5", ("l2", 1.5)), ("inf:0.3", ("linf", 0.3)), (" l1 : 10 ", ("l1", 10.0))],
)
def test_parse_accepts_aliases_case_and_spaces(text: str, expected: tuple[str, float]) -> None:
    threat = ThreatModel.parse(text)
    assert (threat.norm, threat.eps) == expected
    assert isinstance(threat.eps, float)


def test_unknown_norm_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown norm 'l3'; valid norms: linf, l2, l1"):
        ThreatModel.parse("l3:0.1")
    with pytest.raises(ValueError, match="valid norms"):
        ThreatModel("l0", 1.0)


@pytest.mark.parametrize("eps", [0.0, -0.1, float("nan"), float("inf"), float("-inf")])
def test_bad_eps_is_rejected(eps: float) -> None:
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        ThreatModel("linf", eps)


@pytest.mark.parametrize("text", ["linf:0", "linf:-1", "linf:nan", "l2:inf"])
def test_bad_eps_in_text_is_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        ThreatModel.parse(text)


@pytest.mark.parametrize("text", ["linf", "linf0.1", "linf:0.1:2", "", "0.1"])
def test_malformed_text_says_what_it_should_look_like(text: str) -> None:
    with pytest.raises(ValueError, match=r"threat must look like 'linf:0.1'"):
        ThreatModel.parse(text)


@pytest.mark.parametrize("text", ["linf:abc", "l2:", "l1:1e", ":"])
def test_non_numeric_eps_is_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="is not a number"):
        ThreatModel.parse(text)


def test_non_string_is_rejected() -> None:
    with pytest.raises(ValueError, match="threat must look like"):
        ThreatModel.parse(0.1)  # type: ignore[arg-type]


def test_parse_threats() -> None:
    assert parse_threats("linf:0.1") == (ThreatModel("linf", 0.1),)
    assert parse_threats(["linf:0.1", ThreatModel("l2", 1.5)]) == (ThreatModel("linf", 0.1), ThreatModel("l2", 1.5))
    with pytest.raises(ValueError, match="duplicate"):
        parse_threats(["linf:0.1", "inf:0.1"])
    with pytest.raises(ValueError, match="at least one"):
        parse_threats([])


def test_autoattack_spelling_and_default_step() -> None:
    assert [ThreatModel(n, 1).autoattack_norm for n in NORMS] == ["Linf", "L2", "L1"]
    assert default_step_size(ThreatModel("linf", 0.1), 10) == pytest.approx(0.025)
    assert default_step_size(ThreatModel("linf", 0.1), 1) == pytest.approx(0.1)  # never more than eps


# ---------------------------------------------------------------------------------------------------
# norms and projections


def test_lp_norm_matches_torch() -> None:
    d = torch.randn(4, 2, 3, 3, generator=make_generator(0))
    flat = d.flatten(1)
    for norm, order in (("linf", math.inf), ("l2", 2), ("l1", 1)):
        torch.testing.assert_close(lp_norm(d, norm), torch.linalg.vector_norm(flat, ord=order, dim=1))
    with pytest.raises(ValueError, match="valid norms"):
        lp_norm(d, "l3")


def _problem(seed: int, shape: tuple[int, ...], scale: float, dtype: torch.dtype = torch.float64):
    """A clean point in [0, 1] (some pixels exactly on the box edges) and an arbitrary perturbation."""
    g = make_generator(seed)
    x = torch.rand(shape, generator=g, dtype=dtype)
    edge = torch.rand(shape, generator=g) < 0.2
    x = torch.where(edge, (torch.rand(shape, generator=g) < 0.5).to(dtype), x)
    delta = torch.randn(shape, generator=g, dtype=dtype) * scale
    return x, delta


shapes = st.sampled_from([(1, 1, 2, 2), (3, 1, 4, 4), (2, 3, 5, 5), (5, 1, 1, 7)])


@FAST
@given(
    seed=st.integers(0, 10_000),
    shape=shapes,
    norm=st.sampled_from(NORMS),
    eps=st.floats(0.01, 5.0),
    scale=st.sampled_from([0.01, 0.3, 3.0]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_projection_lands_in_ball_and_box_and_is_idempotent(
    seed: int, shape: tuple[int, ...], norm: str, eps: float, scale: float, dtype: torch.dtype
) -> None:
    threat = ThreatModel(norm, eps)
    x, delta = _problem(seed, shape, scale, dtype)
    p = project(delta, x, threat)
    assert p.shape == delta.shape and p.dtype == dtype
    assert (lp_norm(p, norm) <= eps + 1e-6).all()
    assert (x + p >= -1e-6).all() and (x + p <= 1 + 1e-6).all()
    assert in_threat(x + p, x, threat).all()
    torch.testing.assert_close(project(p, x, threat), p, atol=1e-6, rtol=0)


@FAST
@given(
    seed=st.integers(0, 10_000),
    shape=shapes,
    norm=st.sampled_from(NORMS),
    eps=st.floats(0.01, 5.0),
)
def test_projection_of_a_point_inside_is_the_identity(seed: int, shape: tuple[int, ...], norm: str, eps: float) -> None:
    threat = ThreatModel(norm, eps)
    x, delta = _problem(seed, shape, 1.0)
    # Shrink an arbitrary box-feasible perturbation to strictly inside the ball.
    inside = (x + delta).clamp(0, 1) - x
    n = lp_norm(inside, norm).clamp_min(1e-12)
    factor = torch.clamp(0.9 * eps / n, max=0.9).reshape(-1, 1, 1, 1)  # < 1: strictly inside, no rounding out
    inside = inside * factor
    assert in_threat(x + inside, x, threat, tol=0).all()
    assert torch.equal(project(inside, x, threat), inside)


@FAST
@given(
    seed=st.integers(0, 10_000),
    shape=shapes,
    norm=st.sampled_from(NORMS),
    eps=st.floats(0.05, 3.0),
)
def test_projection_is_the_closest_feasible_point(seed: int, shape: tuple[int, ...], norm: str, eps: float) -> None:
    """Variational inequality of a projection onto a convex set: <z - p, q - p> <= 0 for every feasible q."""
    threat = ThreatModel(norm, eps)
    x, z = _problem(seed, shape, 1.0)
    p = project(z, x, threat)
    g = make_generator(seed + 1)
    for _ in range(8):
        q = random_init(x, threat, g)
        inner = ((z - p) * (q - p)).flatten(1).sum(dim=1)
        assert (inner <= 1e-6).all()
        assert ((z - p).flatten(1).norm(dim=1) <= (z - q).flatten(1).norm(dim=1) + 1e-9).all()


def test_linf_projection_is_clip_of_clip() -> None:
    x, z = _problem(3, (4, 1, 5, 5), 0.5)
    p = project(z, x, ThreatModel("linf", 0.1))
    torch.testing.assert_close(p, torch.minimum(torch.maximum(z.clamp(-0.1, 0.1), -x), 1 - x), rtol=0, atol=0)


def _best_candidate(cands: np.ndarray, z: np.ndarray, lo: np.ndarray, hi: np.ndarray, norm_ord: int, eps: float):
    ok = np.linalg.norm(cands, ord=norm_ord, axis=1) <= eps * (1 + 1e-9) + 1e-12
    ok &= (cands >= lo - 1e-12).all(axis=1) & (cands <= hi + 1e-12).all(axis=1)
    feasible = cands[ok]
    return feasible[np.argmin(((feasible - z) ** 2).sum(axis=1))]


def brute_force_l2(z: np.ndarray, lo: np.ndarray, hi: np.ndarray, eps: float) -> np.ndarray:
    """Exact projection onto {||d||_2 <= eps, lo <= d <= hi} by enumerating every active set.

    At the optimum each coordinate is at ``lo``, at ``hi`` or free; free coordinates are ``z_i`` (ball
    inactive) or ``z_i / c`` with ``c`` fixed by ``||d||_2 = eps`` (ball active). The optimum is one of
    these candidates, so it is the feasible candidate closest to ``z``.
    """
    d = z.size
    states = np.array(list(itertools.product(range(3), repeat=d)))  # 0 lo, 1 hi, 2 free
    fixed = np.where(states == 0, lo, hi)
    free = states == 2
    inactive = np.where(free, z, fixed)
    s_fixed = np.where(free, 0, fixed**2).sum(axis=1)
    s_free = np.where(free, z**2, 0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.sqrt(s_free / (eps**2 - s_fixed))
        active = np.where(free, z / c[:, None], fixed)
    valid = (eps**2 - s_fixed > 0) & (s_free > 0)
    cands = np.concatenate([inactive, active[valid]])
    return _best_candidate(cands, z, lo, hi, 2, eps)


def brute_force_l1(z: np.ndarray, lo: np.ndarray, hi: np.ndarray, eps: float) -> np.ndarray:
    """Exact projection onto {||d||_1 <= eps, lo <= d <= hi} by enumerating every active set.

    Each coordinate is at ``lo``, ``hi``, 0, or free; free coordinates are ``z_i`` (ball inactive) or
    ``z_i - λ sign(z_i)`` with ``λ`` fixed by ``||d||_1 = eps`` (ball active).
    """
    d = z.size
    states = np.array(list(itertools.product(range(4), repeat=d)))  # 0 lo, 1 hi, 2 zero, 3 free
    fixed = np.select([states == 0, states == 1], [lo, hi], 0.0)
    free = states == 3
    n_free = free.sum(axis=1)
    inactive = np.where(free, z, fixed)
    budget = np.where(free, np.abs(z), np.abs(fixed)).sum(axis=1) - eps
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = budget / n_free
        active = np.where(free, z - lam[:, None] * np.sign(z), fixed)
    valid = (n_free > 0) & (lam > 0)
    cands = np.concatenate([inactive, active[valid]])
    return _best_candidate(cands, z, lo, hi, 1, eps)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 100_000),
    dim=st.integers(2, 6),
    norm=st.sampled_from(["l2", "l1"]),
    eps=st.floats(0.05, 2.0),
    scale=st.sampled_from([0.2, 1.0, 3.0]),
)
def test_l2_and_l1_projection_match_brute_force(seed: int, dim: int, norm: str, eps: float, scale: float) -> None:
    rng = np.random.default_rng(seed)
    x = rng.random(dim)
    x[rng.random(dim) < 0.2] = rng.integers(0, 2)  # some pixels on the box edges
    z = rng.normal(0, scale, dim)
    p = project(
        torch.from_numpy(z).reshape(1, 1, 1, dim), torch.from_numpy(x).reshape(1, 1, 1, dim), ThreatModel(norm, eps)
    )
    solver = brute_force_l2 if norm == "l2" else brute_force_l1
    expected = solver(z, -x, 1 - x, eps)
    np.testing.assert_allclose(p.reshape(-1).numpy(), expected, atol=1e-5, rtol=0)


def test_brute_force_references_know_simple_answers() -> None:
    """Sanity of the references themselves on hand-solved cases."""
    lo, hi = np.full(2, -0.5), np.full(2, 0.5)
    np.testing.assert_allclose(brute_force_l2(np.array([3.0, 4.0]), lo - 10, hi + 10, 1.0), [0.6, 0.8])
    np.testing.assert_allclose(brute_force_l2(np.array([3.0, 0.1]), lo, hi, 1.0), [0.5, 0.1])
    np.testing.assert_allclose(brute_force_l1(np.array([2.0, 1.0]), lo - 10, hi + 10, 1.0), [1.0, 0.0])
    np.testing.assert_allclose(brute_force_l1(np.array([2.0, 1.0]), lo, hi, 1.0), [0.5, 0.5])


def test_projection_works_on_whole_batches_with_mixed_cases() -> None:
    """Examples already inside and examples far outside share one call; each is handled on its own."""
    x, z = _problem(7, (6, 1, 3, 3), 1.0)
    z[::2] = 0.9 * ((x + 1e-2 * z).clamp(0, 1) - x)[::2]  # every other example is already feasible
    for norm in NORMS:
        threat = ThreatModel(norm, 0.5)
        p = project(z, x, threat)
        for i in range(len(z)):
            torch.testing.assert_close(p[i : i + 1], project(z[i : i + 1], x[i : i + 1], threat), atol=1e-9, rtol=0)
        torch.testing.assert_close(p[::2], z[::2])


# ---------------------------------------------------------------------------------------------------
# random init


@FAST
@given(seed=st.integers(0, 10_000), shape=shapes, norm=st.sampled_from(NORMS), eps=st.floats(0.01, 5.0))
def test_random_init_lies_inside(seed: int, shape: tuple[int, ...], norm: str, eps: float) -> None:
    threat = ThreatModel(norm, eps)
    x, _ = _problem(seed, shape, 1.0, torch.float32)
    delta = random_init(x, threat, make_generator(seed))
    assert delta.shape == x.shape and delta.dtype == x.dtype
    assert in_threat(x + delta, x, threat).all()
    assert (delta != 0).any()


def test_random_init_is_reproducible_and_follows_the_generator() -> None:
    x = torch.full((3, 1, 4, 4), 0.5)
    for norm in NORMS:
        threat = ThreatModel(norm, 0.3)
        a = random_init(x, threat, make_generator(1))
        assert torch.equal(a, random_init(x, threat, make_generator(1)))
        assert not torch.equal(a, random_init(x, threat, make_generator(2)))


def test_random_init_fills_the_linf_ball() -> None:
    """Away from the box, L∞ noise is uniform in [-eps, eps]: it reaches near both ends."""
    x = torch.full((4, 1, 16, 16), 0.5)
    delta = random_init(x, ThreatModel("linf", 0.1), make_generator(0))
    assert delta.max() > 0.09 and delta.min() < -0.09
    assert abs(float(delta.mean())) < 0.01


# ---------------------------------------------------------------------------------------------------
# steepest ascent


def _grad(seed: int = 0, shape: tuple[int, ...] = (3, 1, 5, 5)) -> torch.Tensor:
    return torch.randn(shape, generator=make_generator(seed), dtype=torch.float64)


def test_linf_direction_is_the_sign() -> None:
    g = _grad()
    assert torch.equal(steepest_ascent(g, "linf"), g.sign())


def test_l2_direction_is_the_unit_gradient() -> None:
    g = _grad()
    d = steepest_ascent(g, "l2")
    torch.testing.assert_close(lp_norm(d, "l2"), torch.ones(3, dtype=torch.float64))
    cos = (d * g).flatten(1).sum(1) / g.flatten(1).norm(dim=1)
    torch.testing.assert_close(cos, torch.ones(3, dtype=torch.float64))
    assert torch.equal(steepest_ascent(torch.zeros(2, 1, 3, 3), "l2"), torch.zeros(2, 1, 3, 3))  # no NaN


@pytest.mark.parametrize(("sparsity", "k"), [(0.99, 1), (0.9, 3), (0.5, 13), (0.0, 25)])
def test_l1_direction_is_sparse_signed_and_unit(sparsity: float, k: int) -> None:
    g = _grad()
    d = steepest_ascent(g, "l1", l1_sparsity=sparsity)
    flat, gflat = d.flatten(1), g.flatten(1)
    assert ((flat != 0).sum(dim=1) == k).all()
    torch.testing.assert_close(lp_norm(d, "l1"), torch.ones(3, dtype=torch.float64))
    top = gflat.abs().topk(k, dim=1).indices
    torch.testing.assert_close(flat.gather(1, top), gflat.gather(1, top).sign() / k)


def test_l1_direction_skips_coordinates_stuck_on_the_box() -> None:
    g = torch.tensor([5.0, -4.0, 3.0, -2.0, 1.0, 0.5], dtype=torch.float64).reshape(1, 1, 1, 6)
    x_adv = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.0, 1.0], dtype=torch.float64).reshape(1, 1, 1, 6)
    # Stuck: 0 (at 1, pushed up), 1 (at 0, pushed down), 5 (at 1, pushed up). Free: 2, 3 and 4 (at 0 but
    # pushed up, into the box). With k = 3 the direction is the signs of 2, 3, 4.
    d = steepest_ascent(g, "l1", x_adv=x_adv, l1_sparsity=0.5).reshape(-1)
    assert d.tolist() == [0.0, 0.0, 1 / 3, -1 / 3, 1 / 3, 0.0]
    # Fewer free coordinates than k: the free ones share the whole unit budget, stuck ones get none.
    d = steepest_ascent(g, "l1", x_adv=x_adv, l1_sparsity=0.0).reshape(-1)
    assert d.tolist() == [0.0, 0.0, 1 / 3, -1 / 3, 1 / 3, 0.0]
    # Everything stuck: no direction at all rather than a push out of the box.
    d = steepest_ascent(g.abs(), "l1", x_adv=torch.ones_like(x_adv), l1_sparsity=0.0)
    assert torch.equal(d, torch.zeros_like(d))


def test_steepest_ascent_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="valid norms"):
        steepest_ascent(_grad(), "l3")
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="l1_sparsity"):
            steepest_ascent(_grad(), "l1", l1_sparsity=bad)


# ---------------------------------------------------------------------------------------------------
# membership


@pytest.mark.parametrize("norm", NORMS)
def test_in_threat(norm: str) -> None:
    threat = ThreatModel(norm, 0.2)
    x = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    on_sphere = torch.zeros_like(x)
    on_sphere[0, 0, 0, 0] = 0.2
    assert in_threat(x + on_sphere, x, threat).item()
    assert not in_threat(x + on_sphere * 1.001, x, threat).item()
    assert in_threat(x + on_sphere * (1 + 1e-8), x, threat).item()  # within tolerance
    at_edge = torch.zeros_like(x)
    at_edge[0, 0, 0, 0] = 1.0
    assert in_threat(at_edge, at_edge, threat).item()
    outside = at_edge.clone()
    outside[0, 0, 0, 0] = 1.0 + 1e-3
    assert not in_threat(outside, at_edge, threat).item()  # tiny move, but leaves [0, 1]
    below = torch.zeros_like(x)
    below[0, 0, 0, 1] = -1e-3
    assert not in_threat(below, torch.zeros_like(x), threat).item()
    # Per example.
    batch = torch.cat([x + on_sphere, x + 2 * on_sphere])
    assert in_threat(batch, torch.cat([x, x]), threat).tolist() == [True, False]
