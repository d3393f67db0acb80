"""What an honest evaluation costs: ``metaat eval`` of a PGD-trained ``cnn-small``, with and without
``--union-only``, and each attack's share of the wall time.

    python benchmarks/eval_cost.py                                # the PGD-AT model of benchmarks/pgd_at.py
    python benchmarks/eval_cost.py --model runs/X --n 1000 --threads 2 --suite apgd

Runs ``metaat eval MODEL --n N --suite SUITE --threads T`` in this process (threats linf:0.1,
l2:1.5, l1:10; unseen attacks and gradient-masking checks on, the defaults), once in full mode and
once with ``--union-only``. Each mode keeps its report and state file under
``benchmarks/runs/eval_cost/``, so a killed run resumes where it stopped (a resumed mode's
sub-attack split then covers its last invocation only). Recorded per mode: the wall time of every
stage (clean, each threat, examples, unseen, checks), the seconds of every reference sub-attack
(APGD-CE, APGD-T per threat, timed from the package's own log lines), their shares, and the
accuracies; the two modes' unions must agree. Output: ``benchmarks/results/eval_cost.json`` with
the command, hardware and sample count.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "benchmarks" / "runs" / "pgd_at"
DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "eval_cost.json"
WORK = ROOT / "benchmarks" / "runs" / "eval_cost"  # reports and resumable state files


def flatten(timings: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"threats": {"linf:0.1": 3.0}, "clean": 0.1}`` -> ``{"threat linf:0.1": 3.0, "clean": 0.1}``."""
    out: dict[str, float] = {}
    for key, value in timings.items():
        if isinstance(value, dict):
            out.update(flatten(value, "threat "))
        elif key != "total":
            out[prefix + key] = float(value)
    return out


def one_mode(model: str, n: int, suite: str, threads: int, union_only: bool, seed: int, work: Path) -> dict[str, Any]:
    from metaat.attacks.autoattack import SUB_ATTACK_SECONDS
    from metaat.cli import main as cli_main

    work.mkdir(parents=True, exist_ok=True)
    state = work / "state.json"
    resumed = state.exists()
    args = ["eval", model, "--n", str(n), "--suite", suite, "--threads", str(threads), "--seed", str(seed)]
    if union_only:
        args.append("--union-only")
    before = dict(SUB_ATTACK_SECONDS)
    start = time.perf_counter()
    try:
        cli_main([*args, "--out", str(work), "--state", str(state)])
    except SystemExit as done:
        if done.code not in (0, None):
            raise
    this_call = time.perf_counter() - start
    report = json.loads((work / "report.json").read_text(encoding="utf-8"))
    stages = flatten(report["timings"])
    # A resumed evaluation: stage times are kept in the state file, so their sum is the total.
    total = sum(stages.values()) if resumed else this_call
    sub = {k: v - before.get(k, 0.0) for k, v in SUB_ATTACK_SECONDS.items() if v - before.get(k, 0.0) > 0}
    return {
        "command": shlex.join(["metaat", *args]),
        "resumed": resumed,
        "wall_seconds": round(total, 2),
        "wall_seconds_this_invocation": round(this_call, 2),
        "stages_seconds": {k: round(v, 2) for k, v in stages.items()},
        "stages_share": {k: round(v / total, 3) for k, v in stages.items()},
        # measured in this invocation only (all of it unless resumed)
        "reference_sub_attack_seconds": {k: round(v, 2) for k, v in sorted(sub.items())},
        "reference_sub_attack_share_of_invocation": {k: round(v / this_call, 3) for k, v in sorted(sub.items())},
        "clean": report["clean"],
        "robust": report["robust"],
        "robust_upper_bound": report["robust_upper_bound"],
        "union": report["union"],
        "flagged_checks": [c["name"] for c in report["flagged"]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="run folder or model file")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--suite", default="apgd", choices=("quick", "apgd", "standard"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    from metaat.runtime import environment

    modes = {}
    for name, union_only in (("full", False), ("union_only", True)):
        print(f"[eval_cost] {name} ...", flush=True)
        work = WORK / f"{name}-n{args.n}-{args.suite}"
        modes[name] = one_mode(args.model, args.n, args.suite, args.threads, union_only, args.seed, work)
        print(f"[eval_cost] {name}: {modes[name]['wall_seconds']:.0f} s, union {modes[name]['union']}", flush=True)
    record = {
        "command": shlex.join(["python", "benchmarks/eval_cost.py", *(argv if argv is not None else sys.argv[1:])]),
        "model": args.model,
        "n": args.n,
        "suite": args.suite,
        "threads": args.threads,
        "seed": args.seed,
        "environment": environment(),
        "modes": modes,
        "union_only_speedup": round(modes["full"]["wall_seconds"] / modes["union_only"]["wall_seconds"], 2),
        "unions_agree": modes["full"]["union"] == modes["union_only"]["union"],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
