"""Choosing which threat a batch trains against: uniformly, or adaptively (E-AT-style).

E-AT (Croce & Hein 2022, "Adversarial Robustness against Multiple and Single lp-Threat Models via
Quick Fine-Tuning of Robust Classifiers") samples the norm where the model is currently weakest
more often. Here each threat keeps an exponential moving average of the robust accuracy measured
on its own training batches, and threat ``i`` is drawn with probability proportional to
``(1 - acc_i) + floor`` — threats never measured count as fully broken, and ``floor`` keeps every
threat in play.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sample_index(weights: Sequence[float] | torch.Tensor, generator: torch.Generator) -> int:
    """One index drawn with probability proportional to ``weights`` (a list or a tensor), from the
    explicit ``generator`` (in float64 on the generator's device).

    >>> sample_index([0.0, 1.0, 0.0], torch.Generator().manual_seed(0))
    1
    """
    probs = torch.as_tensor(weights, dtype=torch.float64).to(generator.device)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def uniform(n: int) -> list[float]:
    return [1.0 / n] * n


def adaptive_probabilities(accuracy: list[float | None], floor: float = 0.1) -> list[float]:
    """``p_i ∝ (1 - acc_i) + floor``; unmeasured threats (``None``) count as accuracy 0."""
    if floor <= 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    weights = [(1.0 - (a if a is not None else 0.0)) + floor for a in accuracy]
    total = sum(weights)
    return [w / total for w in weights]


def reweight(probs: list[float], weights: list[float]) -> list[float]:
    """``p_i · w_i``, renormalised: a fixed prior on top of the uniform or adaptive distribution."""
    if len(probs) != len(weights):
        raise ValueError(f"{len(weights)} weights for {len(probs)} threats")
    if any(w <= 0 for w in weights):
        raise ValueError(f"weights must be > 0, got {weights}")
    scaled = [p * w for p, w in zip(probs, weights, strict=True)]
    total = sum(scaled)
    return [s / total for s in scaled]


def ema(old: float | None, new: float, decay: float) -> float:
    """Exponential moving average; the first value is taken as is."""
    return new if old is None else decay * old + (1 - decay) * new
