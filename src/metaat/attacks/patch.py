"""Universal attacks: one perturbation, or one patch, shared by every input.

* ``universal`` — a universal adversarial perturbation (Moosavi-Dezfooli, Fawzi, Fawzi, Frossard
  2017, "Universal adversarial perturbations"), here learned by projected steepest ascent on the
  summed loss over a fitting set. Threat: the Lp ball of ``threat``; ``x_adv = clip(x + δ, 0, 1)``
  stays inside it (clipping only shrinks each coordinate of δ).
* ``patch`` — a universal adversarial patch (Brown, Mané, Roy, Abadi, Gilmer 2017, "Adversarial
  Patch"): a ``patch_size × patch_size`` square of free pixel values pasted at a location drawn per
  image from the generator. Threat: the patch area — ``patch`` takes no ``threat`` and refuses one.

Both are learned with ``steps`` signed-gradient steps (a few suffice). Called as an attack,
``attack(model, x, y)`` learns on ``(x, y)`` itself and applies the result to the same points (a
transductive universal attack — still one δ for all points, much weaker than a per-point attack).
For a held-out protocol use :func:`learn_universal` / :func:`learn_patch` on other data and
:func:`apply_universal` / :func:`apply_patch` on the points, as :mod:`metaat.eval.unseen` does.

Arguments: ``steps`` (20), ``step_size`` (default 2.5·eps/steps for ``universal``, 0.05 for
``patch``), ``loss`` (ce / margin / dlr), ``patch_size`` (pixels, patch only; 5),
``batch_size`` (chunk).
Shapes: ``x`` (B, C, H, W) in [0, 1], ``y`` (B,) int64 → ``x_adv`` (B, C, H, W).

>>> import torch, metaat.attacks as A
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
>>> x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
>>> x_adv = A.create("universal", threat="linf:0.1", steps=3)(model, x, y)
>>> bool((x_adv - x).abs().max() <= 0.1 + 1e-6)
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from metaat.attacks.base import ATTACKS, Attack, AttackConfig, chunks
from metaat.losses import get_loss
from metaat.threats import ThreatModel, default_step_size, project, threat_ascent


@dataclasses.dataclass(frozen=True)
class UniversalConfig(AttackConfig):
    steps: int = 20
    step_size: float | None = None
    loss: str = "ce"
    patch_size: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        get_loss(self.loss)
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.step_size is not None and self.step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")


def project_universal(delta: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Project δ onto the threat's set ∩ [-w, w]^d, ``w`` the width of its input box (no input to
    define a box around, so the widest one: [-1, 1]^d for pixels).

    ``threats.project`` projects onto set ∩ [low - c, high - c] around a point ``c``; at the box's
    centre that is [-w/2, w/2], and because every Lp ball and this box scale together, halving δ and
    eps then doubling is exact.
    """
    low, high = threat.box
    half = dataclasses.replace(threat, eps=threat.eps / 2)
    centre = 0.5 if threat.box == (0.0, 1.0) else low + (high - low) / 2
    return 2 * project(delta / 2, torch.full_like(delta, centre), half)


def apply_universal(x: torch.Tensor, delta: torch.Tensor, box: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """``clip(x + δ, box)`` with one δ (1, C, H, W) broadcast over the batch: inside the threat set
    around each ``x`` when δ is inside the universal set of :func:`project_universal`."""
    return (x + delta.to(device=x.device, dtype=x.dtype)).clamp(*box)


Apply = Callable[[torch.Tensor, torch.Tensor, slice], torch.Tensor]


def _summed_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, param: torch.Tensor, apply: Apply, loss: str, chunk: int
) -> torch.Tensor:
    """Gradient of the summed loss over all of ``x`` w.r.t. the shared ``param``, chunk by chunk."""
    loss_fn = get_loss(loss)
    total = torch.zeros_like(param)
    for sl in chunks(x.shape[0], chunk):
        p = param.detach().requires_grad_(True)
        value = loss_fn(model(apply(x[sl], p, sl)), y[sl]).sum()
        (grad,) = torch.autograd.grad(value, p)
        total += grad
    return total


def learn_universal(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    steps: int = 20,
    step_size: float | None = None,
    loss: str = "ce",
    chunk: int = 128,
) -> torch.Tensor:
    """One perturbation δ (1, C, H, W) in the threat's ball that raises the loss on all of ``x``."""
    step = step_size if step_size is not None else default_step_size(threat, steps)
    delta = torch.zeros((1, *x.shape[1:]), dtype=x.dtype, device=x.device)
    for _ in range(steps):
        grad = _summed_gradient(model, x, y, delta, lambda xc, d, _sl: apply_universal(xc, d), loss, chunk)
        delta = project_universal(delta + step * threat_ascent(grad, threat), threat)
    return delta.detach()


def patch_locations(n: int, image_size: tuple[int, int], patch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Top-left corners ``(n, 2)`` drawn uniformly so that the patch lies inside the image."""
    h, w = image_size
    if patch_size > min(h, w):
        raise ValueError(f"patch_size {patch_size} does not fit in a {h}x{w} image")
    rows = torch.randint(0, h - patch_size + 1, (n,), generator=generator, device=generator.device)
    cols = torch.randint(0, w - patch_size + 1, (n,), generator=generator, device=generator.device)
    return torch.stack([rows, cols], dim=1).cpu()


def apply_patch(x: torch.Tensor, patch: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
    """Paste ``patch`` (1, C, s, s) into each image at its ``locations`` row (top, left); differentiable."""
    _, _, h, w = x.shape
    s = patch.shape[-1]
    canvases, masks = [], []
    one = torch.ones_like(patch)
    for top, left in locations.tolist():
        pad = (left, w - s - left, top, h - s - top)
        canvases.append(F.pad(patch, pad))
        masks.append(F.pad(one, pad))
    canvas, mask = torch.cat(canvases), torch.cat(masks)
    return x * (1 - mask) + canvas * mask


def _paste_at(where: torch.Tensor) -> Apply:
    """``apply(x_chunk, patch, chunk_slice)`` pasting at the chunk's rows of ``where``."""
    return lambda xc, p, sl: apply_patch(xc, p, where[sl])


def learn_patch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    patch_size: int,
    generator: torch.Generator,
    steps: int = 20,
    step_size: float = 0.05,
    loss: str = "ce",
    chunk: int = 128,
) -> torch.Tensor:
    """One patch (1, C, s, s) in [0, 1] that raises the loss wherever it lands (locations re-drawn each step)."""
    noise = torch.rand((1, x.shape[1], patch_size, patch_size), generator=generator, device=generator.device)
    patch = noise.to(device=x.device, dtype=x.dtype)
    for _ in range(steps):
        where = patch_locations(x.shape[0], (x.shape[2], x.shape[3]), patch_size, generator)
        grad = _summed_gradient(model, x, y, patch, _paste_at(where), loss, chunk)
        patch = (patch + step_size * grad.sign()).clamp(0, 1)
    return patch.detach()


@ATTACKS.register("universal")
class Universal(Attack):
    """A universal adversarial perturbation in the Lp threat, learned on the batch (transductive)."""

    name = "universal"
    config_class = UniversalConfig
    config: UniversalConfig

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cfg = self.config
        delta = learn_universal(
            model, x, y, self.threat, steps=cfg.steps, step_size=cfg.step_size, loss=cfg.loss, chunk=self.chunk_size(x)
        )
        return apply_universal(x, delta)


@ATTACKS.register("patch")
class Patch(Attack):
    """A universal adversarial patch at random locations, learned on the batch; takes no threat."""

    name = "patch"
    config_class = UniversalConfig
    bounded = False
    config: UniversalConfig

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cfg = self.config
        patch = learn_patch(
            model,
            x,
            y,
            patch_size=cfg.patch_size,
            generator=generator,
            steps=cfg.steps,
            step_size=cfg.step_size if cfg.step_size is not None else 0.05,
            loss=cfg.loss,
            chunk=self.chunk_size(x),
        )
        where = patch_locations(x.shape[0], (x.shape[2], x.shape[3]), patch_size=cfg.patch_size, generator=generator)
        with torch.no_grad():
            return apply_patch(x, patch, where).clamp(0, 1)
