"""The types every gradient-masking check returns, and the model checks (logits, determinism,
eval mode, gradients); the attack checks and :func:`~metaat.eval.checks.run_checks` are in
:mod:`metaat.eval.checks`, whose docstring lists every check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from metaat.attacks.base import nonfinite_rows
from metaat.eval.union import fraction
from metaat.losses import ce, margin
from metaat.runtime import derive_seed
from metaat.threats import ThreatModel, random_init

STATUSES = ("passed", "flagged", "skipped")
MODEL_CHECKS = ("logits", "deterministic", "eval-mode", "gradients", "finite-outputs")


@dataclass(frozen=True)
class CheckConfig:
    """How much work the checks do. ``threats=None`` checks every evaluated threat."""

    n: int = 100
    steps: int = 20
    square_queries: int = 500
    eps_factor: float = 8.0
    tolerance: float = 0.01
    large_eps_accuracy: float = 0.05
    threats: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.n < 1 or self.steps < 1 or self.square_queries < 1:
            raise ValueError("checks: n, steps and square_queries must be >= 1")
        if self.eps_factor <= 1:
            raise ValueError(f"checks: eps_factor must be > 1, got {self.eps_factor}")
        if not 0 <= self.tolerance < 1 or not 0 <= self.large_eps_accuracy < 1:
            raise ValueError("checks: tolerance and large_eps_accuracy must lie in [0, 1)")


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str
    explanation: str
    threat: str | None = None
    values: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown check status {self.status!r}; valid: {', '.join(STATUSES)}")

    @property
    def passed(self) -> bool:
        return self.status != "flagged"

    @property
    def label(self) -> str:
        return self.name if self.threat is None else f"{self.name} ({self.threat})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "threat": self.threat,
            "status": self.status,
            "explanation": self.explanation,
            "values": {k: float(v) for k, v in self.values.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckResult:
        return cls(d["name"], d["status"], d["explanation"], d.get("threat"), dict(d.get("values", {})))


def check_result(
    name: str, flagged: bool, ok: str, bad: str, threat: str | None = None, **values: float
) -> CheckResult:
    return CheckResult(name, "flagged" if flagged else "passed", bad if flagged else ok, threat, values)


# --- model checks -------------------------------------------------------------------------------
def check_logits(model: nn.Module, x: torch.Tensor) -> CheckResult:
    with torch.no_grad():
        out = model(x).float()
    row_error = float((out.sum(dim=1) - 1).abs().max())
    lo, hi = float(out.min()), float(out.max())
    probabilities = lo > -1e-5 and hi < 1 + 1e-5 and row_error < 1e-4
    return check_result(
        "logits",
        probabilities,
        "outputs are unnormalised scores (logits), as the attacks' losses assume",
        "outputs look like probabilities (all in [0, 1], rows sum to 1): cross-entropy on them "
        "saturates and gradient attacks weaken; the model must return logits",
        min_output=lo,
        max_output=hi,
        max_row_sum_error=row_error,
    )


def check_deterministic(model: nn.Module, x: torch.Tensor) -> CheckResult:
    with torch.no_grad():
        a, b = model(x).float(), model(x).float()
    diff = float((a - b).abs().max())
    scale = 1e-6 * (1 + float(a.abs().max()))
    return check_result(
        "deterministic",
        not diff <= scale,
        "two forward passes give identical outputs",
        f"two forward passes differ (max |Δ| = {diff:.3g}): a randomised model needs an EOT attack "
        "(reference version 'rand'); the reported numbers may overestimate robustness",
        max_difference=diff,
    )


def _outputs_in_mode(model: nn.Module, x: torch.Tensor, training: bool) -> torch.Tensor:
    """Outputs with the model in ``training`` mode, leaving buffers (BN statistics) and RNG untouched."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was = model.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.train(training)
            return model(x).float()
    finally:
        model.load_state_dict(saved)
        model.train(was)


def check_eval_mode(model: nn.Module, x: torch.Tensor, given_training: bool) -> CheckResult:
    eval_out = _outputs_in_mode(model, x, False)
    scale = 1e-4 * (1 + float(eval_out.abs().max()))
    mode_diff = 0.0
    if given_training:
        mode_diff = float((_outputs_in_mode(model, x, True) - eval_out).abs().max())
    k = min(8, x.shape[0])
    try:
        with torch.no_grad():
            single = torch.cat([model(x[i : i + 1]).float() for i in range(k)])
        batch_diff = float((single - eval_out[:k]).abs().max())
    except (RuntimeError, ValueError):  # e.g. BatchNorm refusing a batch of one: it uses batch statistics
        batch_diff = math.inf
    problems = []
    if mode_diff > scale:
        problems.append(
            f"the model was given in training mode and its outputs change with the mode (max |Δ| = "
            f"{mode_diff:.3g}; BatchNorm/Dropout): it was evaluated in eval mode — call model.eval()"
        )
    if batch_diff > scale:
        problems.append(
            f"outputs depend on the other examples in the batch (max |Δ| = {batch_diff:.3g}): batch "
            "statistics in eval mode make attacks on single points unreliable"
        )
    return CheckResult(
        "eval-mode",
        "flagged" if problems else "passed",
        "; ".join(problems) if problems else "outputs do not depend on the training mode or on the batch",
        None,
        {"given_training": float(given_training), "mode_difference": mode_diff, "batch_difference": batch_diff},
    )


def check_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> CheckResult:
    if not x.is_floating_point():
        return CheckResult("gradients", "skipped", "discrete inputs (token ids) have no input gradient")
    xg = x.detach().clone().requires_grad_(True)
    logits = model(xg)
    (g_margin,) = torch.autograd.grad(margin(logits, y).sum(), xg, retain_graph=True)
    (g_ce,) = torch.autograd.grad(ce(logits, y).sum(), xg)
    flat_m, flat_c = g_margin.flatten(1), g_ce.flatten(1)
    nan = fraction(~torch.isfinite(flat_m).all(dim=1) | ~torch.isfinite(flat_c).all(dim=1))
    zero = fraction(flat_m.abs().sum(dim=1) == 0)
    zero_ce = fraction(flat_c.abs().sum(dim=1) == 0)
    flagged = nan > 0 or zero > 0
    return check_result(
        "gradients",
        flagged,
        f"input gradients are finite and non-zero (cross-entropy gradient vanishes at {100 * zero_ce:.1f} % "
        "of points, margin-loss gradient at none)",
        f"{100 * zero:.1f} % of points have an all-zero and {100 * nan:.1f} % a non-finite input gradient "
        "of the margin loss: gradient-based attacks cannot move there (masked or shattered gradients); "
        "trust only gradient-free or adaptive attacks",
        zero_fraction=zero,
        nan_fraction=nan,
        zero_ce_fraction=zero_ce,
    )


# --- attack checks ------------------------------------------------------------------------------


def check_finite_outputs(
    model: nn.Module, x: torch.Tensor, threats: tuple[ThreatModel, ...], seed: int = 0, draws: int = 4
) -> CheckResult:
    """Outputs are finite at every point and at ``draws`` random points inside each continuous
    threat's set around it. A model that is finite on the clean inputs but NaN or Inf inside the
    ball passes every other check (its gradients at the clean points are fine, its accuracy falls
    to 0 at large eps); attacks on it stall where the loss is NaN, and an ``argmax`` would read its
    NaN rows as a class. The evaluation counts such points as broken; this check says why."""
    counts: dict[str, float] = {}
    with torch.no_grad():
        bad = nonfinite_rows(model(x))
        counts["clean"] = float(bad.sum())
        for threat in threats:
            if not threat.continuous or not x.is_floating_point():
                continue
            g = torch.Generator().manual_seed(derive_seed(seed, str(threat), "finite-outputs"))
            hit = torch.zeros_like(bad)
            for _ in range(draws):
                hit |= nonfinite_rows(model(x + random_init(x, threat, g)))
            counts[str(threat)] = float(hit.sum())
            bad |= hit
    where = ", ".join(f"{k}: {int(v)}" for k, v in counts.items() if v)
    values = {f"nonfinite_{k}": v for k, v in counts.items()}
    return check_result(
        "finite-outputs",
        bool(bad.any()),
        f"outputs are finite at all {x.shape[0]} points and at {draws} random points inside each threat's set "
        "around each",
        f"outputs are NaN or Inf at {int(bad.sum())} of {x.shape[0]} points or near them ({where}): such points "
        "are counted as broken, but gradient attacks stall there (masked gradients) — fix the model's numerics",
        None,
        **values,
    )
