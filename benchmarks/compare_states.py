"""Two evaluation state files of the same points, point by point: does an evaluation carry across
devices, attack chunk sizes or package versions?

    python benchmarks/compare_states.py A.state.json B.state.json [--threat linf:0.1]

Each file is read (its content digest checked) and reduced to per-point flags: clean-correct and
robust under ``--threat`` (or under every threat both evaluated: the union). Prints how many points
are robust under both, under one only, and the exact McNemar p of the disagreement; with ``--json``
the same as JSON. Both files must cover the same number of points; their fingerprints' ``data``
digests are compared and a mismatch is an error (other points, not another evaluation of them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from paired import compare
from study import union_flags

from metaat.eval.state import read_state


def flags(state: dict[str, Any], threats: list[str]) -> list[bool]:
    """Per point: clean-correct and robust under each of ``threats`` (as the state's own mode says)."""
    union_only = bool(state["fingerprint"].get("union_only"))
    every = list(state["fingerprint"]["threats"])
    if union_only and threats != every[: len(threats)]:
        raise ValueError("a union-only state can only be read for its first threats, in its order")
    return union_flags(state, threats, union_only=union_only)


def compare_states(a: dict[str, Any], b: dict[str, Any], threat: str | None = None) -> dict[str, Any]:
    """The point-by-point comparison of two finished states (``threat``: one threat, else the threats
    both evaluated, in ``a``'s order)."""
    da, db = a["fingerprint"].get("data"), b["fingerprint"].get("data")
    if da != db:
        raise ValueError(f"the two states scored different points (data digests {da} and {db})")
    shared = [t for t in a["fingerprint"]["threats"] if t in b["fingerprint"]["threats"]]
    threats = [threat] if threat else shared
    if not threats or any(t not in shared for t in threats):
        raise ValueError(f"threat(s) {threats} not evaluated by both; both have: {', '.join(shared) or 'none'}")
    fa, fb = flags(a, threats), flags(b, threats)
    clean = sum(x != y for x, y in zip(a["clean"], b["clean"], strict=True))
    return {
        "threats": threats,
        "n": len(fa),
        "robust_a": sum(fa) / len(fa),
        "robust_b": sum(fb) / len(fb),
        "clean_disagreements": clean,
        **compare(fa, fb),
        "chunks": [a["fingerprint"].get("chunk"), b["fingerprint"].get("chunk")],
        "models": [a["fingerprint"].get("model"), b["fingerprint"].get("model")],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--threat", default=None, help="one threat (default: the union of the threats both evaluated)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        out = compare_states(read_state(args.a), read_state(args.b), args.threat)
    except (OSError, ValueError, KeyError) as exc:
        print(f"compare_states: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    same_model = "same model" if out["models"][0] == out["models"][1] else "DIFFERENT models"
    print(
        f"{' + '.join(out['threats'])} on {out['n']} points ({same_model}; chunks {out['chunks'][0]} / "
        f"{out['chunks'][1]}): A {100 * out['robust_a']:.1f} %, B {100 * out['robust_b']:.1f} %; robust under "
        f"both {out['both']}, A only {out['only_method']}, B only {out['only_reference']}, neither "
        f"{out['neither']}; McNemar p = {out['mcnemar_p']:.4f}; clean flags differ on {out['clean_disagreements']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
