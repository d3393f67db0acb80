"""Generator networks that produce perturbations, and the threat encoding they are conditioned on.

Two families, both small conv nets (≈10k parameters at the default width) whose output is always
projected onto the threat set (ball ∩ [0, 1] box) with :func:`metaat.threats.project`:

* :class:`LearnedAttacker` — the learned attacker of L2L (Jiang, Ma, Chen, Bailey, Jiang 2021,
  "Learning to Defend by Learning to Attack", AISTATS), extended to many threats at once. One step
  maps ``[x, δ/max|δ|, ∇ₓL/max|∇ₓL|]`` to a new perturbation; the conv features are modulated by
  FiLM (Perez et al. 2018) from the threat's encoding (norm one-hot, log of the per-pixel budget).
  The gradient enters twice: as an input channel (as in L2L) and through a learnable skip term,
  so at initialisation one step is an FGSM-like steepest-ascent step that the network then learns
  to correct. Per norm the output is shaped to the ball before projection:

  - L∞: ``eps · tanh(u + s·sign g)``;
  - L2: ``eps · v / ||v||₂`` with ``v = u + s·g/rms(g)``;
  - L1: ``eps · tanh(u + s·sign g) · softmax(a + c·|g|/max|g|)`` — the budget is allocated to a
    few coordinates (the L1 ball's corners are sparse); coordinates stuck on the box get none.

  The shaped step is scaled by a learnable per-norm multiplier, added to ``δ`` and projected
  (``δ ← Π(δ + m · step)``); L1 starts at ``m = 4`` so that the exact L1 ∩ box projection fills
  the budget greedily instead of wasting it on coordinates the box clips.

  Every step costs one forward+backward of the target (the gradient) plus a generator pass.
* :class:`NoiseGenerator` — MNG-AC's meta-noise generator (Madaan, Shin, Hwang 2021, ICML): maps
  ``[x, z]`` (input-dependent, as in the paper) or ``z`` alone (noise-only, as in the released
  code), ``z ~ N(0, I)``, to a perturbation; it needs no gradient of the target.

Shapes: ``x``, ``delta``, ``grad``, ``noise`` are ``(B, C, H, W)`` in pixel space.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metaat.registry import Registry
from metaat.threats import NORMS, ThreatModel, project

GENERATORS: Registry[nn.Module] = Registry("generator")
THREAT_FEATURES = len(NORMS) + 1


def per_pixel_budget(threat: ThreatModel, dim: int) -> float:
    """The budget spread evenly over ``dim`` coordinates: eps (L∞), eps/√d (L2), eps/d (L1); a domain
    threat counts as the Lp norm it resembles (``ThreatModel.lp_like``)."""
    norm = threat.lp_like
    if norm == "linf":
        return threat.eps
    if norm == "l2":
        return threat.eps / math.sqrt(dim)
    return threat.eps / dim


def threat_features(threat: ThreatModel, dim: int, like: torch.Tensor) -> torch.Tensor:
    """Encoding ``(1, 4)``: norm one-hot and ``log(per-pixel budget)`` scaled to about [-1, 1]."""
    onehot = [1.0 if threat.lp_like == n else 0.0 for n in NORMS]
    scale = (math.log(per_pixel_budget(threat, dim)) + 4.0) / 2.0
    return torch.tensor([onehot + [scale]], dtype=like.dtype, device=like.device)


def box_centre(threat: ThreatModel) -> float:
    """Middle of the threat's input box (0.5 for pixels): generators see inputs centred on it."""
    low, high = threat.box
    return 0.5 if (low, high) == (0.0, 1.0) else (low + high) / 2


def max_normalise(t: torch.Tensor) -> torch.Tensor:
    """``t / max|t|`` per example (zero stays zero)."""
    scale = t.flatten(1).abs().amax(dim=1).clamp_min(1e-12)
    return t / scale.reshape((-1,) + (1,) * (t.dim() - 1))


def _conv_stack(in_ch: int, hidden: int, depth: int, out_ch: int, rank: int = 2) -> nn.ModuleList:
    if depth < 2:
        raise ValueError(f"depth must be >= 2, got {depth}")
    if hidden < 1:
        raise ValueError(f"hidden must be >= 1, got {hidden}")
    if rank not in (1, 2):
        raise ValueError(f"rank must be 1 (signals) or 2 (images), got {rank}")
    conv = nn.Conv2d if rank == 2 else nn.Conv1d
    layers: list[nn.Module] = [conv(in_ch, hidden, 3, padding=1)]
    layers += [conv(hidden, hidden, 3, padding=1) for _ in range(depth - 2)]
    last = conv(hidden, out_ch, 3, padding=1)
    with torch.no_grad():  # small output at init: the skip term (attacker) or small noise (MNG) dominates
        last.weight.mul_(0.1)
        if last.bias is not None:
            nn.init.zeros_(last.bias)
    return nn.ModuleList([*layers, last])


@dataclasses.dataclass(frozen=True)
class AttackerSpec:
    """Architecture of a :class:`LearnedAttacker` (saved as JSON next to its weights)."""

    in_channels: int = 1
    hidden: int = 32
    depth: int = 3
    rank: int = 2  # spatial rank of the inputs: 2 = images (B, C, H, W), 1 = signals (B, C, T)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _inv_softplus(v: float) -> float:
    return math.log(math.expm1(v))


@GENERATORS.register("attacker", help="threat-conditioned learned attacker (L2L, FiLM-conditioned)")
class LearnedAttacker(nn.Module):
    """One learned attack step ``δ_{i+1} = Π(δ_i + step · shape(g_φ(x, δ_i, ∇ₓL), threat))``."""

    kind = "attacker"

    def __init__(self, spec: AttackerSpec | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.spec = spec if spec is not None else AttackerSpec(**kwargs)
        c, h = self.spec.in_channels, self.spec.hidden
        self.convs = _conv_stack(3 * c, h, self.spec.depth, 2 * c, self.spec.rank)
        n_film = self.spec.depth - 1
        self.film = nn.Sequential(nn.Linear(THREAT_FEATURES, 32), nn.ReLU(), nn.Linear(32, 2 * h * n_film))
        film_out = self.film[2]
        assert isinstance(film_out, nn.Linear)
        with torch.no_grad():  # FiLM starts near the identity
            film_out.weight.mul_(0.05)
            nn.init.zeros_(film_out.bias)
        # Per-norm learnable scalars (softplus-positive): gradient skip, step multiplier; L1 focus.
        # The L1 step starts 4x over budget: the exact projection then fills the budget greedily
        # (coordinates clipped by the box would otherwise waste it).
        self.skip_raw = nn.Parameter(torch.tensor([_inv_softplus(2.0), _inv_softplus(1.0), _inv_softplus(2.0)]))
        self.step_raw = nn.Parameter(torch.tensor([_inv_softplus(1.0), _inv_softplus(1.0), _inv_softplus(4.0)]))
        self.focus_raw = nn.Parameter(torch.tensor(_inv_softplus(10.0)))

    def forward(self, x: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        """The next perturbation, projected onto ``threat``'s set around ``x`` (differentiable in φ)."""
        c, rank = self.spec.in_channels, self.spec.rank
        if x.dim() != 2 + rank or x.shape[1] != c:
            want = "(B, {c}, H, W)" if rank == 2 else "(B, {c}, T)"
            raise ValueError(f"learned attacker expects {want.format(c=c)} inputs, got {tuple(x.shape)}")
        dim = x[0].numel()
        k = NORMS.index(threat.lp_like)
        gamma_beta = self.film(threat_features(threat, dim, x))[0]
        h = torch.cat([x - box_centre(threat), max_normalise(delta), max_normalise(grad)], dim=1)
        n_hidden = len(self.convs) - 1
        gb = gamma_beta.reshape(n_hidden, 2, -1)
        per_channel = (1, -1) + (1,) * rank
        for i, conv in enumerate(self.convs[:-1]):
            h = conv(h) * (1 + gb[i, 0]).reshape(per_channel) + gb[i, 1].reshape(per_channel)
            h = F.relu(h)
        out = self.convs[-1](h)
        u, a = out[:, :c], out[:, c:]
        skip = F.softplus(self.skip_raw[k])
        step = F.softplus(self.step_raw[k]) * shape_step(
            u, a, grad, x + delta, threat, skip, F.softplus(self.focus_raw)
        )
        return project(delta + step, x, threat)


def shape_step(
    u: torch.Tensor,
    a: torch.Tensor,
    grad: torch.Tensor,
    x_cur: torch.Tensor,
    threat: ThreatModel,
    skip: torch.Tensor,
    focus: torch.Tensor,
) -> torch.Tensor:
    """Map raw outputs ``u`` (direction) and ``a`` (L1 allocation) to a step of norm <= eps."""
    eps = threat.eps
    norm = threat.lp_like
    if norm == "linf":
        return eps * torch.tanh(u + skip * grad.sign())
    if norm == "l2":
        g = grad.flatten(1)
        rms = (g.norm(dim=1, keepdim=True) / math.sqrt(g.shape[1])).clamp_min(1e-12)
        v = u.flatten(1) + skip * g / rms
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (eps * v).reshape(u.shape)
    direction = torch.tanh(u + skip * grad.sign())
    # Coordinates on the box whose step points outwards would waste budget: allocate them nothing.
    dsign = direction.detach().sign()
    low, high = threat.box
    stuck = ((x_cur >= high - 1e-6) & (dsign > 0)) | ((x_cur <= low + 1e-6) & (dsign < 0))
    logits = (a + focus * max_normalise(grad).abs()).flatten(1).masked_fill(stuck.flatten(1), -1e4)
    weights = torch.softmax(logits, dim=1).reshape(u.shape)
    return eps * direction * weights


@dataclasses.dataclass(frozen=True)
class NoiseSpec:
    """Architecture of a :class:`NoiseGenerator`; ``source`` is ``input`` ([x, z]) or ``noise`` (z only)."""

    in_channels: int = 1
    hidden: int = 32
    depth: int = 3
    source: str = "input"
    rank: int = 2  # spatial rank of the inputs: 2 = images (B, C, H, W), 1 = signals (B, C, T)

    def __post_init__(self) -> None:
        if self.source not in ("input", "noise"):
            raise ValueError(f"generator source must be 'input' or 'noise', got {self.source!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@GENERATORS.register("noise", help="MNG-AC meta-noise generator (input-dependent or noise-only)")
class NoiseGenerator(nn.Module):
    """MNG's generator: ``δ = Π(shape(g_φ([x, z]) or g_φ(z)))`` with ``z ~ N(0, I)`` from an explicit generator."""

    kind = "noise"

    def __init__(self, spec: NoiseSpec | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.spec = spec if spec is not None else NoiseSpec(**kwargs)
        c = self.spec.in_channels
        in_ch = 2 * c if self.spec.source == "input" else c
        self.convs = _conv_stack(in_ch, self.spec.hidden, self.spec.depth, c, self.spec.rank)
        last = self.convs[-1]
        assert isinstance(last, nn.Conv1d | nn.Conv2d)
        with torch.no_grad():  # undo the attacker's small-output init: MNG's noise should fill the ball
            last.weight.mul_(10.0)

    def sample_noise(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``z ~ N(0, I)`` of ``x``'s shape, drawn on the generator's device."""
        z = torch.randn(x.shape, generator=generator, device=generator.device)
        return z.to(device=x.device, dtype=x.dtype)

    def forward(self, x: torch.Tensor, noise: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        """A perturbation in ``threat``'s set around ``x`` (differentiable in φ)."""
        c, rank = self.spec.in_channels, self.spec.rank
        if x.dim() != 2 + rank or x.shape[1] != c or noise.shape != x.shape:
            want = "(B, {c}, H, W)" if rank == 2 else "(B, {c}, T)"
            raise ValueError(
                f"noise generator expects x and noise of shape {want.format(c=c)}, got "
                f"{tuple(x.shape)} and {tuple(noise.shape)}"
            )
        h = torch.cat([x - box_centre(threat), noise], dim=1) if self.spec.source == "input" else noise
        for conv in self.convs[:-1]:
            h = F.relu(conv(h))
        out = self.convs[-1](h)
        if threat.lp_like == "linf":
            raw = threat.eps * torch.tanh(out)
        else:
            raw = per_pixel_budget(threat, x[0].numel()) * out
        return project(raw, x, threat)


def build_generator(kind: str, spec: dict[str, Any]) -> nn.Module:
    """Rebuild a generator from its kind and JSON spec."""
    factory = GENERATORS.get(kind)
    spec_class = AttackerSpec if factory is LearnedAttacker else NoiseSpec
    names = {f.name for f in dataclasses.fields(spec_class)}
    unknown = sorted(set(spec) - names)
    if unknown:
        raise ValueError(f"{kind} generator spec has unknown field(s) {', '.join(unknown)}")
    return factory(spec_class(**spec))
