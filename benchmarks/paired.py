"""Paired comparison of two methods on the same test points: who is robust where the other is not.

    python benchmarks/paired.py --study fmnist_study --reference max
    python benchmarks/paired.py --study fmnist_study --reference sat-pgd10   # a preset: the row that trains it
    python benchmarks/paired.py --study fmnist_holdout5000 --reference sat-l1x2 --split test --suite apgd-worst

``--reference`` names a study row, or the preset (``configs/presets``) that one row of the study's
records trains; each output row names both sides' rows and presets.

Two rows' union accuracies on the same 1,000 points are not independent samples, so their
difference is best judged point by point. For every record of ``benchmarks/results/<study>.json``
(``suite: apgd``, not superseded) whose reference row ran the same seed, this reads both runs'
evaluation state files (``runs/<study>/<method>/seed<k>/eval-apgd-<n>[-from<start>].state.json``,
the per-point robust flags the evaluation wrote as it went; the copy under
``results/evidence/<study>/...`` when the run folder is gone), checks each file's own digest,
rebuilds each point's union flag (clean-correct and robust under every threat), checks that it
reproduces the record's union, and counts the points robust under both, under only one, under
neither. The exact two-sided McNemar test on the discordant points says how likely a gap that
large is if the two were equally robust.
For every headline record (``suite: standard``, the full AutoAttack run union-only on the same
model and points) it also rebuilds the headline run's per-point union and lists, under
``headline``, the points only one of the two protocols broke and the per-point worst case of both.
Writes ``benchmarks/results/<study>_paired.json`` (``<study>_paired_vs_<reference>.json`` for a
reference other than ``max``; ``--suite`` and ``--split`` pick the records of another suite, e.g.
``apgd-worst``, or of a holdout study's validation points, and add ``_<suite>`` / ``_val`` to the name).
A row or headline entry whose state files are gone from both places
(records made before the evidence was kept, on a machine since replaced) is carried over from the
file's previous version, marked ``kept_from`` with the time that version was computed, and listed
under ``skipped`` with the reason; it is never recomputed from anything else.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from monitor_gap import previous_output, study_records, write_result  # benchmarks/ is on the path as a script
from study import finished_state_in, reproduces, run_dirs


def headline_agreement(standard: list[bool], study: list[bool]) -> dict[str, Any]:
    """The headline run (full AutoAttack) against the study protocol (APGD-CE + APGD-T) on one model:
    which points each left robust, and the per-point worst case of the two."""
    n = len(study)
    worst = [a and b for a, b in zip(standard, study, strict=True)]
    return {
        "n": n,
        "union_standard": sum(standard) / n,
        "union_study_protocol": sum(study) / n,
        "union_worst_case": sum(worst) / n,
        "broken_only_by_standard": sum(b and not a for a, b in zip(standard, study, strict=True)),
        "broken_only_by_study_protocol": sum(a and not b for a, b in zip(standard, study, strict=True)),
    }


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: the discordant counts ``b`` and ``c`` under Binomial(b+c, 1/2)."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare(a: list[bool], ref: list[bool]) -> dict[str, Any]:
    """Counts of the four cells and the paired difference (a − ref) in points, with its test."""
    both = sum(x and y for x, y in zip(a, ref, strict=True))
    only_a = sum(x and not y for x, y in zip(a, ref, strict=True))
    only_ref = sum(y and not x for x, y in zip(a, ref, strict=True))
    n = len(a)
    return {
        "n": n,
        "both": both,
        "only_method": only_a,
        "only_reference": only_ref,
        "neither": n - both - only_a - only_ref,
        "difference_points": round(100 * (only_a - only_ref) / n, 2),
        "mcnemar_p": round(mcnemar_exact(only_a, only_ref), 4),
    }


def finished_state(study: str, r: dict[str, Any], suite: str = "apgd") -> tuple[dict[str, Any], list[bool]] | None:
    """The finished evaluation state of record ``r``'s model and its per-point union: from the run
    folder, else the kept evidence copy, whichever is complete (a run folder re-evaluating the same
    piece holds an unfinished state); None when neither is. A damaged or edited file raises."""
    for base in run_dirs(study, r["method"], r["seed"]):
        found = finished_state_in(base, r, suite)
        if found is not None:
            return found
    return None


def carried(previous: dict[str, Any], key: str, keep: Any) -> list[dict[str, Any]]:
    """Entries of ``previous[key]`` that ``keep`` accepts, marked with when they were computed."""
    when = previous.get("finished", "an earlier run")
    return [{**e, "kept_from": e.get("kept_from", when)} for e in previous.get(key, []) if keep(e)]


def reference_row(name: str, preset: dict[str, Any]) -> str | None:
    """The row ``name`` stands for: itself when rows ``preset`` (row -> preset) has it, else the one row
    whose preset it is; None when there is no such row, or several."""
    if name in preset:
        return name
    rows = [row for row, p in preset.items() if p == name]
    return rows[0] if len(rows) == 1 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="fmnist_study")
    parser.add_argument("--reference", default="max", help="the row every other row is compared with")
    parser.add_argument("--suite", default="apgd", choices=("apgd", "apgd-worst"), help="the records' suite")
    parser.add_argument("--split", default="test", choices=("test", "val"), help="their points (val: a holdout study)")
    args = parser.parse_args(argv)
    every = study_records(args.study)
    if every is None:
        return 2
    records = [r for r in every if r.get("suite") == args.suite and r.get("split", "test") == args.split]
    methods = sorted({str(r["method"]) for r in records})
    preset = {str(r["method"]): r.get("preset") for r in records}  # a row's records all name its preset
    reference = reference_row(args.reference, preset)
    if reference is None:
        print(
            f"paired: no {args.study} record of --reference {args.reference!r} (a row, or the preset of one row); "
            f"valid: {', '.join(methods)}",
            file=sys.stderr,
        )
        return 2
    args.reference = reference
    flags: dict[tuple[str, int], list[bool]] = {}  # per-point unions that reproduce their record
    models: dict[tuple[str, int], tuple[str | None, list[bool]]] = {}  # every state read: model digest, union
    skipped = []
    kind = ("" if args.suite == "apgd" else f"_{args.suite}") + ("" if args.split == "test" else f"_{args.split}")
    name = f"{args.study}_paired{kind}" + ("" if args.reference == "max" else f"_vs_{args.reference}")
    for r in records:
        found = finished_state(args.study, r, args.suite)
        if found is None:
            skipped.append(f"{r['method']} seed {r['seed']}: no finished state file in its run folder or evidence")
            continue
        state, union = found
        models[(r["method"], r["seed"])] = (state["fingerprint"].get("model"), union)
        if not reproduces(r, state, union):
            # a retrained model's evaluation (study.py's study_protocol_rerun) that did not reproduce
            # the record: good for its own headline comparison, not for the record's pairs
            skipped.append(
                f"{r['method']} seed {r['seed']}: the state's union {sum(union) / len(union):.3f} differs from the "
                f"record's {r['robust']['union']:.3f} (another model); left out of the pairs"
            )
            continue
        flags[(r["method"], r["seed"])] = union
    rows = []
    for (method, seed), union in sorted(flags.items()):
        ref = flags.get((args.reference, seed))
        if method == args.reference or ref is None:
            continue
        names = {"preset": preset[method], "reference_preset": preset[args.reference]}
        rows.append({"method": method, "reference": args.reference, "seed": seed, **names, **compare(union, ref)})
    previous = previous_output(name)
    current = {(str(r["method"]), int(r["seed"])) for r in records}
    done = {(row["method"], row["seed"]) for row in rows}
    # a pair whose per-point flags are gone keeps its earlier result (both rows still current records)
    rows += carried(
        previous,
        "rows",
        lambda e: (
            e.get("reference") == args.reference
            and (e["method"], e["seed"]) not in done
            and {(e["method"], e["seed"]), (args.reference, e["seed"])} <= current
            and not {(e["method"], e["seed"]), (args.reference, e["seed"])} <= set(flags)
        ),
    )
    rows.sort(key=lambda e: (e["method"], e["seed"]))
    headline = []
    headline_records = study_records(args.study, headline=True) or []
    for r in headline_records:
        found = finished_state(args.study, r, "standard")
        if found is None or (r["method"], r["seed"]) not in models:
            skipped.append(f"{r['method']} seed {r['seed']} headline: no finished state or no study-protocol flags")
            continue
        state, standard = found
        if not reproduces(r, state, standard):
            raise ValueError(f"{r['method']} seed {r['seed']}: the headline state's union differs from the record's")
        digest, study_flags = models[(r["method"], r["seed"])]
        if digest != state["fingerprint"].get("model"):
            skipped.append(f"{r['method']} seed {r['seed']} headline: the two protocols scored different models")
            continue
        headline.append({"method": r["method"], "seed": r["seed"], **headline_agreement(standard, study_flags)})
    done = {(h["method"], h["seed"]) for h in headline}
    wanted = {(str(r["method"]), int(r["seed"])) for r in headline_records}
    headline += carried(previous, "headline", lambda e: (e["method"], e["seed"]) in wanted - done)
    out = {
        "study": args.study,
        "what": "per-point union robustness of each row against the reference row on the same seed and points",
        "rows": rows,
        "headline": headline,
        "skipped": skipped,
    }
    # max is the default reference; another reference gets its own file beside it
    dst = write_result(name, out)
    for row in rows:
        print(
            f"{row['method']} vs {row['reference']} seed {row['seed']}: {row['difference_points']:+.1f} points "
            f"(only {row['method']} {row['only_method']}, only {row['reference']} {row['only_reference']} "
            f"of {row['n']}; McNemar p = {row['mcnemar_p']:.4f})"
            + (f" [kept from {row['kept_from']}]" if "kept_from" in row else "")
        )
    for h in headline:
        print(
            f"{h['method']} seed {h['seed']} headline: AutoAttack standard {100 * h['union_standard']:.1f} %, "
            f"APGD-CE + APGD-T {100 * h['union_study_protocol']:.1f} %, worst case {100 * h['union_worst_case']:.1f} % "
            f"(broken only by standard {h['broken_only_by_standard']}, only by APGD-CE + APGD-T "
            f"{h['broken_only_by_study_protocol']})" + (f" [kept from {h['kept_from']}]" if "kept_from" in h else "")
        )
    print(f"wrote {dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
