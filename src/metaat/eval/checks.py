"""Gradient-masking checks (Carlini et al. 2019, "On Evaluating Adversarial Robustness", §5; and the
runtime checks of the reference AutoAttack). Each check returns ``passed``, ``flagged`` or
``skipped`` with a one-paragraph explanation and the numbers it measured; a flagged check is shown
in every report, never hidden.

Model checks (on the first ``n`` points; in :mod:`metaat.eval.model_checks`, with the result types):

* ``logits``         outputs are logits, not probabilities (rows in [0, 1] summing to 1 → flag);
* ``deterministic``  two forward passes give the same outputs;
* ``eval-mode``      outputs do not depend on the mode the model was given in (BatchNorm/Dropout
                     in training mode) nor on the other examples in the batch;
* ``gradients``      input gradients of the margin loss are finite and non-zero.

Attack checks, per threat (metaat PGD with per-point random starts; the reference Square):

* ``iterative-vs-single-step``  PGD accuracy <= FGSM accuracy;
* ``more-steps``                doubling steps and restarts (2 restarts) barely lowers accuracy;
* ``large-eps``                 accuracy at ``eps_factor`` × eps (capped at the box) is at most
                                ``large_eps_accuracy`` (~0);
* ``white-box-vs-black-box``    Square breaks (almost) no point that survives every white-box attack;
* ``transfer``                  (given saved examples from another model, ``metaat eval --transfer``)
                                they break (almost) no point that survives the evaluation's attacks;

"Barely" and "almost" mean: by at most ``max(tolerance · n, 1)`` points (default 1 % of the points,
at least one point, so that one unlucky example on 100 points is not a flag).

and ``reference-warnings``: the warnings the reference package raised during the evaluation.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

import metaat.attacks as attacks
from metaat.attacks.autoattack import from_reference, to_reference
from metaat.attacks.base import attack_mode
from metaat.eval.model_checks import (
    CheckConfig,
    CheckResult,
    check_deterministic,
    check_eval_mode,
    check_gradients,
    check_logits,
    check_result,
)
from metaat.eval.suites import QuickSuite
from metaat.eval.union import fraction, predict
from metaat.runtime import derive_seed
from metaat.threats import ThreatModel

THREAT_CHECKS = ("iterative-vs-single-step", "more-steps", "large-eps", "white-box-vs-black-box")


def _robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    return (predict(model, x_adv, 256) == y) & (predict(model, x, 256) == y)


def _pgd_flags(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, seed: int, suite: QuickSuite
) -> torch.Tensor:
    ids = torch.arange(x.shape[0])
    return _robust(model, x, y, suite.attack(model, x, y, ids, threat, seed))


def box_diameter(threat: ThreatModel, dim: int) -> float:
    """Largest useful eps: the input box (``[0, 1]^dim`` for pixels) fits in this ball, so any input
    reaches any other; a domain threat's amplitude is capped at the box's width."""
    low, high = threat.box
    width = high - low
    if threat.box == (0.0, 1.0):
        width = 1.0
    return {"linf": width, "l2": width * math.sqrt(dim), "l1": width * float(dim)}.get(threat.norm, width)


def square_flags(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, queries: int, seed: int
) -> torch.Tensor:
    """Robust flags under the reference package's Square attack (black-box, score-based)."""
    from pyautoattack.square import SquareAttack

    view, u, ref_threat = to_reference(model, x, threat)
    square = SquareAttack(
        view,
        norm=ref_threat.autoattack_norm,
        n_queries=queries,
        eps=ref_threat.eps,
        p_init=0.8,
        n_restarts=1,
        seed=seed,
        verbose=False,
        device=x.device,
        resc_schedule=True,
        loss="margin",
    )
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        u_adv = square.perturb(u.contiguous(), y)
    return _robust(model, x, y, from_reference(u_adv, x, threat))


def threat_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    cfg: CheckConfig,
    seed: int,
    reported: torch.Tensor | None = None,
) -> list[CheckResult]:
    """The four attack checks for one threat on ``(x, y)`` (model already in attack mode).

    ``reported``: the evaluation's own robust flags for these points (exact, not upper bounds);
    the black-box comparison is made against them as well as against the checks' own PGD.
    """
    t, m = str(threat), x.shape[0]
    # Differences are compared in points: up to max(tolerance · m, 1) points is noise, not a flag.
    allowed = max(cfg.tolerance * m, 1.0) + 1e-9
    fgsm = attacks.create("fgsm", threat=threat)(model, x, y)
    acc_fgsm = fraction(_robust(model, x, y, fgsm))
    base = _pgd_flags(model, x, y, threat, seed, QuickSuite(steps=cfg.steps, losses=("ce",)))
    strong = _pgd_flags(
        model, x, y, threat, derive_seed(seed, "strong"), QuickSuite(steps=2 * cfg.steps, restarts=2, losses=("ce",))
    )
    acc_base, acc_strong = fraction(base), fraction(strong)
    out = [
        check_result(
            "iterative-vs-single-step",
            (acc_base - acc_fgsm) * m > allowed,
            f"PGD-{cfg.steps} ({100 * acc_base:.1f} %) is at least as strong as FGSM ({100 * acc_fgsm:.1f} %)",
            f"PGD-{cfg.steps} leaves {100 * acc_base:.1f} % accuracy but single-step FGSM only "
            f"{100 * acc_fgsm:.1f} %: iterative attacks are failing, a sign of gradient masking",
            t,
            fgsm_accuracy=acc_fgsm,
            pgd_accuracy=acc_base,
        ),
        check_result(
            "more-steps",
            (acc_base - acc_strong) * m > allowed,
            f"doubling steps and restarts changes accuracy by {100 * (acc_base - acc_strong):.1f} points",
            f"doubling PGD's steps and restarts lowers accuracy from {100 * acc_base:.1f} % to "
            f"{100 * acc_strong:.1f} %: a fixed-budget attack has not converged here; trust only the "
            "adaptive reference suites (apgd, standard) or more iterations",
            t,
            accuracy=acc_base,
            accuracy_doubled=acc_strong,
        ),
    ]
    big = dataclasses.replace(threat, eps=min(threat.eps * cfg.eps_factor, box_diameter(threat, x[0].numel())))
    acc_big = fraction(
        _pgd_flags(model, x, y, big, derive_seed(seed, "large"), QuickSuite(steps=cfg.steps, losses=("ce", "margin")))
    )
    out.append(
        check_result(
            "large-eps",
            acc_big > cfg.large_eps_accuracy,
            f"at eps {big.eps:g} accuracy falls to {100 * acc_big:.1f} %",
            f"at eps {big.eps:g} ({cfg.eps_factor:g}x) the model still keeps {100 * acc_big:.1f} % accuracy: "
            "unbounded attacks should reach ~0 %, so the attacks are being blocked (gradient masking)",
            t,
            eps=big.eps,
            accuracy=acc_big,
        )
    )
    # The white-box side is every white-box attack run: PGD with CE (two budgets), PGD with the
    # margin loss, and the evaluation's own suite when its flags are given.
    margin_pgd = _pgd_flags(
        model, x, y, threat, derive_seed(seed, "margin"), QuickSuite(steps=cfg.steps, losses=("margin",))
    )
    white = base & strong & margin_pgd
    if reported is not None:
        white &= reported.to(white.device)
    if not threat.is_lp:
        out.append(
            CheckResult("white-box-vs-black-box", "skipped", "the reference Square attack covers Lp balls only", t)
        )
        return out
    try:
        black = square_flags(model, x, y, threat, cfg.square_queries, derive_seed(seed, "square") % (2**31))
    except (RuntimeError, IndexError, AssertionError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        out.append(
            CheckResult(
                "white-box-vs-black-box",
                "skipped",
                f"the reference Square attack failed on inputs of shape {tuple(x.shape[1:])}: {reason}",
                t,
            )
        )
        return out
    only_black = fraction(white & ~black)
    out.append(
        check_result(
            "white-box-vs-black-box",
            only_black * m > allowed,
            f"Square ({cfg.square_queries} queries) breaks {100 * only_black:.1f} % of the points that survive the "
            "white-box attacks (within noise)",
            f"Square ({cfg.square_queries} queries) breaks {100 * only_black:.1f} % of the points that survive "
            "every white-box attack (the evaluation's suite and PGD with CE and margin losses): the white-box "
            "attacks are misled (gradient masking) and the reported accuracy is too high",
            t,
            black_box_only=only_black,
            black_box_accuracy=fraction(black),
            white_box_accuracy=fraction(white),
        )
    )
    return out


def check_transfer(
    model: nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    white: torch.Tensor,
    threat: str,
    source: str,
    tolerance: float = 0.01,
    *,
    against: str = "threat",
) -> CheckResult:
    """Examples transferred from ``source`` (``x_adv``, crafted on another model) against the
    evaluation's exact per-point robust flags ``white`` on the same points ``x``: the threat's own
    (``against="threat"``) or, where ``--union-only`` left those an upper bound, the union's
    (``against="union"``; the values then say ``union_accuracy``).

    A model whose own gradients mislead the attacks still falls to examples from a surrogate
    (Athalye et al. 2018; Carlini et al. 2019, §5): flagged when the transferred examples break more
    than ``max(tolerance · n, 1)`` points that the white-box evaluation left robust.
    """
    if against not in ("threat", "union"):
        raise ValueError(f"against must be 'threat' or 'union'; got {against!r}")
    m = x.shape[0]
    allowed = max(tolerance * m, 1.0) + 1e-9
    with attack_mode(model):
        clean = predict(model, x, 256) == y
        robust = (predict(model, x_adv, 256) == y) & clean
    white = white.to(robust.device)
    only = fraction(white & ~robust)
    surviving = "the union of the evaluation's attacks" if against == "union" else "the evaluation's attacks"
    return check_result(
        "transfer",
        only * m > allowed,
        f"examples from {source} break {100 * only:.1f} % of the points that survive {surviving} "
        f"(within noise; transfer accuracy {100 * fraction(robust):.1f} %)",
        f"examples transferred from {source} break {100 * only:.1f} % of the points that survive "
        f"{surviving}: those white-box attacks are misled on this model (gradient masking) and the "
        "reported accuracy is too high",
        threat,
        transfer_only=only,
        transfer_accuracy=fraction(robust),
        points=float(m),
        **{"union_accuracy" if against == "union" else "white_box_accuracy": fraction(white & clean)},
    )


def reference_warnings_check(messages: list[str] | None) -> CheckResult:
    """The reference AutoAttack's own runtime checks (randomness, probabilities, zero gradients...)."""
    if messages is None:
        return CheckResult("reference-warnings", "skipped", "the suite did not use the reference package")
    return CheckResult(
        "reference-warnings",
        "flagged" if messages else "passed",
        "the reference package warned: " + " | ".join(messages)
        if messages
        else "the reference package raised no warning",
        None,
        {"warnings": float(len(messages))},
    )


def run_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: tuple[ThreatModel, ...],
    cfg: CheckConfig | None = None,
    *,
    seed: int = 0,
    given_training: bool = False,
    reference_warnings: list[str] | None = None,
    reported: dict[str, torch.Tensor] | None = None,
) -> list[CheckResult]:
    """Every check on the first ``cfg.n`` points; the model's mode and gradients are restored.

    ``reported`` maps threat text to the evaluation's exact per-point robust flags (over at least
    the first ``cfg.n`` points); the white-box-vs-black-box check also compares against them.
    """
    cfg = cfg or CheckConfig()
    x, y = x[: cfg.n], y[: cfg.n]
    chosen = threats if cfg.threats is None else tuple(ThreatModel.parse(t) for t in cfg.threats)
    with attack_mode(model):
        results = [
            check_logits(model, x),
            check_deterministic(model, x),
            check_eval_mode(model, x, given_training),
            check_gradients(model, x, y),
        ]
        for threat in chosen:
            if not threat.continuous:
                results.append(
                    CheckResult(
                        "attack-checks", "skipped", "gradient attacks do not apply to discrete edits", str(threat)
                    )
                )
                continue
            own = (reported or {}).get(str(threat))
            results.extend(threat_checks(model, x, y, threat, cfg, seed, None if own is None else own[: x.shape[0]]))
    results.append(reference_warnings_check(reference_warnings))
    return results
