"""Paired comparison of the sensor or text study's rows against one reference row, window by window.

    python benchmarks/domain_paired.py sensor --reference metaat
    python benchmarks/domain_paired.py text --reference metaat

Two rows' union accuracies on the same test points are not independent samples, so their difference
is judged point by point (as ``paired.py`` does for the Fashion-MNIST study). For every row of
``benchmarks/results/<study>_study.json`` whose reference row ran the same seed, this reads both
rows' evaluation state files (``runs/<study>_study/<row>/seed<k>/eval_state.json``, else the parked
copy under ``parked/<study>_study/``), checks each file's own digest, rebuilds each point's union flag
(clean-correct and robust under every threat), checks that it reproduces the record (points, clean
and union counts), and counts the points robust under both, only one, neither, with the exact
two-sided McNemar test on the discordant points. ``pooled`` adds the per-seed counts over the seeds
both rows ran (the same points, a different model per seed). Writes
``benchmarks/results/<study>_study_paired.json``; a row whose state file is gone or does not
reproduce its record is listed under ``skipped`` with the reason, never recomputed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from paired import compare, mcnemar_exact  # benchmarks/ is on the path as a script
from study import union_flags

ROOT = Path(__file__).resolve().parent


def state_file(study: str, key: str, root: Path = ROOT) -> Path | None:
    """Where row ``key`` (``method/seed<k>``)'s evaluation state lies: its run folder, else parked."""
    for base in (root / "runs" / f"{study}_study", root / "parked" / f"{study}_study"):
        path = base / key / "eval_state.json"
        if path.is_file():
            return path
    return None


def row_union(study: str, key: str, record: dict[str, Any], root: Path = ROOT) -> list[bool] | str:
    """Per-point union flags of one row, or why they cannot be used."""
    from metaat.eval.state import read_state

    path = state_file(study, key, root)
    if path is None:
        return "no evaluation state file (run folder and parked copy both absent)"
    try:
        state = read_state(path)
        flags = union_flags(state, list(state["fingerprint"]["threats"]))
    except (KeyError, ValueError) as err:
        return f"{path}: {err}"
    n, clean = len(flags), sum(c == "1" for c in state["clean"])
    if n != record["n"] or clean != round(record["clean"] * n) or sum(flags) != round(record["union"] * n):
        return f"{path} does not reproduce the record (n {n}, clean {clean}, union {sum(flags)})"
    return flags


def paired(study: str, reference: str, root: Path = ROOT) -> dict[str, Any]:
    """Every row against ``reference`` on the same seed's points; ``root`` holds results/, runs/, parked/."""
    records = json.loads((root / "results" / f"{study}_study.json").read_text(encoding="utf-8"))["rows"]
    unions: dict[str, list[bool]] = {}
    skipped: dict[str, str] = {}
    for key in sorted(records):
        got = row_union(study, key, records[key], root)
        if isinstance(got, str):
            skipped[key] = got
        else:
            unions[key] = got
    per_seed: list[dict[str, Any]] = []
    pooled: dict[str, dict[str, Any]] = {}
    for key in sorted(unions):
        method, seed = key.split("/")
        ref_key = f"{reference}/{seed}"
        if method == reference or ref_key not in unions:
            continue
        cmp = compare(unions[key], unions[ref_key])
        per_seed.append({"method": method, "seed": int(seed.removeprefix("seed")), **cmp})
        acc = pooled.setdefault(method, {"seeds": [], "n": 0, "only_method": 0, "only_reference": 0})
        acc["seeds"].append(int(seed.removeprefix("seed")))
        acc["n"] += cmp["n"]
        acc["only_method"] += cmp["only_method"]
        acc["only_reference"] += cmp["only_reference"]
    for acc in pooled.values():
        acc["difference_points"] = round(100 * (acc["only_method"] - acc["only_reference"]) / acc["n"], 2)
        acc["mcnemar_p"] = mcnemar_exact(acc["only_method"], acc["only_reference"])
    return {
        "command": "python benchmarks/domain_paired.py " + " ".join(sys.argv[1:]),
        "study": f"{study}_study",
        "reference": reference,
        "difference": "method minus reference, union robust accuracy in points",
        "per_seed": per_seed,
        "pooled": pooled,
        "skipped": skipped,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=("sensor", "text"))
    parser.add_argument("--reference", default="metaat")
    args = parser.parse_args(argv)
    out = paired(args.study, args.reference)
    path = ROOT / "results" / f"{args.study}_study_paired.json"
    path.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for method, acc in sorted(out["pooled"].items(), key=lambda kv: -kv[1]["difference_points"]):
        print(
            f"{method:16s} seeds {acc['seeds']}: {acc['difference_points']:+6.2f} pts vs {args.reference} "
            f"(only it {acc['only_method']}, only {args.reference} {acc['only_reference']}, "
            f"McNemar p {max(acc['mcnemar_p'], 1e-4):.4f}{' or less' if acc['mcnemar_p'] < 1e-4 else ''})"
        )
    for key, why in out["skipped"].items():
        print(f"skipped {key}: {why}")
    print(f"wrote {path.relative_to(ROOT.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
