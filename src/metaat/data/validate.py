"""``validate_batch``: the input checker shared by attacks, defenses and evaluation."""

from __future__ import annotations

import torch

TOLERANCE = 1e-6


def validate_batch(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    box: tuple[float, float] = (0.0, 1.0),
    ndim: int | None = None,
) -> None:
    """Check a batch against metaat's input contract; raise ``ValueError`` with a one-line reason.

    ``x`` must be a floating-point tensor — 4-D NCHW images or 3-D ``(N, C, T)`` signals (exactly
    ``ndim`` dimensions when given) — finite, with values in ``box`` (pixels: [0, 1]; tolerance
    1e-6) and ``in_channels`` channels when given; or 2-D int64 token ids ``(N, L)``, all >= 0.
    ``y``, when given, must be a 1-D int64 tensor with one non-negative label per input, each below
    ``num_classes`` when that is given.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor; got {type(x).__name__}")
    if x.dtype == torch.int64 and x.dim() == 2 and ndim in (None, 2):  # token ids (N, L)
        if x.numel() and int(x.min()) < 0:
            raise ValueError(f"token ids must be >= 0; got min {int(x.min())}")
        _check_labels(x, y, num_classes)
        return
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor; got dtype {x.dtype}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"x must be {ndim}-D; got shape {tuple(x.shape)}")
    if x.dim() not in (3, 4):
        raise ValueError(f"x must be 4-D (N, C, H, W) images or 3-D (N, C, T) signals; got shape {tuple(x.shape)}")
    if in_channels is not None and x.shape[1] != in_channels:
        raise ValueError(f"expected {in_channels} channel(s), got {x.shape[1]}")
    xd = x.detach()
    n_nan = int(torch.isnan(xd).sum())
    if n_nan:
        raise ValueError(f"x has {n_nan} NaN values")
    n_inf = int(torch.isinf(xd).sum())
    if n_inf:
        raise ValueError(f"x has {n_inf} infinite values")
    if xd.numel():
        lo, hi = float(xd.min()), float(xd.max())
        low, high = box
        if lo < low - TOLERANCE or hi > high + TOLERANCE:
            what = "pixels" if (low, high) == (0.0, 1.0) else "values"
            raise ValueError(f"{what} must lie in [{low:g}, {high:g}]; got min {lo:.6g} max {hi:.6g}")
    _check_labels(x, y, num_classes)


def _check_labels(x: torch.Tensor, y: torch.Tensor | None, num_classes: int | None) -> None:
    if y is None:
        return
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"y must be a torch.Tensor; got {type(y).__name__}")
    if y.dtype != torch.int64:
        raise ValueError(
            f"y must be an int64 (integer) tensor of class labels; got dtype {y.dtype} (convert with y.long())"
        )
    if y.dim() != 1:
        raise ValueError(f"y must be 1-D; got shape {tuple(y.shape)}")
    if len(y) != len(x):
        raise ValueError(f"y has {len(y)} labels but x has {len(x)} images")
    if y.numel() and int(y.min()) < 0:
        bound = num_classes if num_classes is not None else "classes"
        raise ValueError(f"labels must lie in [0, {bound}); got min {int(y.min())}")
    if num_classes is not None and y.numel():
        hi_label = int(y.max())
        if hi_label >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}); got max {hi_label}")


__all__ = ["validate_batch"]
