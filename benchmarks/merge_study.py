"""Bring the pieces another machine finished into this checkout's study: records this one lacks, with
the evidence that backs them, and (``--runs``) the run folders of pieces trained there.

    python benchmarks/merge_study.py /path/to/other/checkout --study fmnist_study
    python benchmarks/merge_study.py /tmp/unpacked --study fmnist_study --runs

``study.py`` runs wherever the repository does (``--device cuda`` on a GPU machine; several workers
per machine). The other side is a copy of the repository root holding its ``benchmarks/results`` and,
for ``--runs``, its ``benchmarks/runs`` (e.g. unpacked from a tarball that machine wrote). For each
record there that is not done here (same method, seed, epochs, subset, points and suite), the
record's evaluation state is read from its evidence or run folder and must reproduce the record's
union exactly (a record without a finished state, or one whose flags disagree with it, is refused and
named), and the record must be of a row here and name the preset that row trains (a record from a
checkout older than the presets gets its row's preset when its options are that preset's; any other
is refused and named); then the small files are copied into ``benchmarks/results/evidence`` and the
record is added under the study's records lock, exactly as ``study.py`` does for its own pieces.

``--runs`` also copies the run folder (model, logs, evaluation state; checkpoints left out) of every
piece whose training finished there, where this checkout has no finished model of it and no worker
here holds its lock. A piece whose evaluation was cut off there is then finished here by
``study.py``: give it the attack chunk the evaluation began with (``--eval-batch``; the state file's
fingerprint names it), and its record will say it trained on the other machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import study as study_script  # its RESULTS read at call time (tests point it elsewhere)
from study import (
    EVIDENCE_FILES,
    ROWS,
    add_record,
    claimed,
    done_keys,
    finished_state_in,
    keep_evidence,
    load_records,
    piece_lock,
    read_preset,
    record_key,
    record_state_path,
    reproduces,
    run_path,
)


def other_dirs(root: Path, study: str, method: str, seed: int) -> tuple[Path, Path]:
    """(evidence folder, run folder) of (method, seed) in the checkout at ``root``."""
    bench = root / "benchmarks"
    return (
        bench / "results" / "evidence" / study / method / f"seed{seed}",
        bench / "runs" / study / method / f"seed{seed}",
    )


def backing(root: Path, study: str, r: dict[str, Any]) -> Path:
    """The folder at ``root`` whose finished evaluation state reproduces record ``r``'s union;
    ValueError naming the record when there is none."""
    seen = []
    for base in other_dirs(root, study, r["method"], r["seed"]):
        found = finished_state_in(base, r, r["suite"])
        if found is None:
            continue
        if reproduces(r, *found):
            return base
        union = found[1]
        seen.append(f"{base}: union {sum(union) / len(union):.4f}")
    why = "; ".join(seen) or "no finished evaluation state in its evidence or run folder"
    raise ValueError(
        f"{r['method']} seed {r['seed']} ({r['suite']}): not merged, its record's union "
        f"{r['robust']['union']:.4f} is not backed ({why})"
    )


def with_preset(r: dict[str, Any]) -> dict[str, Any]:
    """Record ``r`` naming the preset its row trains here (a record from a checkout older than the presets
    names none: it gets its row's, when its options are the preset's); ValueError when the record is of
    no row here or names another preset."""
    name = f"{r['method']} seed {r['seed']} ({r['suite']})"
    preset = ROWS.get(r["method"])
    if preset is None:
        raise ValueError(f"{name}: not merged, no row {r['method']!r} here (a newer checkout's row?)")
    if "preset" in r:
        if r["preset"] != preset:
            raise ValueError(f"{name}: not merged, it names preset {r['preset']!r}; the row trains {preset!r} here")
        return r
    written = read_preset(preset)
    options = r.get("options", {})
    if {k: written["options"].get(k) for k in options} != options or r.get("defense", written["defense"]) != (
        written["defense"]
    ):
        raise ValueError(f"{name}: not merged, its defense or options are not those of preset {preset!r}")
    return {**r, "preset": preset}


def copy_run(src: Path, dst: Path) -> None:
    """The run folder's model, small files and evaluation states (checkpoints stay behind)."""
    tmp = dst.with_name(dst.name + ".merging")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copytree(src / "final", tmp / "final")
    for path in src.iterdir():
        if path.is_file() and (path.name in EVIDENCE_FILES or path.name.startswith("eval-")):
            shutil.copy2(path, tmp / path.name)
    shutil.rmtree(dst, ignore_errors=True)  # a part-trained folder here, superseded by a finished one
    tmp.rename(dst)


def merge(root: Path, study: str, runs: bool = False) -> dict[str, list[str]]:
    """Merge ``root``'s study into this checkout's; returns what was merged, copied, skipped and
    refused (a record no finished state backs: named, the others still merged)."""
    theirs = load_records(root / "benchmarks" / "results" / f"{study}.json")
    out = study_script.RESULTS / f"{study}.json"
    done = done_keys(load_records(out))
    report: dict[str, list[str]] = {"already here": [], "merged": [], "runs": [], "skipped": [], "refused": []}
    for r in theirs:
        if r.get("superseded"):
            continue
        name = f"{r['method']} seed {r['seed']} ({r['suite']})"
        if record_key(r) in done:
            report["already here"].append(name)
            continue
        try:
            r = with_preset(r)
            base = backing(root, study, r)
        except ValueError as exc:
            report["refused"].append(str(exc))
            continue
        keep_evidence(study, r["method"], r["seed"], [record_state_path(base, r, r["suite"])], src=base)
        add_record(out, study, r)
        done.add(record_key(r))
        report["merged"].append(name)
    if runs:
        for src in sorted((root / "benchmarks" / "runs" / study).glob("*/seed*")):
            if not src.is_dir() or not (src / "final").is_dir():
                continue
            method, seed = src.parent.name, int(src.name.removeprefix("seed"))
            dst = run_path(study, method, seed)
            if (dst / "final").is_dir():
                report["skipped"].append(f"{method} seed {seed}: a finished model here already")
                continue
            with claimed(piece_lock(study, method, seed), wait=False) as mine:
                if not mine:
                    report["skipped"].append(f"{method} seed {seed}: a worker here holds it")
                    continue
                copy_run(src, dst)
                report["runs"].append(f"{method} seed {seed}")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="the other checkout's root (holding benchmarks/results)")
    p.add_argument("--study", default="fmnist_study")
    p.add_argument("--runs", action="store_true", help="also copy run folders of pieces trained there")
    args = p.parse_args(argv)
    src = args.root / "benchmarks" / "results" / f"{args.study}.json"
    if not src.is_file():
        print(f"merge_study: no {src}", file=sys.stderr)
        return 2
    try:
        report = merge(args.root, args.study, runs=args.runs)
    except (OSError, ValueError) as exc:  # an unreadable records file: nothing was merged yet
        print(f"merge_study: {src}: {exc}", file=sys.stderr)
        return 2
    print(f"[merge] {len(report.pop('already here'))} record(s) already here")
    for what, names in report.items():
        for name in names:
            print(f"[merge] {what}: {name}", file=sys.stderr if what == "refused" else sys.stdout)
    return 1 if report["refused"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
