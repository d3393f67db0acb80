"""Sensor threat sets with exact projections: ``spike:k,a`` (sparse injection) and ``drift:b`` (bias).

Perturbations ``δ`` have the signal's shape ``(B, C, T)`` and are measured in σ units of each channel
(the data are standardised, :mod:`metaat.domains.sensors.data`). Both sets are intersected with the
saturation box: ``box[0] <= x + δ <= box[1]`` everywhere.

``spike:k,a`` — at most ``k`` time steps changed (a time step is the column ``δ[:, t]`` of all
channels), each coordinate by at most ``a``::

    S = {δ : #{t : δ[:, t] != 0} <= k,  |δ[c, t]| <= a}

Its exact Euclidean projection (the set is a union of boxes, one per choice of k columns): for each
column the best kept value is ``clip(z[:, t], max(-a, lo), min(a, hi))`` with cost
``||z_t - clip(z_t)||²`` against ``||z_t||²`` for zeroing it; the problem is separable in ``t`` with a
cardinality constraint, so keeping the ``k`` columns with the largest saving ``||z_t||² -
||z_t - clip(z_t)||²`` is optimal. ``eps = a``, ``params = (k,)``.

``drift:b`` — a per-channel linear bias (constant + ramp) given by its two endpoint values::

    D = {δ[c, t] = (1 - s_t) u_c + s_t v_c,  s_t = t / (T - 1),  |u_c| <= b, |v_c| <= b}

whose peak ``max_t |δ[c, t]| = max(|u_c|, |v_c|) <= b`` (a linear function peaks at an endpoint, so
the set is exactly "every linear drift of peak at most b"). The box is intersected exactly:
``lo_t <= (1 - s_t) u + s_t v <= hi_t`` for every ``t`` (the drift must fit under the saturation limit
everywhere, rather than be clipped by it). The exact projection of ``z`` is, per channel, the
least-squares line ``w0 = (u0, v0)`` of ``z`` followed by the projection of ``w0`` onto the polygon of
feasible ``(u, v)`` in the metric ``Q = LᵀL`` (``L = [1 - s, s]``): a 2-variable QP solved exactly by
enumerating its KKT candidates — ``w0``, its projection onto each constraint line and every vertex of
two lines — and keeping the feasible one of least cost (the optimum has at most two active
constraints, so it is among them). Constraints ``lo_t <= -b`` / ``hi_t >= b`` are implied by the
square and dropped, so the usual case is the square's 9 candidates. ``eps = b``, no params.

The Lp balls on sensors are the core's ``linf:eps`` / ``l2:eps`` with the sensor box.
"""

from __future__ import annotations

import math

import torch

from metaat.threats import ThreatKind, ThreatModel, box_bounds, format_number, register_threat_kind

_FEAS_TOL = 1e-9


def _check_signal(x: torch.Tensor, threat: ThreatModel) -> None:
    if x.dim() != 3:
        raise ValueError(f"{threat.norm} threats act on signals of shape (B, C, T); got shape {tuple(x.shape)}")


def _zero_tol(x: torch.Tensor, tol: float) -> float:
    """Slack for float round-off of ``x_adv - x`` at the magnitude of ``x``."""
    scale = float(x.abs().max()) if x.numel() else 0.0
    return tol + 8 * torch.finfo(x.dtype).eps * max(1.0, scale) if x.is_floating_point() else tol


# --------------------------------------------------------------------------------------------- spike


def project_spike(delta: torch.Tensor, x: torch.Tensor, k: int, a: float, box: tuple[float, float]) -> torch.Tensor:
    """Exact Euclidean projection of ``delta`` ``(B, C, T)`` onto {at most ``k`` columns nonzero,
    ``|δ| <= a``} ∩ {``box[0] <= x + δ <= box[1]``}."""
    lo, hi = box_bounds(x, box)
    kept = torch.max(torch.min(delta.clamp(-a, a), hi), lo)  # best value of each column if it is kept
    saving = delta.pow(2).sum(dim=1) - (delta - kept).pow(2).sum(dim=1)  # (B, T), >= 0
    t = delta.shape[-1]
    if k >= t:
        return kept
    top = saving.topk(k, dim=1).indices
    mask = torch.zeros_like(saving, dtype=torch.bool).scatter_(1, top, True)
    return torch.where(mask[:, None, :], kept, torch.zeros_like(kept))


class SpikeKind(ThreatKind):
    """``spike:k,a`` — at most k time steps changed, each coordinate by at most a (σ units).

    >>> t = ThreatModel.parse("spike:5,2")
    >>> (t.norm, t.eps, t.params, str(t))
    ('spike', 2.0, (5.0,), 'spike:5,2')
    """

    name = "spike"
    syntax = "spike:k,a (k >= 1 time steps, amplitude a > 0 in σ)"
    evaluation_attacks = (("spike-search", ()),)

    def parse_args(self, args: str) -> tuple[float, tuple[float, ...]]:
        parts = [p.strip() for p in args.split(",")]
        try:
            if len(parts) != 2:
                raise ValueError
            k, a = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"threat 'spike:{args}' must look like {self.syntax}, e.g. 'spike:5,2'") from None
        if not (math.isfinite(k) and k >= 1 and k == int(k)) or not (math.isfinite(a) and a > 0):
            raise ValueError(f"threat 'spike:{args}' must look like {self.syntax}, e.g. 'spike:5,2'")
        return a, (k,)

    def format_args(self, threat: ThreatModel) -> str:
        return f"{int(threat.params[0])},{format_number(threat.eps)}"

    @staticmethod
    def k(threat: ThreatModel) -> int:
        if len(threat.params) != 1:
            raise ValueError(f"a spike threat needs params=(k,), got {threat.params}")
        return int(threat.params[0])

    def project(self, delta: torch.Tensor, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        _check_signal(x, threat)
        return project_spike(delta, x, self.k(threat), threat.eps, threat.box)

    def random_init(self, x: torch.Tensor, threat: ThreatModel, generator: torch.Generator | None) -> torch.Tensor:
        _check_signal(x, threat)
        device = generator.device if generator is not None else torch.device("cpu")
        b, c, t = x.shape
        k = min(self.k(threat), t)
        cols = torch.rand(b, t, generator=generator, device=device).argsort(dim=1)[:, :k]
        values = (torch.rand(b, c, t, generator=generator, device=device) * 2 - 1) * threat.eps
        mask = torch.zeros(b, t, dtype=torch.bool, device=device).scatter_(1, cols, True)
        delta = torch.where(mask[:, None, :], values, torch.zeros_like(values))
        return self.project(delta.to(device=x.device, dtype=x.dtype), x, threat)

    def ascent(self, grad: torch.Tensor, threat: ThreatModel, x_adv: torch.Tensor | None) -> torch.Tensor:
        """``sign(g)`` on the k time steps of largest ``Σ_c |g[c, t]|``, 0 elsewhere: times ``a`` it is
        the maximiser of the linearised loss ``<g, δ>`` over the set (the box aside), so one step of
        size ``a`` from ``δ = 0`` is the exact FGSM of this set."""
        col = grad.abs().sum(dim=1)  # (B, T)
        top = col.topk(min(self.k(threat), col.shape[1]), dim=1).indices
        mask = torch.zeros_like(col, dtype=torch.bool).scatter_(1, top, True)
        return grad.sign() * mask[:, None, :]

    def step_size(self, threat: ThreatModel, steps: int) -> float:
        """``a`` for any number of steps: a spike only displaces a kept one when it can grow past it,
        so smaller steps leave PGD stuck on its first support (measured: several points weaker)."""
        return threat.eps

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel, tol: float) -> torch.Tensor:
        _check_signal(x, threat)
        delta = x_adv - x
        slack = _zero_tol(x, tol)
        changed = (delta.abs().amax(dim=1) > slack).sum(dim=1)
        small = delta.abs().flatten(1).amax(dim=1) <= threat.eps * (1 + tol) + slack
        low, high = threat.box
        flat = x_adv.flatten(1)
        in_box = (flat >= low - tol).all(dim=1) & (flat <= high + tol).all(dim=1)
        return (changed <= self.k(threat)) & small & in_box


# --------------------------------------------------------------------------------------------- drift


def ramp_basis(t: int, dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> torch.Tensor:
    """``L`` of shape ``(T, 2)``: columns ``1 - s`` and ``s``, ``s_t = t / (T - 1)``."""
    if t < 2:
        raise ValueError(f"a drift needs signals of length T >= 2, got T={t}")
    s = torch.linspace(0.0, 1.0, t, dtype=dtype, device=device)
    return torch.stack([1 - s, s], dim=1)


def drift_signal(u: torch.Tensor, v: torch.Tensor, t: int) -> torch.Tensor:
    """The drift ``(..., T)`` from endpoint values ``u``, ``v`` of shape ``(...)``."""
    basis = ramp_basis(t, u.dtype, u.device)
    return u[..., None] * basis[:, 0] + v[..., None] * basis[:, 1]


def _qp_candidates(
    w0: torch.Tensor, q: torch.Tensor, a: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """KKT candidates of ``min (w - w0)ᵀ Q (w - w0)`` s.t. ``A w <= c`` for one 2-d problem:
    ``w0``, the Q-projection of ``w0`` onto each line ``a_i·w = c_i``, and each pair's vertex.
    Returns ``(candidates (M, 2), cost (M,))`` (cost +inf where infeasible)."""
    qinv = torch.linalg.inv(q)
    qa = a @ qinv  # (N, 2) rows = Q⁻¹ a_i (Q symmetric)
    denom = (qa * a).sum(dim=1)
    lines = w0 - qa * ((a @ w0 - c) / denom)[:, None]
    n = a.shape[0]
    i, j = torch.triu_indices(n, n, offset=1, device=a.device)
    m11, m12, m21, m22 = a[i, 0], a[i, 1], a[j, 0], a[j, 1]
    det = m11 * m22 - m12 * m21
    ok = det.abs() > 1e-12
    det_safe = torch.where(ok, det, torch.ones_like(det))
    vu = (c[i] * m22 - m12 * c[j]) / det_safe
    vv = (m11 * c[j] - c[i] * m21) / det_safe
    vertices = torch.stack([vu, vv], dim=1)[ok]
    cand = torch.cat([w0[None], lines, vertices], dim=0)
    diff = cand - w0
    cost = ((diff @ q) * diff).sum(dim=1)
    feasible = (cand @ a.T <= c + _FEAS_TOL * (1 + c.abs())).all(dim=1)
    return cand, torch.where(feasible, cost, torch.full_like(cost, math.inf))


def project_drift(delta: torch.Tensor, x: torch.Tensor, b: float, box: tuple[float, float]) -> torch.Tensor:
    """Exact Euclidean projection of ``delta`` ``(B, C, T)`` onto the linear drifts of peak ``<= b``
    with ``box[0] <= x + δ <= box[1]`` (see the module docstring)."""
    bsz, ch, t = delta.shape
    basis = ramp_basis(t, torch.float64, delta.device)  # (T, 2)
    q = basis.T @ basis
    z = delta.to(torch.float64).reshape(-1, t)
    w0 = torch.linalg.solve(q, (z @ basis).T).T  # (N, 2) least-squares endpoints
    lo, hi = box_bounds(x.to(torch.float64), box)
    lo, hi = lo.reshape(-1, t), hi.reshape(-1, t)
    # The square alone: candidates w0, the 4 sides and the 4 corners.
    square_a = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64, device=z.device)
    square_c = torch.full((4,), float(b), dtype=torch.float64, device=z.device)
    w = _project_square(w0, q, float(b))
    needs_box = (hi < b).any(dim=1) | (lo > -b).any(dim=1)
    for row in torch.nonzero(needs_box).flatten().tolist():
        up = hi[row] < b
        down = lo[row] > -b
        a_rows = torch.cat([square_a, basis[up], -basis[down]], dim=0)
        c_rows = torch.cat([square_c, hi[row][up], -lo[row][down]], dim=0)
        cand, cost = _qp_candidates(w0[row], q, a_rows, c_rows)
        # δ = 0 is always feasible; it is the fallback should round-off reject every candidate.
        w[row] = cand[int(cost.argmin())] if bool(torch.isfinite(cost).any()) else torch.zeros_like(w0[row])
    out = (w @ basis.T).reshape(bsz, ch, t)
    # The exact optimum sits on the constraint; float round-off may cross the box by ~1e-16: clamp.
    lo_b, hi_b = box_bounds(x, box)
    return torch.max(torch.min(out.to(delta.dtype), hi_b), lo_b)


def _project_square(w0: torch.Tensor, q: torch.Tensor, b: float) -> torch.Tensor:
    """Q-metric projection of each row of ``w0`` ``(N, 2)`` onto ``[-b, b]²`` (9 KKT candidates)."""
    n = w0.shape[0]
    u0, v0 = w0[:, 0], w0[:, 1]
    # On the side u = ±b the best v is v0 - (Q12/Q22)(u - u0); on v = ±b the best u likewise.
    sides = []
    for sign in (1.0, -1.0):
        u = torch.full_like(u0, sign * b)
        sides.append(torch.stack([u, v0 - q[0, 1] / q[1, 1] * (u - u0)], dim=1))
        v = torch.full_like(v0, sign * b)
        sides.append(torch.stack([u0 - q[0, 1] / q[0, 0] * (v - v0), v], dim=1))
    corners = [
        torch.tensor([su * b, sv * b], dtype=w0.dtype, device=w0.device).expand(n, 2)
        for su in (1, -1)
        for sv in (1, -1)
    ]
    cand = torch.stack([w0, *sides, *corners], dim=1)  # (N, 9, 2)
    diff = cand - w0[:, None, :]
    cost = ((diff @ q) * diff).sum(dim=2)
    feasible = (cand.abs() <= b * (1 + _FEAS_TOL) + _FEAS_TOL).all(dim=2)
    cost = torch.where(feasible, cost, torch.full_like(cost, math.inf))
    best = cost.argmin(dim=1)
    return cand[torch.arange(n, device=w0.device), best]


class DriftKind(ThreatKind):
    """``drift:b`` — a per-channel linear bias (constant + ramp) of peak at most b (σ units).

    >>> from metaat.threats import project
    >>> x = torch.zeros(1, 1, 5)
    >>> delta = project(torch.tensor([[[0.0, 1.0, 0.0, 1.0, 2.0]]]), x, ThreatModel.parse("drift:1").with_box(-8, 8))
    >>> [round(v, 3) for v in delta[0, 0].tolist()]  # least squares: 0 -> 1.6; nearest with peak <= 1:
    [0.2, 0.4, 0.6, 0.8, 1.0]
    """

    name = "drift"
    syntax = "drift:b (peak bias b > 0 in σ)"
    evaluation_attacks = (("drift-search", ()),)

    def parse_args(self, args: str) -> tuple[float, tuple[float, ...]]:
        try:
            b = float(args)
        except ValueError:
            raise ValueError(f"threat 'drift:{args}' must look like {self.syntax}, e.g. 'drift:0.5'") from None
        if not (math.isfinite(b) and b > 0):
            raise ValueError(f"threat 'drift:{args}' must look like {self.syntax}, e.g. 'drift:0.5'")
        return b, ()

    def project(self, delta: torch.Tensor, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        _check_signal(x, threat)
        return project_drift(delta, x, threat.eps, threat.box)

    def random_init(self, x: torch.Tensor, threat: ThreatModel, generator: torch.Generator | None) -> torch.Tensor:
        _check_signal(x, threat)
        device = generator.device if generator is not None else torch.device("cpu")
        b, c, t = x.shape
        ends = (torch.rand(b, c, 2, generator=generator, device=device) * 2 - 1) * threat.eps
        delta = drift_signal(ends[..., 0], ends[..., 1], t)
        return self.project(delta.to(device=x.device, dtype=x.dtype), x, threat)

    def ascent(self, grad: torch.Tensor, threat: ThreatModel, x_adv: torch.Tensor | None) -> torch.Tensor:
        """The drift whose endpoints move by ``sign(Lᵀ g)``: steepest ascent in the endpoint values."""
        t = grad.shape[-1]
        basis = ramp_basis(t, grad.dtype, grad.device)
        ends = (grad @ basis).sign()  # (B, C, 2)
        return drift_signal(ends[..., 0], ends[..., 1], t)

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel, tol: float) -> torch.Tensor:
        _check_signal(x, threat)
        delta = (x_adv - x).to(torch.float64)
        slack = _zero_tol(x, tol)
        u, v = delta[..., 0], delta[..., -1]
        linear = (delta - drift_signal(u, v, delta.shape[-1])).abs().flatten(1).amax(dim=1) <= 2 * slack
        peak = torch.maximum(u.abs(), v.abs()).flatten(1).amax(dim=1) <= threat.eps * (1 + tol) + slack
        low, high = threat.box
        flat = x_adv.flatten(1)
        in_box = (flat >= low - tol).all(dim=1) & (flat <= high + tol).all(dim=1)
        return linear & peak & in_box


SPIKE = register_threat_kind(SpikeKind())
DRIFT = register_threat_kind(DriftKind())
