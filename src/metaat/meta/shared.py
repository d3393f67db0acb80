"""The channel-shared learned attacker: one set of weights for inputs of any channel count and length.

Tasks across the datasets of one domain differ in channels (a 6-axis IMU, 12 cepstral coefficients, a
single accelerometer trace) and length. :class:`ChannelSharedAttacker` is the threat-conditioned
attacker of :class:`~metaat.meta.generators.LearnedAttacker` (L2L, Jiang et al. 2021; FiLM, Perez et
al. 2018) applied to every channel with shared convolution weights: the per-channel input
``[x_c, δ_c/max|δ|, g_c/max|g|]`` (the maxima taken over the whole example, all channels) goes through
the FiLM-modulated conv stack as a batch of ``B·C`` one-channel rows, and the per-channel outputs
``(u_c, a_c)`` are reassembled to ``(B, C, ...)`` before the step is shaped to the threat's set and
projected on the whole example (an L2 step is normalised over all channels; a ``spike`` column spans
every channel). Convolutions are length-agnostic, so any ``T`` (or ``H × W``) works.

Chosen over zero-padding to a maximum channel count because it needs no maximum, treats a channel
never seen in training like any other, and costs nothing for one-channel data.

:meth:`ChannelSharedAttacker.specialise` turns it into a plain :class:`LearnedAttacker` for a given
channel count, with block-diagonal weights (``hidden = C · width``) that compute exactly the same
perturbation; that plain attacker is what warm-starts ``l2l`` / ``metaat`` training and what the
``learned`` attack runs, so every consumer of a ``LearnedAttacker`` takes a cross-task artifact.

Shapes: ``x``, ``delta``, ``grad`` are ``(B, C, T)`` (rank 1) or ``(B, C, H, W)`` (rank 2).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metaat.meta.generators import (
    GENERATORS,
    THREAT_FEATURES,
    AttackerSpec,
    LearnedAttacker,
    _conv_stack,
    _inv_softplus,
    box_centre,
    max_normalise,
    shape_step,
    threat_features,
)
from metaat.threats import NORMS, ThreatModel, project

SHARED_KIND = "attacker-shared"


@dataclasses.dataclass(frozen=True)
class SharedAttackerSpec:
    """Architecture of a :class:`ChannelSharedAttacker`: per-channel ``width``, ``depth`` convs, input rank."""

    width: int = 16
    depth: int = 3
    rank: int = 1  # spatial rank of the inputs: 2 = images (B, C, H, W), 1 = signals (B, C, T)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@GENERATORS.register(SHARED_KIND, help="threat-conditioned learned attacker, weights shared across channels")
class ChannelSharedAttacker(nn.Module):
    """One learned attack step for inputs of any channel count (weights shared across channels)."""

    kind = SHARED_KIND

    def __init__(self, spec: SharedAttackerSpec | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.spec = spec if spec is not None else SharedAttackerSpec(**kwargs)
        w = self.spec.width
        self.convs = _conv_stack(3, w, self.spec.depth, 2, self.spec.rank)
        n_film = self.spec.depth - 1
        self.film = nn.Sequential(nn.Linear(THREAT_FEATURES, 32), nn.ReLU(), nn.Linear(32, 2 * w * n_film))
        film_out = self.film[2]
        assert isinstance(film_out, nn.Linear)
        with torch.no_grad():  # FiLM starts near the identity
            film_out.weight.mul_(0.05)
            nn.init.zeros_(film_out.bias)
        # Same per-norm scalars and initial values as LearnedAttacker (skip, step multiplier, L1 focus).
        self.skip_raw = nn.Parameter(torch.tensor([_inv_softplus(2.0), _inv_softplus(1.0), _inv_softplus(2.0)]))
        self.step_raw = nn.Parameter(torch.tensor([_inv_softplus(1.0), _inv_softplus(1.0), _inv_softplus(4.0)]))
        self.focus_raw = nn.Parameter(torch.tensor(_inv_softplus(10.0)))

    def forward(self, x: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        """The next perturbation, projected onto ``threat``'s set around ``x`` (differentiable in φ)."""
        rank = self.spec.rank
        if x.dim() != 2 + rank:
            want = "(B, C, H, W)" if rank == 2 else "(B, C, T)"
            raise ValueError(f"channel-shared attacker expects {want} inputs, got {tuple(x.shape)}")
        b, c, spatial = x.shape[0], x.shape[1], tuple(x.shape[2:])
        w = self.spec.width
        k = NORMS.index(threat.lp_like)
        gb = self.film(threat_features(threat, x[0].numel(), x))[0].reshape(len(self.convs) - 1, 2, w)
        # (B, C, 3, *S) -> (B·C, 3, *S): every channel is one row of the shared conv stack.
        h = torch.stack([x - box_centre(threat), max_normalise(delta), max_normalise(grad)], dim=2)
        h = h.reshape(b * c, 3, *spatial)
        per_channel = (1, -1) + (1,) * rank
        for i, conv in enumerate(self.convs[:-1]):
            h = F.relu(conv(h) * (1 + gb[i, 0]).reshape(per_channel) + gb[i, 1].reshape(per_channel))
        out = self.convs[-1](h).reshape(b, c, 2, *spatial)
        u, a = out[:, :, 0], out[:, :, 1]
        skip = F.softplus(self.skip_raw[k])
        step = F.softplus(self.step_raw[k]) * shape_step(
            u, a, grad, x + delta, threat, skip, F.softplus(self.focus_raw)
        )
        return project(delta + step, x, threat)

    @torch.no_grad()
    def specialise(self, in_channels: int) -> LearnedAttacker:
        """A plain :class:`LearnedAttacker` for ``in_channels`` channels computing the same perturbation
        (block-diagonal convolutions of width ``in_channels · width``, FiLM repeated per channel)."""
        c, w, depth, rank = in_channels, self.spec.width, self.spec.depth, self.spec.rank
        if c < 1:
            raise ValueError(f"in_channels must be >= 1, got {c}")
        plain = LearnedAttacker(AttackerSpec(in_channels=c, hidden=c * w, depth=depth, rank=rank))
        convs = list(self.convs)
        for i, (src, dst) in enumerate(zip(convs, plain.convs, strict=True)):
            assert isinstance(src, nn.Conv1d | nn.Conv2d) and isinstance(dst, nn.Conv1d | nn.Conv2d)
            assert src.bias is not None and dst.bias is not None
            dst.weight.zero_()
            for ch in range(c):
                rows = slice(ch * w, (ch + 1) * w)
                if i == 0:  # inputs laid out [x (C), δ (C), g (C)]; shared inputs [x_c, δ_c, g_c]
                    for m in range(3):
                        dst.weight[rows, m * c + ch] = src.weight[:, m]
                    dst.bias[rows] = src.bias
                elif i < len(convs) - 1:
                    dst.weight[rows, rows] = src.weight
                    dst.bias[rows] = src.bias
                else:  # outputs laid out [u (C), a (C)]
                    for m in range(2):
                        dst.weight[m * c + ch, rows] = src.weight[m]
                        dst.bias[m * c + ch] = src.bias[m]
        plain.film[0].load_state_dict(self.film[0].state_dict())
        src_out, dst_out = self.film[2], plain.film[2]
        assert isinstance(src_out, nn.Linear) and isinstance(dst_out, nn.Linear)
        n = depth - 1
        dst_out.weight.copy_(src_out.weight.reshape(n, 2, 1, w, -1).expand(n, 2, c, w, -1).reshape(-1, 32))
        dst_out.bias.copy_(src_out.bias.reshape(n, 2, 1, w).expand(n, 2, c, w).reshape(-1))
        for name in ("skip_raw", "step_raw", "focus_raw"):
            getattr(plain, name).copy_(getattr(self, name))
        return plain.train(self.training)


def build_shared(spec: dict[str, Any]) -> ChannelSharedAttacker:
    """Rebuild from a JSON spec; unknown fields are a one-line error."""
    names = {f.name for f in dataclasses.fields(SharedAttackerSpec)}
    unknown = sorted(set(spec) - names)
    if unknown:
        raise ValueError(f"{SHARED_KIND} generator spec has unknown field(s) {', '.join(unknown)}")
    return ChannelSharedAttacker(SharedAttackerSpec(**spec))
