"""Transfer attacks between the study's models: does any model fall to examples crafted on another
model that its own white-box evaluation left robust?

    python benchmarks/transfer.py --study fmnist_study --threads 1 --ensemble-n 200

A model whose gradients mislead the attacks (gradient masking) still falls to adversarial examples
transferred from a surrogate (Athalye, Carlini & Wagner 2018; Carlini et al. 2019, "On Evaluating
Adversarial Robustness"). The study's table scores every model with the reference APGD-CE + APGD-T
per threat; this script asks whether black-box transfer finds what that missed:

1. every model of the study kept under ``benchmarks/runs/<study>/<method>/seed<k>/final`` is a
   *source*: ``metaat attack``'s PGD (``--steps`` steps, cross-entropy, random start, seed 0) at each
   threat of the table (L∞ 0.1, L2 1.5, L1 10) on the table's test points, saved with
   :func:`metaat.attacks.transfer.save_adversarial` under ``runs/<study>/transfer/`` (a killed run
   reuses the sets already written; a damaged one is made again);
2. every seed-0 model whose finished evaluation state reproduces its record is a *target*: its
   per-point white-box flags come from that state (the same points, the same numbers as the table).
   A model retrained after its run folder was lost is a target too when its headline run re-made
   the study protocol's flags on it (``study.py``'s ``study_protocol_rerun``): its row is marked
   "retrained" and its white-box numbers are that rerun's, not the table's. Either way the state
   must have scored the kept weights (its fingerprint's model digest);
3. each target is scored on every other source's examples (its own seed-1 copy included: an
   independently trained model of the same recipe, the closest surrogate an attacker could build).

With ``--momentum MU`` the sources use MI-FGSM's momentum (Dong et al. 2018: the accumulated,
L1-normalised gradient), which transfers better than plain PGD; its sets and results are kept apart
(``..._transfer_mi<MU>.json``). With ``--ensemble-n N`` each target is also attacked by the
ensemble (mean logits) of every other kept model — the stronger transfer source — on the first N
points, saved per target and threat.

Per target the output gives the white-box union, the union under transfer from each source, the
union under both (a point counts only if it survives the white-box attacks and every transferred
example), and the points that only transfer broke. A model that is robust rather than masked keeps
its white-box union: transfer is the weaker attack, so that last count should be small.
Writes ``benchmarks/results/<study>_transfer.json`` (with the command, hardware and the sets'
checksums) and ``<study>_transfer.md``. Uses metaat's own PGD for the transferred examples, so these
are a secondary check beside the reference package's numbers, never a replacement.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from monitor_gap import study_records, write_result  # benchmarks/ is on the path when run as a script
from study import RESULTS, RUNS, finished_state_in, reproduces, run_path
from torch import nn

from metaat.models.checkpoint import recorded_sha256

THREATS = ("linf:0.1", "l2:1.5", "l1:10")


def threat_flags(state: dict[str, Any], threat: str) -> list[bool]:
    """Per test point: clean-correct and robust under ``threat``, from a full-mode evaluation state."""
    clean = [c == "1" for c in state["clean"]]
    chunks = state["threats"][threat]["chunks"]
    flags = "".join(chunks[str(k)] for k in range(len(chunks)))
    pending = [i for i, ok in enumerate(clean) if ok]
    if len(flags) != len(pending):
        raise ValueError(f"{threat}: {len(flags)} flags for {len(pending)} clean points (unfinished?)")
    out = [False] * len(clean)
    for i, f in zip(pending, flags, strict=True):
        out[i] = f == "1"
    return out


def models_of(study: str) -> list[tuple[str, int, Path]]:
    """(method, seed, model folder) for every finished model kept under ``runs/<study>``."""
    found = []
    for final in sorted((RUNS / study).glob("*/seed*/final")):
        if (final / "model.json").is_file():
            found.append((final.parent.parent.name, int(final.parent.name.removeprefix("seed")), final))
    return found


def table_state(study: str, method: str, seed: int) -> dict[str, Any] | None:
    """The full-mode APGD evaluation state of the table's record for (method, seed), if this run
    folder holds it and it reproduces the record (a retrained model's run folder does not)."""
    for r in study_records(study) or []:
        if r["method"] == method and r["seed"] == seed:
            found = finished_state_in(run_path(study, method, seed), r)
            if found is not None and reproduces(r, *found) and not found[0]["fingerprint"].get("union_only"):
                return found[0]
    return None


def rerun_state(study: str, method: str, seed: int) -> dict[str, Any] | None:
    """For a retrained model: the full-mode APGD state its headline record's ``study_protocol_rerun``
    made on that same model, if the run folder holds it finished and it reproduces the rerun's
    clean and union counts."""
    for r in study_records(study, headline=True) or []:
        rerun = r.get("study_protocol_rerun")
        if r["method"] != method or r["seed"] != seed or not rerun:
            continue
        found = finished_state_in(run_path(study, method, seed), r, "apgd")
        made = {**r, "clean": rerun["clean"], "robust": rerun["robust"]}
        if found is not None and not found[0]["fingerprint"].get("union_only") and reproduces(made, *found):
            return found[0]
    return None


def target_state(study: str, method: str, seed: int, model_dir: Path) -> tuple[dict[str, Any], str] | str:
    """(state, "record" or "retrained") for a target, or why (method, seed) cannot be one."""
    from metaat.eval.state import model_digest
    from metaat.models import resolve_model

    state, basis = table_state(study, method, seed), "record"
    if state is None:
        state, basis = rerun_state(study, method, seed), "retrained"
    if state is None or any(t not in state["threats"] for t in THREATS):
        return (
            "no finished full-mode APGD evaluation of all three threats in its run folder that reproduces its "
            "record or its headline run's study-protocol rerun (a single-threat record, or a lost evaluation)"
        )
    if state["fingerprint"].get("model") != model_digest(resolve_model(model_dir)):
        return "its evaluation state scored other weights than the kept model"
    return state, basis


class Ensemble(nn.Module):
    """Mean logits of several models: the usual stronger transfer source (Liu, Chen, Liu & Song 2017,
    "Delving into Transferable Adversarial Examples and Black-box Attacks", ICLR)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


def weights_sha256(model_dir: Path) -> str:
    """The weights' SHA-256 its sidecar records (sets are reused only for the same weights)."""
    digest = recorded_sha256(model_dir)
    if digest is None:
        raise RuntimeError(f"{model_dir}: no readable weights digest in its model.json")
    return digest


def saved_or_made(
    path: Path, build: Callable[[], nn.Module], source: str, weights: str, threat: str, n: int, args: argparse.Namespace
) -> tuple[Any, float]:
    """The PGD examples saved at ``path`` when they cover the same points and come from the same
    weights, else made now with the model ``build()`` returns and saved; with the seconds spent."""
    import metaat.attacks as attacks
    import metaat.data as datasets
    from metaat.attacks.transfer import AdversarialFileError, load_adversarial, save_adversarial
    from metaat.runtime import make_generator

    if path.is_file():
        try:
            adv = load_adversarial(path)
            same_points = adv.index.tolist() == list(range(args.start, args.start + n))
            if same_points and adv.meta.get("source_sha256") == weights:  # not a retrained model's old set
                return adv, 0.0
        except AdversarialFileError as err:
            print(f"[transfer] remaking {path.name}: {err}", file=sys.stderr)
    t0 = time.perf_counter()
    net = build()
    x, y = datasets.load("fashion-mnist", "test", n=n, start=args.start)
    atk = attacks.create("pgd", threat=threat, steps=args.steps, seed=0, momentum=args.momentum)
    x_adv = atk(net, x, y, generator=make_generator(0))
    with torch.no_grad():
        clean = net(x).argmax(1) == y
        robust = (net(x_adv).argmax(1) == y) & clean
    meta = {
        "data": "fashion-mnist",
        "split": "test",
        "threat": threat,
        "within_threat": True,
        "attack": repr(atk),
        "source_model": source,
        "source_sha256": weights,
        "seed": 0,
    }
    index = torch.arange(args.start, args.start + n)
    save_adversarial(path, x_adv, y, index, meta=meta, source_clean=clean, source_robust=robust)
    return load_adversarial(path), time.perf_counter() - t0


def adversarial_set(
    study: str, method: str, seed: int, model_dir: Path, threat: str, args: argparse.Namespace
) -> tuple[Any, float]:
    """The saved PGD examples of (method, seed) at ``threat`` (made now if absent, damaged or from
    other weights) and the seconds spent making them (0 when reused)."""
    from metaat.models import resolve_model

    path = RUNS / study / "transfer" / f"{method}-seed{seed}-{threat.replace(':', '_')}-{attack_tag(args)}.safetensors"
    source = str(model_dir.relative_to(RUNS.parent.parent))
    weights = weights_sha256(model_dir)
    return saved_or_made(path, lambda: resolve_model(model_dir), source, weights, threat, args.n, args)


def ensemble_set(
    study: str, target: tuple[str, int], members: list[tuple[str, int, Path]], threat: str, args: argparse.Namespace
) -> tuple[Any, float]:
    """PGD examples of the ensemble of ``members`` (every kept model but the target) on the first
    ``args.ensemble_n`` points, saved per target and threat."""
    from metaat.models import resolve_model

    name = f"ensemble-for-{target[0]}-seed{target[1]}-{threat.replace(':', '_')}-{attack_tag(args)}.safetensors"
    digest = hashlib.sha256("".join(sorted(weights_sha256(d) for _, _, d in members)).encode()).hexdigest()
    source = "the ensemble (mean logits) of " + ", ".join(f"{m} seed {s}" for m, s, _ in members)

    def build() -> nn.Module:
        return Ensemble([resolve_model(d) for _, _, d in members])

    return saved_or_made(RUNS / study / "transfer" / name, build, source, digest, threat, args.ensemble_n, args)


def attack_tag(args: argparse.Namespace) -> str:
    """The source attack in file names: ``pgd10``, or ``pgd10-mi1`` with momentum 1."""
    return f"pgd{args.steps}" + (f"-mi{args.momentum:g}" if args.momentum else "")


def result_name(study: str, momentum: float) -> str:
    """``<study>_transfer``, or ``<study>_transfer_mi<MU>`` for the momentum sources."""
    return f"{study}_transfer" + (f"_mi{momentum:g}" if momentum else "")


def attack_words(out: dict[str, Any]) -> str:
    momentum = out.get("momentum") or 0
    return f"PGD-{out['steps']}" + (f" with momentum {momentum:g} (MI-FGSM)" if momentum else "")


def pct(flags: list[bool]) -> float:
    return round(100 * sum(flags) / len(flags), 1)


Points = tuple[list[int], torch.Tensor, torch.Tensor, list[bool]]  # indices, clean images, labels, clean flags


def target_points(net: nn.Module, target: tuple[str, int, Path], state: dict[str, Any], adv: Any) -> Points:
    """The clean points of ``adv`` (read once per target) and the target's clean flags there, checked
    against its evaluation state: the same points (the state's data digest, when ``adv`` covers its
    whole slice) and the same clean predictions."""
    from metaat.attacks.transfer import clean_points
    from metaat.eval.state import tensor_digest

    method, seed, _ = target
    x, y = clean_points(adv)
    if len(adv) == len(state["clean"]) and tensor_digest(x, y) != state["fingerprint"]["data"]:
        raise RuntimeError(f"{adv.meta.get('source_model')}: not the points {method} seed {seed} was scored on")
    with torch.no_grad():
        clean = (net.eval()(x).argmax(1) == y).tolist()
    if clean != [c == "1" for c in state["clean"]][: len(adv)]:
        raise RuntimeError(f"{method} seed {seed}: clean flags differ from its evaluation state's")
    return adv.index.tolist(), x, y, clean


def score_source(
    net: nn.Module,
    points: Points,
    white: dict[str, list[bool]],
    by_threat: dict[str, Any],
) -> tuple[dict[str, Any], list[bool]]:
    """One source's sets (a threat each, on ``points``: indices, clean images, labels, the target's
    clean flags) scored on the target ``net``: per threat its transfer accuracy and the points only it
    broke (against ``white``, the target's white-box flags there), and per point whether the target
    survives every threat's example."""
    from metaat.attacks.transfer import check_against, transfer_flags

    index, x, y, clean = points
    threats: dict[str, Any] = {}
    survive = list(clean)
    for t, adv in by_threat.items():
        if adv.index.tolist() != index:
            raise RuntimeError(f"{adv.meta.get('source_model')} {t}: not the points the target is scored on")
        check_against(adv, x, y)
        flags = transfer_flags(net, adv, x, clean=torch.tensor(clean))[1].tolist()
        only = sum(w and not f for w, f in zip(white[t], flags, strict=True))
        threats[t] = {"robust": pct(flags), "broken_only_by_transfer": only}
        survive = [a and b for a, b in zip(survive, flags, strict=True)]
    return threats, survive


def white_flags(state: dict[str, Any], n: int) -> tuple[dict[str, list[bool]], list[bool]]:
    """The target's white-box flags per threat and for the union, on the first ``n`` points."""
    white = {t: threat_flags(state, t)[:n] for t in THREATS}
    return white, [all(white[t][i] for t in THREATS) for i in range(n)]


def broken_only(white: list[bool], survive: list[bool]) -> int:
    return sum(w and not s for w, s in zip(white, survive, strict=True))


def score_ensemble(target: tuple[str, int, Path], state: dict[str, Any], by_threat: dict[str, Any]) -> dict[str, Any]:
    """The target on its ensemble sets (the first points of the slice) against its white-box flags there."""
    from metaat.models import resolve_model

    net = resolve_model(target[2])
    first = next(iter(by_threat.values()))
    white, white_union = white_flags(state, len(first))
    threats, survive = score_source(net, target_points(net, target, state, first), white, by_threat)
    return {
        "threats": threats,
        "n": len(first),
        "source": str(first.meta["source_model"]),
        "union": pct(survive),
        "white_box_union_on_these_points": pct(white_union),
        "union_broken_only_by_transfer": broken_only(white_union, survive),
    }


def evaluate_target(
    target: tuple[str, int, Path], state: dict[str, Any], sets: dict[tuple[str, int], dict[str, Any]]
) -> dict[str, Any]:
    """The target's white-box flags against its transfer flags from every other source."""
    from metaat.models import resolve_model

    method, seed, model_dir = target
    net = resolve_model(model_dir)
    others = {key: by_threat for key, by_threat in sets.items() if key != (method, seed)}
    clean = [c == "1" for c in state["clean"]]
    white, white_union = white_flags(state, len(clean))
    combined = list(white_union)
    sources: list[dict[str, Any]] = []
    points = None
    for (s_method, s_seed), by_threat in others.items():
        points = points or target_points(net, target, state, next(iter(by_threat.values())))
        threats, survive = score_source(net, points, white, by_threat)
        sources.append(
            {
                "source": s_method,
                "seed": s_seed,
                "threats": threats,
                "union": pct(survive),
                "union_broken_only_by_transfer": broken_only(white_union, survive),
            }
        )
        combined = [a and b for a, b in zip(combined, survive, strict=True)]
    strongest = min(sources, key=lambda r: r["union"]) if sources else None
    return {
        "method": method,
        "seed": seed,
        "clean": pct(clean),
        "white_box": {**{t: pct(white[t]) for t in THREATS}, "union": pct(white_union)},
        "sources": sources,
        "strongest_source": None if strongest is None else f"{strongest['source']} seed {strongest['seed']}",
        "strongest_transfer_union": None if strongest is None else strongest["union"],
        "union_white_box_and_every_transfer": pct(combined),
        "union_points_only_transfer_broke": broken_only(white_union, combined),
    }


def markdown(out: dict[str, Any]) -> str:
    """The results as a Markdown paragraph and table (ensemble columns when ``--ensemble-n`` ran)."""
    n_ens = out.get("ensemble_n") or 0
    lines = [
        f"Transfer check, {out['study']}: {attack_words(out)} examples from every other model of the study, "
        f"test points {out['start']:,}–{out['start'] + out['n'] - 1:,}; white-box = the table's reference "
        "APGD-CE + APGD-T flags"
        + (
            " (for a target marked retrained: the same protocol re-run by its headline run on the retrained "
            "model, which is not the table's)."
            if any(t.get("white_box_from") == "retrained" for t in out["targets"])
            else "."
        )
        + (
            f" Ensemble: {attack_words(out)} on the mean logits of every other kept model, first {n_ens:,} points."
            if n_ens
            else ""
        ),
        "",
    ]
    head = [
        "target (seed 0)",
        "clean",
        "white-box union",
        "strongest source",
        "its transfer union",
        "union, white-box and every transfer",
        "points only transfer broke",
    ]
    if n_ens:
        head += [f"white-box union, first {n_ens}", "ensemble transfer union", "points only the ensemble broke"]
    lines += ["| " + " | ".join(head) + " |", "|---|---:|---:|---|" + "---:|" * (len(head) - 4)]
    for t in out["targets"]:
        cells = [
            t["method"] + (" (retrained)" if t.get("white_box_from") == "retrained" else ""),
            t["clean"],
            t["white_box"]["union"],
            t["strongest_source"],
            t["strongest_transfer_union"],
            t["union_white_box_and_every_transfer"],
            t["union_points_only_transfer_broke"],
        ]
        if n_ens:
            e = t["ensemble"]
            cells += [e["white_box_union_on_these_points"], e["union"], e["union_broken_only_by_transfer"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def missing_sources(name: str, found: list[tuple[str, int, Path]]) -> list[str]:
    """The sources of the kept ``results/<name>.json`` that this machine holds no model of: a run now
    would drop them (a new machine starts with no run folders; the models are not committed)."""
    src = RESULTS / f"{name}.json"
    if not src.is_file():
        return []
    try:
        kept = json.loads(src.read_text(encoding="utf-8"))["sources"]
        pairs = [(k["method"], int(k["seed"])) for k in kept]
    except (ValueError, KeyError, TypeError) as e:  # unreadable: nothing here can say what it held
        return [f"its sources (unreadable: {type(e).__name__})"]
    here = {(m, s) for m, s, _ in found}
    return [f"{m} seed {s}" for m, s in pairs if (m, s) not in here]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="fmnist_study")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps of the transferred examples")
    parser.add_argument("--n", type=int, default=1000, help="test points (the table's: 1,000 from 9,000)")
    parser.add_argument("--start", type=int, default=9000)
    parser.add_argument(
        "--momentum",
        type=float,
        default=0.0,
        help="MI-FGSM momentum of the source attack (0: plain PGD; 1.0 is the paper's); results kept apart",
    )
    parser.add_argument(
        "--ensemble-n",
        type=int,
        default=0,
        help="also attack each target with the ensemble of every other kept model, on this many points (0: off)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--table-only", action="store_true", help="rewrite results/<study>_transfer.md from the JSON; attack nothing"
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="write the results even though models of the kept results are missing here (they lose those rows)",
    )
    args = parser.parse_args(argv)
    if not (args.momentum >= 0 and math.isfinite(args.momentum)):
        parser.error(f"--momentum must be a finite number >= 0, got {args.momentum}")
    name = result_name(args.study, args.momentum)
    if args.table_only:
        src = RESULTS / f"{name}.json"
        if not src.is_file():
            print(f"no transfer results at {src}", file=sys.stderr)
            return 2
        text = markdown(json.loads(src.read_text(encoding="utf-8")))
        (RESULTS / f"{name}.md").write_text(text, encoding="utf-8")
        print(text)
        return 0
    if not 0 <= args.ensemble_n <= args.n:
        parser.error(f"--ensemble-n must lie in [0, --n={args.n}]")
    from metaat.runtime import environment, set_threads

    set_threads(args.threads)
    found = models_of(args.study)
    if not found:
        print(f"no finished models under {RUNS / args.study}", file=sys.stderr)
        return 2
    missing = missing_sources(name, found)
    if missing and not args.replace:
        print(
            f"results/{name}.json covers models not kept here ({', '.join(missing)}): a run now would replace "
            f"it with fewer rows. Train those models again first, or pass --replace to overwrite it anyway",
            file=sys.stderr,
        )
        return 2
    t_start = time.perf_counter()
    sets: dict[tuple[str, int], dict[str, Any]] = {}
    made: dict[str, float] = {}
    for method, seed, model_dir in found:
        for threat in THREATS:
            adv, seconds = adversarial_set(args.study, method, seed, model_dir, threat, args)
            sets.setdefault((method, seed), {})[threat] = adv
            if seconds:
                made[f"{method} seed {seed} {threat}"] = round(seconds, 1)
                print(f"[transfer] {method} seed {seed} {threat}: {seconds:.0f} s", file=sys.stderr, flush=True)
    targets, not_targets = [], {}
    for method, seed, model_dir in found:
        if seed != 0:
            continue
        found_state = target_state(args.study, method, seed, model_dir)
        if isinstance(found_state, str):
            not_targets[f"{method} seed {seed}"] = found_state
            continue
        state, basis = found_state
        row = {**evaluate_target((method, seed, model_dir), state, sets), "white_box_from": basis}
        if args.ensemble_n:
            members = [m for m in found if (m[0], m[1]) != (method, seed)]
            by_threat = {}
            for threat in THREATS:
                adv, seconds = ensemble_set(args.study, (method, seed), members, threat, args)
                by_threat[threat] = adv
                if seconds:
                    made[f"ensemble for {method} seed {seed} {threat}"] = round(seconds, 1)
                    print(f"[transfer] ensemble for {method} {threat}: {seconds:.0f} s", file=sys.stderr, flush=True)
            row["ensemble"] = score_ensemble((method, seed, model_dir), state, by_threat)
        targets.append(row)
    out = {
        "study": args.study,
        "steps": args.steps,
        "momentum": args.momentum,
        "n": args.n,
        "ensemble_n": args.ensemble_n,
        "start": args.start,
        "threads": args.threads,
        "environment": environment(),
        "sources": [
            {"method": m, "seed": s, "sets": {t: a.meta["sha256"] for t, a in sets[(m, s)].items()}}
            for m, s, _ in found
        ],
        "not_targets": not_targets,
        "seconds_making_sets_this_run": made,
        "targets": targets,
        "seconds_this_run": round(time.perf_counter() - t_start, 1),
    }
    dst = write_result(name, out)
    (RESULTS / f"{name}.md").write_text(markdown(out), encoding="utf-8")
    print(markdown(out))
    print(f"wrote {dst}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
