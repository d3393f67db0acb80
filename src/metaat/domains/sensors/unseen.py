"""Unseen sensor perturbations (never trained on), each a small finite set searched exhaustively.

Each family below is a finite list of transformations of a signal ``x`` ``(B, C, T)``; the model is
evaluated on every one of them, so the worst case over the set is exact (no attack can do better
inside it). A function returns :class:`UnseenResult`: per-example correctness under the worst case
(``correct[i]`` is False as soon as one transformation fools the model on example ``i``, or the clean
input already does) and the number of model queries (forward passes) spent on each example —
examples already fooled are not queried again.

* ``dropout(span, stride)`` — one channel reads 0 (its training mean: the data are standardised)
  for ``span`` consecutive samples: every channel × every start ``0, stride, 2·stride, …`` (and
  ``T - span``);
* ``stuck(span, stride)`` — one channel is stuck at its value at the start of the span for ``span``
  samples (a frozen sensor), same grid;
* ``misalign(max_shift, groups)`` — the second channel group (the gyroscope of ``ax ay az | wx wy
  wz``) is shifted in time by ``s`` samples relative to the first, every ``s`` in ``±1 … ±max_shift``
  (edge samples repeated);
* ``time_warp(max_warp, steps)`` — a monotone piecewise-linear warp of time with one knot at ¼, ½ or
  ¾ of the window moved by ``d`` · (distance to the nearer end), for ``steps`` values of ``d`` evenly
  spaced in ``[-max_warp, max_warp]`` (0 excluded); local speed changes by at most
  ``1 / (1 - max_warp)``; values linearly interpolated.

Transformed signals are clipped to the data's box (they stay inside it anyway).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from metaat.attacks.base import attack_mode, predictions
from metaat.domains.sensors.data import BOX

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class UnseenResult:
    """``correct`` (B,) bool: still correct under the worst case; ``queries`` (B,) int64: forward passes."""

    correct: torch.Tensor
    queries: torch.Tensor

    @property
    def accuracy(self) -> float:
        return float(self.correct.float().mean()) if self.correct.numel() else float("nan")


def worst_case(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, transforms: list[Transform], batch_size: int = 256
) -> UnseenResult:
    """Evaluate ``model`` on the clean ``x`` then on every transform, only on examples still correct."""
    queries = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    with attack_mode(model), torch.no_grad():
        correct = _predict(model, x, batch_size) == y
        queries += 1
        for transform in transforms:
            idx = correct.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            pred = _predict(model, transform(x[idx]), batch_size)
            queries[idx] += 1
            correct[idx] = pred == y[idx]
    return UnseenResult(correct, queries)


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([predictions(model(x[i : i + batch_size])) for i in range(0, x.shape[0], batch_size)])


def span_starts(length: int, span: int, stride: int) -> list[int]:
    """Starts ``0, stride, …`` of a span inside ``length`` samples, plus the last possible one."""
    if not 1 <= span <= length or stride < 1:
        raise ValueError(f"need 1 <= span <= T and stride >= 1; got span={span}, T={length}, stride={stride}")
    starts = list(range(0, length - span + 1, stride))
    return starts if starts[-1] == length - span else [*starts, length - span]


def dropout_transforms(shape: tuple[int, ...], span: int, stride: int) -> Iterator[Transform]:
    _, c, t = shape
    for ch in range(c):
        for s in span_starts(t, span, stride):

            def drop(x: torch.Tensor, ch: int = ch, s: int = s) -> torch.Tensor:
                out = x.clone()
                out[:, ch, s : s + span] = 0.0
                return out

            yield drop


def stuck_transforms(shape: tuple[int, ...], span: int, stride: int) -> Iterator[Transform]:
    _, c, t = shape
    for ch in range(c):
        for s in span_starts(t, span, stride):

            def freeze(x: torch.Tensor, ch: int = ch, s: int = s) -> torch.Tensor:
                out = x.clone()
                out[:, ch, s : s + span] = x[:, ch, s : s + 1]
                return out

            yield freeze


def shift_time(x: torch.Tensor, shift: int) -> torch.Tensor:
    """``out[..., t] = x[..., clamp(t - shift, 0, T - 1)]`` (a delay for ``shift > 0``)."""
    t = x.shape[-1]
    index = (torch.arange(t, device=x.device) - shift).clamp(0, t - 1)
    return x[..., index]


def default_groups(channels: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """First half | second half of the channels (accelerometer | gyroscope for ``ax ay az wx wy wz``)."""
    if channels < 2:
        raise ValueError(f"misalignment needs at least 2 channels, got {channels}")
    half = channels // 2
    return tuple(range(half)), tuple(range(half, channels))


def misalign_transforms(
    shape: tuple[int, ...], max_shift: int, groups: tuple[tuple[int, ...], tuple[int, ...]] | None = None
) -> Iterator[Transform]:
    _, c, _ = shape
    moved = list((groups or default_groups(c))[1])
    for shift in [s for m in range(1, max_shift + 1) for s in (m, -m)]:

        def misalign(x: torch.Tensor, shift: int = shift) -> torch.Tensor:
            out = x.clone()
            out[:, moved] = shift_time(x[:, moved], shift)
            return out

        yield misalign


def warp_signal(x: torch.Tensor, knot: float, displacement: float) -> torch.Tensor:
    """Resample ``x`` at ``φ(t)``: piecewise linear, ``φ(0) = 0``, ``φ(T-1) = T-1``, ``φ(k) = k + d·min(k, T-1-k)``."""
    t = x.shape[-1]
    end = float(t - 1)
    k = knot * end
    target = k + displacement * min(k, end - k)
    grid = torch.arange(t, dtype=torch.float64, device=x.device)
    phi = torch.where(grid <= k, grid * (target / k), target + (grid - k) * ((end - target) / (end - k)))
    lo = phi.floor().long().clamp(0, t - 1)
    hi = (lo + 1).clamp(max=t - 1)
    w = (phi - lo.to(phi.dtype)).to(x.dtype)
    return x[..., lo] * (1 - w) + x[..., hi] * w


def warp_transforms(max_warp: float, steps: int) -> Iterator[Transform]:
    if not 0 < max_warp < 1 or steps < 1:
        raise ValueError(f"need 0 < max_warp < 1 and steps >= 1; got {max_warp}, {steps}")
    values = torch.linspace(-max_warp, max_warp, 2 * steps + 1).tolist()
    for knot in (0.25, 0.5, 0.75):
        for d in values:
            if d != 0.0:

                def warp(x: torch.Tensor, knot: float = knot, d: float = d) -> torch.Tensor:
                    return warp_signal(x, knot, d)

                yield warp


def _clipped(f: Transform, box: tuple[float, float]) -> Transform:
    def apply(x: torch.Tensor) -> torch.Tensor:
        return f(x).clamp(*box)

    return apply


def _boxed(transforms: Iterator[Transform], box: tuple[float, float]) -> list[Transform]:
    return [_clipped(f, box) for f in transforms]


def dropout(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, span: int = 25, stride: int = 5, box: tuple[float, float] = BOX
) -> UnseenResult:
    """Worst case over one channel reading 0 for ``span`` samples (every channel, starts every ``stride``)."""
    return worst_case(model, x, y, _boxed(dropout_transforms(tuple(x.shape), span, stride), box))


def stuck(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, span: int = 25, stride: int = 5, box: tuple[float, float] = BOX
) -> UnseenResult:
    """Worst case over one channel frozen for ``span`` samples (every channel, starts every ``stride``)."""
    return worst_case(model, x, y, _boxed(stuck_transforms(tuple(x.shape), span, stride), box))


def misalign(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    max_shift: int = 5,
    groups: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
    box: tuple[float, float] = BOX,
) -> UnseenResult:
    """Worst case over the second channel group shifted by ``±1 … ±max_shift`` samples."""
    return worst_case(model, x, y, _boxed(misalign_transforms(tuple(x.shape), max_shift, groups), box))


def time_warp(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    max_warp: float = 0.2,
    steps: int = 4,
    box: tuple[float, float] = BOX,
) -> UnseenResult:
    """Worst case over ``3 · 2·steps`` one-knot time warps of strength up to ``max_warp``."""
    return worst_case(model, x, y, _boxed(warp_transforms(max_warp, steps), box))


SUITE: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], UnseenResult]] = {
    "dropout:25": dropout,
    "stuck:25": stuck,
    "misalign:5": misalign,
    "warp:0.2": time_warp,
}
"""The default unseen suite (spans of 0.5 s and shifts of 0.1 s at 50 Hz); each entry ``(model, x, y)``."""


def applicable(name: str, shape: tuple[int, ...]) -> bool:
    """Whether suite entry ``name`` applies to signals of ``shape`` ``(B, C, T)``: misalignment needs
    two channel groups (C >= 2), the spans need T >= 25."""
    _, c, t = shape
    if name.startswith("misalign"):
        return c >= 2
    if name.startswith(("dropout", "stuck")):
        return t >= 25
    return t >= 2


def evaluate_suite(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, UnseenResult]:
    """Every entry of :data:`SUITE` that applies to ``x``'s shape, on ``(x, y)``."""
    return {name: fn(model, x, y) for name, fn in SUITE.items() if applicable(name, tuple(x.shape))}
