"""``apgd-worst``: robust accuracy as a worst case over the attack's own randomness.

APGD starts every run from a random point, so a point one start leaves robust may fall to another.
The ``apgd`` suite (the reference package's APGD-CE with 1 restart, then APGD-T; Croce & Hein 2020,
"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks")
runs once per threat. ``apgd-worst`` adds an *extra pass* on every point that pass left robust:
APGD-CE with 5 random restarts (as the package's ``plus`` version runs it), then APGD-T, both under a
second seed. A point is robust only when both passes leave it robust (the per-point AND), so the extra
pass can only lower an accuracy; ``extra_broken`` counts, per threat and for the union, the points it
broke.

The first pass *is* an ``apgd`` evaluation with its own state file: a model already scored with
``apgd`` on the same points is not attacked again, and the extra pass is measured against exactly that
evaluation. The extra pass has a state file of its own, resumable chunk by chunk like every
evaluation; its fingerprint holds the first pass's flags, so a changed first pass starts it afresh.
When it finishes, the file keeps the final per-point flags (section ``worst_case``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metaat.eval.evaluate import EVAL_THREATS, EvalResult, check_model_fits, evaluate, input_box_threats
from metaat.eval.state import EvalState, flags_to_text, jsonable, model_digest, tensor_digest
from metaat.eval.suites import ReferenceSuite, Suite
from metaat.eval.union import Progress, Shard, attack_threat, fraction
from metaat.runtime import derive_seed
from metaat.threats import UNIT_BOX, ThreatModel, parse_threats

WORST_SUITE = "apgd-worst"
EXTRA_RESTARTS = 5


def extra_suite(num_classes: int = 10, restarts: int = EXTRA_RESTARTS) -> ReferenceSuite:
    """The extra pass: the reference APGD-CE with ``restarts`` random restarts, then APGD-T."""
    return ReferenceSuite(
        version="custom",
        attacks=("apgd-ce", "apgd-t"),
        label="apgd-extra",
        num_classes=num_classes,
        apgd_ce_restarts=restarts,
    )


def extra_seed(seed: int) -> int:
    """The extra pass's seed: its own stream, derived from the evaluation's ``seed``."""
    return derive_seed(seed, WORST_SUITE, "extra pass") % (2**31)


@dataclasses.dataclass(frozen=True)
class WorstCase:
    """An ``apgd-worst`` evaluation. ``result``: both passes' per-point AND, the numbers to report
    (its protocol describes both passes and holds ``extra_broken``); ``first``: the first pass alone;
    ``extra_broken``: per threat and ``"union"``, the points robust after the first pass that the
    extra pass broke; ``extra_attacked``: per threat, the points the extra pass attacked."""

    result: EvalResult
    first: EvalResult
    extra_broken: dict[str, int]
    extra_attacked: dict[str, int]


def evaluate_worst(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: Sequence[str | ThreatModel] | str = EVAL_THREATS,
    *,
    seed: int = 0,
    state_path: str | Path | None = None,
    extra_state_path: str | Path | None = None,
    union_only: bool = False,
    n: int | None = None,
    batch_size: int | None = None,
    restarts: int = EXTRA_RESTARTS,
    first_suite: str | Suite = "apgd",
    progress: Progress | None = None,
    shard: Shard | None = None,
    box: tuple[float, float] | None = None,
    **options: Any,
) -> WorstCase:
    """Evaluate ``model`` with ``first_suite`` (:func:`~metaat.eval.evaluate`, resuming from
    ``state_path``; ``options`` go to it: ``unseen``, ``checks``, ``examples``, ``holdout``), then
    run the extra pass on the points it left robust (resuming from ``extra_state_path``) and take the
    per-point AND. ``union_only``: each pass attacks each threat only on the points still robust under
    the threats before it (less work; per-threat numbers become upper bounds, and the extra pass's
    per-threat counts cover only the points it attacked)."""
    first = evaluate(
        model,
        x,
        y,
        threats,
        suite=first_suite,
        union_only=union_only,
        n=n,
        seed=seed,
        state_path=state_path,
        batch_size=batch_size,
        progress=progress,
        shard=shard,
        box=box,
        **options,
    )
    parsed = input_box_threats(parse_threats(list(threats) if not isinstance(threats, str) else threats), model, box)
    x, y = x[: first.n].contiguous(), y[: first.n].contiguous()
    return extra_pass(
        model,
        x,
        y,
        first,
        parsed,
        seed=seed,
        state_path=extra_state_path,
        restarts=restarts,
        progress=progress,
        shard=shard,
    )


def extra_pass(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    first: EvalResult,
    threats: tuple[ThreatModel, ...],
    *,
    seed: int = 0,
    state_path: str | Path | None = None,
    restarts: int = EXTRA_RESTARTS,
    progress: Progress | None = None,
    shard: Shard | None = None,
) -> WorstCase:
    """The extra pass over ``first``'s robust points (``x``, ``y``: the points ``first`` evaluated)."""
    t0 = time.perf_counter()
    if x.shape[0] != first.n or [str(t) for t in threats] != list(first.threats):
        raise ValueError(f"the extra pass needs the first pass's {first.n} points and threats {list(first.threats)}")
    union_only = bool(first.protocol.get("union_only"))
    chunk = int(first.protocol["chunk"])
    suite = extra_suite(check_model_fits(model, x, y), restarts)
    seed2 = extra_seed(seed)
    keys = ["clean", *first.threats, "union"]
    fingerprint: dict[str, Any] = {
        "model": model_digest(model),
        "data": tensor_digest(x, y),
        "threats": list(first.threats),
        "protocol": suite.protocol(threats),
        "first_pass": {"suite": first.protocol["suite"], "flags": tensor_digest(*(first.flags[k] for k in keys))},
        "union_only": union_only,
        "seed": seed,
        "extra_seed": seed2,
        "chunk": chunk,
    }
    if threats[0].box != UNIT_BOX:
        fingerprint["box"] = list(threats[0].box)
    if shard is not None:
        fingerprint["shard"] = f"{shard.rank} of {shard.world}"
    state = EvalState.open(state_path, jsonable(fingerprint))
    if state.clean is None:
        state.clean = flags_to_text(first.flags["clean"])
        state.save()

    def staged(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(f"{stage} (extra pass)", done, total)

    running = first.flags["union"].clone()  # robust under every threat so far, both passes
    after: dict[str, torch.Tensor] = {}
    broken: dict[str, int] = {}
    attacked: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for threat in threats:
        key = str(threat)
        before = first.flags[key]
        pending = (running if union_only else before).clone()
        flags, seconds[key] = attack_threat(
            model, x, y, pending, threat, suite, chunk=chunk, seed=seed2, state=state, progress=staged, shard=shard
        )
        hit = pending & ~flags  # robust after the first pass, broken by the extra one
        after[key] = before & ~hit
        running &= after[key]
        broken[key], attacked[key] = int(hit.sum()), int(pending.sum())
    broken["union"] = int(first.flags["union"].sum()) - int(running.sum())
    flags_out = {"clean": first.flags["clean"], **after, "union": running}
    state.record_section(
        "worst_case",
        {"flags": {k: flags_to_text(v) for k, v in flags_out.items()}, "extra_broken": broken, "suite": WORST_SUITE},
    )
    warnings = list(first.protocol.get("reference_warnings") or [])
    warnings += [w for w in state.sections.get("reference_warnings", []) + suite.warnings() if w not in warnings]
    state.record_section("reference_warnings", warnings)
    extra_attacks = suite.protocol(threats)["attacks"]
    protocol = {
        **first.protocol,
        "suite": WORST_SUITE,
        "attacks": {
            t: [*first.protocol["attacks"][t], *(f"extra pass: {a}" for a in extra_attacks[t])] for t in keys[1:-1]
        },
        "extra_pass": {
            "attacks": extra_attacks,
            "seed": seed2,
            "apgd_ce_restarts": restarts,
            "first_pass_suite": first.protocol["suite"],
            "attacked": attacked,
        },
        "extra_broken": broken,
        "reference_warnings": warnings,
    }
    first_seconds = first.timings.get("threats", {})
    timings = {
        **first.timings,
        "threats": {k: round(float(first_seconds.get(k, 0.0)) + seconds[k], 3) for k in seconds},
        "extra_threats": {k: round(v, 3) for k, v in seconds.items()},
        "total": round(float(first.timings.get("total", 0.0)) + time.perf_counter() - t0, 3),
    }
    result = dataclasses.replace(
        first,
        robust={k: fraction(v) for k, v in after.items()},
        union=fraction(running),
        flags=flags_out,
        protocol=protocol,
        timings=timings,
    )
    return WorstCase(result=result, first=first, extra_broken=broken, extra_attacked=attacked)


__all__ = ["EXTRA_RESTARTS", "WORST_SUITE", "WorstCase", "evaluate_worst", "extra_pass", "extra_seed", "extra_suite"]
