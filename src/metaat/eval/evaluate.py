"""``evaluate``: clean, per-threat and union robust accuracy, unseen attacks and gradient-masking
checks for one model on one set of points — the numbers every metaat report is rendered from.

>>> import torch, metaat.eval as E
>>> torch.manual_seed(0) and None
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
>>> x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 4, (8,))
>>> r = E.evaluate(model, x, y, ["linf:0.05", "l2:0.5"], suite="quick", checks=False)
>>> r.union <= min(r.robust.values()) <= r.clean
True
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metaat.attacks.base import attack_mode, auto_chunk, check_model_inputs
from metaat.eval.checks import CheckConfig, CheckResult, run_checks
from metaat.eval.model_checks import check_finite_outputs
from metaat.eval.state import EvalState, flags_from_text, flags_to_text, jsonable, model_digest, tensor_digest
from metaat.eval.suites import Suite, make_suite
from metaat.eval.union import Progress, Shard, clean_predictions, fraction, predict, worst_case_ensemble
from metaat.eval.unseen import UnseenConfig, run_unseen
from metaat.models import model_device
from metaat.threats import DEFAULT_THREATS, UNIT_BOX, ThreatModel, lp_norm, parse_threats, resolve_threat

EVAL_THREATS: tuple[str, ...] = tuple(resolve_threat(norm) for norm in DEFAULT_THREATS)
"""The threats evaluated when none are given: each norm of :data:`metaat.threats.DEFAULT_THREATS`."""


@dataclass(frozen=True)
class EvalResult:
    """Everything one evaluation measured. Accuracies are fractions in [0, 1].

    ``flags`` holds per-point bool tensors (CPU): ``"clean"``, one per threat, and ``"union"``.
    In union-only mode, threats after the first were attacked only on the points still robust, so
    their accuracies (and flags) are upper bounds: ``upper_bound[threat]`` says which.
    """

    n: int
    threats: tuple[str, ...]
    clean: float
    robust: dict[str, float]
    union: float
    flags: dict[str, torch.Tensor]
    upper_bound: dict[str, bool]
    attacked: dict[str, int]
    protocol: dict[str, Any]
    timings: dict[str, Any]
    seed: int
    unseen: dict[str, Any] | None = None
    checks: tuple[CheckResult, ...] = ()
    examples: tuple[dict[str, Any], ...] = ()

    @property
    def flagged(self) -> list[CheckResult]:
        """The checks that failed (shown in every report)."""
        return [c for c in self.checks if c.status == "flagged"]

    def to_dict(self, include_flags: bool = False) -> dict[str, Any]:
        """JSON-ready view (per-point flags only on request, as '0'/'1' strings)."""
        out: dict[str, Any] = {
            "n": self.n,
            "threats": list(self.threats),
            "clean": self.clean,
            "robust": dict(self.robust),
            "robust_upper_bound": dict(self.upper_bound),
            "attacked": dict(self.attacked),
            "union": self.union,
            "unseen": self.unseen,
            "checks": [c.to_dict() for c in self.checks],
            "protocol": self.protocol,
            "timings": self.timings,
            "seed": self.seed,
            "examples": list(self.examples),
        }
        if include_flags:
            out["flags"] = {k: flags_to_text(v) for k, v in self.flags.items()}
        return out


def _config(value: bool | Any, cls: type[Any]) -> Any:
    if value is True:
        return cls()
    if value is False or value is None:
        return None
    if not isinstance(value, cls):
        raise TypeError(f"expected True, False or a {cls.__name__}; got {type(value).__name__}")
    return value


def check_model_fits(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """The model's number of classes; one-line errors when it cannot take ``x`` or predict ``y``."""
    shape = tuple(x.shape[1:])
    check_model_inputs(model, x, y)  # dtype, and the spec's shape and classes, without a forward pass
    try:
        with torch.no_grad(), attack_mode(model):
            out = model(x[:1].to(model_device(model)))
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"the model cannot take inputs of shape {shape}: {reason}") from err
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the model must return a tensor of logits; got {type(out).__name__}")
    if out.dim() != 2 or out.shape[0] != 1:
        raise ValueError(
            f"the model must return logits of shape (batch, classes); for a batch of 1 it returned {tuple(out.shape)}"
        )
    if not out.is_floating_point():
        raise ValueError(f"the model must return floating-point logits; got dtype {out.dtype}")
    classes = int(out.shape[1])
    if y.numel() and int(y.max()) >= classes:
        raise ValueError(f"labels go up to {int(y.max())} but the model outputs only {classes} classes")
    return classes


def _select(
    x: torch.Tensor, y: torch.Tensor, n: int | None, box: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    from metaat.data import validate_batch

    validate_batch(x, y, box=box)
    # The reference package uses .view() on inputs; non-contiguous tensors would make it fail.
    x, y = x.contiguous(), y.contiguous()
    if n is None:
        return x, y
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer or None; got {n!r}")
    if n > x.shape[0]:
        raise ValueError(f"n={n} is larger than the data ({x.shape[0]} points)")
    return x[:n], y[:n]


def _examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    outcomes: dict[str, torch.Tensor],
    clean: torch.Tensor,
    threats: tuple[ThreatModel, ...],
    suite: Suite,
    seed: int,
    k: int,
) -> list[dict[str, Any]]:
    """Up to ``k`` adversarial examples per threat (broken points first), re-attacked for display."""
    from metaat.eval.plots import example_pngs

    device = model_device(model)
    out = []
    for threat in threats:
        flags = outcomes[str(threat)]
        broken = (clean & ~flags).nonzero().squeeze(1).tolist()
        kept = (clean & flags).nonzero().squeeze(1).tolist()
        ids = torch.tensor((broken + kept)[:k], dtype=torch.long)
        if ids.numel() == 0:
            continue
        xs, ys = x[ids].to(device), y[ids].to(device)
        with attack_mode(model):
            x_adv = suite.attack(model, xs, ys, ids, threat, seed).detach()
            pred_clean, pred_adv = predict(model, xs, k), predict(model, x_adv, k)
        delta = x_adv - xs
        # Discrete inputs: the perturbation's size is the number of changed positions.
        norms = lp_norm(delta, threat.lp_like) if xs.is_floating_point() else (delta != 0).flatten(1).sum(1).float()
        for i in range(ids.numel()):
            scale = float(delta[i].abs().max()) or 1.0
            out.append(
                {
                    "threat": str(threat),
                    "index": int(ids[i]),
                    "label": int(ys[i]),
                    "clean_prediction": int(pred_clean[i]),
                    "adversarial_prediction": int(pred_adv[i]),
                    "perturbation_norm": float(norms[i]),
                    "perturbation_scale": scale,
                    **example_pngs(xs[i], x_adv[i], scale),
                }
            )
    return out


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: Sequence[str | ThreatModel] | str = EVAL_THREATS,
    *,
    suite: str | Suite = "apgd",
    union_only: bool = False,
    n: int | None = None,
    seed: int = 0,
    state_path: str | Path | None = None,
    unseen: bool | UnseenConfig = False,
    checks: bool | CheckConfig = True,
    batch_size: int | None = None,
    holdout: tuple[torch.Tensor, torch.Tensor] | None = None,
    examples: int = 3,
    progress: Progress | None = None,
    shard: Shard | None = None,
    box: tuple[float, float] | None = None,
) -> EvalResult:
    """Evaluate ``model`` on the first ``n`` points of ``(x, y)`` under ``threats``.

    ``suite``: ``quick`` (metaat PGD, monitoring), ``apgd`` (reference APGD-CE + APGD-T, every
    benchmark row) or ``standard`` (reference AutoAttack standard, headline). ``union_only``
    attacks each next threat only on points still robust (same union, upper-bound per-threat
    numbers). ``state_path``: a JSON file; an interrupted evaluation given the same file resumes.
    ``unseen`` / ``checks``: True, False or a config. ``holdout``: points to learn universal
    attacks on (default: two-fold on the evaluated points). ``progress(stage, done, total)`` is
    called after every chunk. The model's mode and ``requires_grad`` flags are restored.

    ``box``: the valid range of input values every threat is intersected with — by default the
    one the model was built for (``metaat_spec["box"]``, set for signals), else the pixel box [0, 1].

    ``shard``: this process's share when the evaluation is split over processes (``torchrun``; see
    :class:`~metaat.eval.union.Shard`). Every process must be given the same arguments and its own
    ``state_path``; each attacks its share of the chunks, all get the merged flags (the same as one
    process's), and only rank 0 runs the examples, unseen attacks and checks (the others return
    without them).
    """
    t_start = time.perf_counter()
    parsed = input_box_threats(parse_threats(list(threats) if not isinstance(threats, str) else threats), model, box)
    x, y = _select(x, y, n, parsed[0].box)
    unseen_cfg: UnseenConfig | None = _config(unseen, UnseenConfig)
    check_cfg: CheckConfig | None = _config(checks, CheckConfig)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    given_training = model.training
    num_classes = check_model_fits(model, x, y)
    the_suite = make_suite(suite, num_classes)
    device = model_device(model)
    chunk = batch_size or auto_chunk(device)
    protocol = the_suite.protocol(parsed)
    fingerprint: dict[str, Any] = {
        "model": model_digest(model),
        "data": tensor_digest(x, y),
        "holdout": tensor_digest(*holdout) if holdout is not None else None,
        "threats": [str(t) for t in parsed],
        "protocol": protocol,
        "union_only": union_only,
        "seed": seed,
        "chunk": chunk,
        "unseen": dataclasses.asdict(unseen_cfg) if unseen_cfg else None,
        "checks": dataclasses.asdict(check_cfg) if check_cfg else None,
        "examples": examples,
    }
    if parsed[0].box != UNIT_BOX:  # only then: pixel evaluations' state files keep their fingerprint
        fingerprint["box"] = list(parsed[0].box)
    if shard is not None:  # only then: one process's earlier state files keep their fingerprint
        fingerprint["shard"] = f"{shard.rank} of {shard.world}"
    state = EvalState.open(state_path, jsonable(fingerprint))
    timings: dict[str, Any] = {}

    t0 = time.perf_counter()
    if state.clean is None:
        with attack_mode(model):
            state.clean = flags_to_text((clean_predictions(model, x.to(device), chunk) == y.to(device)).cpu())
        state.save()
    if len(state.clean) != x.shape[0]:
        raise ValueError(f"{state.path}: its clean flags cover {len(state.clean)} points, not {x.shape[0]}; delete it")
    clean = flags_from_text(state.clean)
    timings["clean"] = round(time.perf_counter() - t0, 3)
    if progress is not None:
        progress("clean", x.shape[0], x.shape[0])

    outcomes, union = worst_case_ensemble(
        model,
        x,
        y,
        clean,
        parsed,
        the_suite,
        union_only=union_only,
        chunk=chunk,
        seed=seed,
        state=state,
        progress=progress,
        shard=shard,
    )
    timings["threats"] = {o.threat: round(o.seconds, 3) for o in outcomes}
    flags = {"clean": clean, **{o.threat: o.flags for o in outcomes}, "union": union}
    warnings = _merge_warnings(state, the_suite)
    if shard is not None and warnings is not None:  # every process's, each once, in rank order
        warnings = list(dict.fromkeys(w for ws in shard.gather(warnings) for w in ws))

    main = shard is None or shard.rank == 0

    def section(name: str, compute: Any) -> Any:
        if not main:
            return None
        if name not in state.sections:
            t = time.perf_counter()
            state.record_section(name, compute())
            timings[name] = round(time.perf_counter() - t, 3)
            if progress is not None:
                progress(name, 1, 1)
        return state.sections[name]

    shown = section("examples", lambda: _examples(model, x, y, flags, clean, parsed, the_suite, seed, examples))
    unseen_out = None
    if unseen_cfg is not None:
        unseen_out = section(
            "unseen", lambda: run_unseen(model, x, y, parsed, unseen_cfg, seed=seed, chunk=chunk, holdout=holdout)
        )
    check_out: tuple[CheckResult, ...] = ()
    if check_cfg is not None:
        raw = section(
            "checks",
            lambda: (
                [
                    c.to_dict()
                    for c in run_checks(
                        model,
                        x.to(device),
                        y.to(device),
                        parsed,
                        check_cfg,
                        seed=seed,
                        given_training=given_training,
                        reference_warnings=warnings,
                        reported={o.threat: o.flags for o in outcomes if not o.upper_bound},
                    )
                ]
                + [_finite_check(model, x, parsed, check_cfg, seed, device)]
            ),
        )
        check_out = tuple(CheckResult.from_dict(c) for c in raw or ())
    timings["total"] = round(time.perf_counter() - t_start, 3)
    protocol = {
        **protocol,
        "union_only": union_only,
        "chunk": chunk,
        "seed": seed,
        "reference_warnings": warnings or [],
    }
    if shard is not None:
        protocol["processes"] = shard.world
    return EvalResult(
        n=int(x.shape[0]),
        threats=tuple(str(t) for t in parsed),
        clean=fraction(clean),
        robust={o.threat: fraction(o.flags) for o in outcomes},
        union=fraction(union),
        flags=flags,
        upper_bound={o.threat: o.upper_bound for o in outcomes},
        attacked={o.threat: o.attacked for o in outcomes},
        protocol=protocol,
        timings=timings,
        seed=seed,
        unseen=unseen_out,
        checks=check_out,
        examples=tuple(shown or ()),
    )


def _finite_check(
    model: nn.Module, x: torch.Tensor, threats: tuple[ThreatModel, ...], cfg: CheckConfig, seed: int, device: Any
) -> dict[str, Any]:
    """The ``finite-outputs`` check on the checks' points and threats, as a dict."""
    chosen = (
        threats if cfg.threats is None else tuple(ThreatModel.parse(t).with_box(*threats[0].box) for t in cfg.threats)
    )
    with attack_mode(model):
        return check_finite_outputs(model, x[: cfg.n].to(device), chosen, seed).to_dict()


def input_box_threats(
    threats: tuple[ThreatModel, ...], model: nn.Module, box: tuple[float, float] | None
) -> tuple[ThreatModel, ...]:
    """``threats`` inside ``box`` — or the box the model was built for, or their own (one box for all)."""
    from metaat.models.checkpoint import unwrap

    if box is None:
        spec = getattr(unwrap(model), "metaat_spec", None)
        saved = spec.get("box") if isinstance(spec, dict) else None
        box = (float(saved[0]), float(saved[1])) if saved else None
    if box is not None:
        threats = tuple(t.with_box(*box) for t in threats)
    boxes = sorted({t.box for t in threats})
    if len(boxes) > 1:
        raise ValueError(f"the threats must share one input box; got {boxes}")
    return threats


def _merge_warnings(state: EvalState, suite: Suite) -> list[str] | None:
    """Reference-package warnings of this and earlier (resumed) sessions; None for metaat suites."""
    if "reference_package" not in suite.protocol(()):
        return None
    merged = list(state.sections.get("reference_warnings", []))
    merged += [w for w in suite.warnings() if w not in merged]
    state.record_section("reference_warnings", merged)
    return merged
