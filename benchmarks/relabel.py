"""Rename a study's rows when a default changes, so that every record keeps meaning what its name says.

    python benchmarks/relabel.py --study fmnist_study --previous-default metaat.pgd_every=4 \\
        metaat=metaat-v3 metaat-no-pgd=metaat metaat-v2=metaat-v2

A study row is a name in ``study.py``'s ``METHODS`` (defense + options). When a defense's default
changes, a row that relied on the old default now names another configuration, and its records would
no longer be reproduced by their command. This moves each ``OLD`` row's records to ``NEW`` — only
after checking, for every record, that its options under the previous defaults
(``--previous-default DEFENSE.OPTION=VALUE``) build exactly the configuration that ``NEW``'s options
build under the current code — together with its run, evidence and parked folders and the derived
files (``<study>_paired*.json``, ``<study>_transfer*.json``, ``<study>_monitor_gap.json``; rerun
``transfer.py --table-only`` for its Markdown). Each renamed record keeps its old name
in ``relabelled_from`` and its original command in ``original_command``; ``command`` names the new
row. ``NAME=NAME`` keeps a row's name and only writes its options as ``study.py`` now spells them
(an earlier default's row that now pins the changed option), the old ones kept in ``options_were``.
Pairs are applied at once, so ``a=b b=a`` swaps. Nothing is moved while a worker holds a piece's lock.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

import study as study_script  # RESULTS / RUNS read at call time (tests point them elsewhere)
from study import METHODS, atomic_write_json, claimed, is_claimed, load_records


def parse_default(text: str) -> tuple[str, str, Any]:
    """``metaat.learned_start=false`` -> ("metaat", "learned_start", False); values are JSON, else strings."""
    match = re.fullmatch(r"([\w-]+)\.(\w+)=(.*)", text)
    if match is None:
        raise ValueError(f"--previous-default {text!r}: expected DEFENSE.OPTION=VALUE, e.g. metaat.learned_start=false")
    defense, option, raw = match.groups()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return defense, option, value


def parse_pair(text: str) -> tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not old or not new:
        raise ValueError(f"{text!r}: expected OLD=NEW (two study row names)")
    return old, new


def config_of(defense: str, threats: list[str], options: dict[str, Any]) -> dict[str, Any]:
    """The full configuration ``defense`` builds from ``options`` under the current code."""
    import metaat.defenses as defenses

    return dataclasses.asdict(defenses.create(defense, threats, **options).config)


def command_for(command: str, old: str, new: str) -> str:
    """``command`` with ``old`` replaced by ``new`` in its ``--methods`` list (other rows untouched)."""

    def swap(match: re.Match[str]) -> str:
        names = [new if name == old else name for name in match.group(2).split(",")]
        return match.group(1) + ",".join(names)

    return re.sub(r"(--methods[ =])(\S+)", swap, command)


def check(records: list[dict[str, Any]], pairs: dict[str, str], previous: dict[str, dict[str, Any]]) -> list[str]:
    """Why the relabelling must not run (empty when it may): unknown rows, collisions, config changes."""
    problems = []
    names = {str(r["method"]) for r in records}
    for old, new in pairs.items():
        if new not in METHODS:
            problems.append(f"{new}: not a study row; valid: {', '.join(METHODS)}")
            continue
        if old not in names:
            problems.append(f"{old}: no record of this study has that name")
        if new in names and new not in pairs:
            problems.append(f"{new}: already has records (relabel them too, e.g. {new}=<another name>)")
        defense, threats, options = METHODS[new]
        for r in (r for r in records if r["method"] == old):
            where = f"{old} seed {r['seed']} ({r.get('suite')})"
            if r.get("defense", defense) != defense or list(r.get("train_threats", threats)) != list(threats):
                problems.append(f"{where}: trained {r.get('defense')} on {r.get('train_threats')}, {new} is {defense}")
                continue
            was = config_of(defense, list(threats), {**previous.get(defense, {}), **r.get("options", {})})
            now = config_of(defense, list(threats), dict(options))
            diff = sorted(k for k in was if was[k] != now.get(k))
            if diff:
                fields = ", ".join(f"{k} {was[k]!r} -> {now.get(k)!r}" for k in diff)
                problems.append(f"{where}: {new} builds another configuration ({fields})")
    return problems


def relabelled(r: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    if old == new:  # the same row, its options spelled as study.py now does
        return {**r, "options": dict(METHODS[new][2]), "options_were": r.get("options", {})}
    out = {**r, "method": new, "options": dict(METHODS[new][2])}
    out["relabelled_from"] = old if "relabelled_from" not in r else f"{old} (before that {r['relabelled_from']})"
    out.setdefault("original_command", r.get("command"))
    if r.get("command"):
        out["command"] = command_for(str(r["command"]), old, new)
    return out


NAME_FIELDS = ("method", "reference", "source")  # fields of derived files that hold a row's name
LABEL = re.compile(r"(.* for )(\S+)( seed \d+.*)")  # keys such as "ensemble for metaat seed 0 linf:0.1"


def rename_in(data: Any, pairs: dict[str, str]) -> Any:
    """Row names in a derived file's ``method`` / ``reference`` / ``source`` fields and in labels
    "... for ROW seed N ..." used as keys, at any depth."""

    def key(k: str) -> str:
        match = LABEL.fullmatch(k)
        return k if match is None else match.group(1) + pairs.get(match.group(2), match.group(2)) + match.group(3)

    if isinstance(data, list):
        return [rename_in(x, pairs) for x in data]
    if isinstance(data, dict):
        return {
            key(k): (pairs.get(v, v) if k in NAME_FIELDS and isinstance(v, str) else rename_in(v, pairs))
            for k, v in data.items()
        }
    return data


def move_all(folders: list[tuple[Path, Path]]) -> None:
    """Move each (src, dst) folder in two steps through a temporary name, so that swaps work."""
    staged = []
    for src, dst in folders:
        if src.exists():
            tmp = src.with_name(f".relabel-{src.name}")
            src.rename(tmp)
            staged.append((tmp, dst))
    for tmp, dst in staged:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--previous-default", action="append", default=[], metavar="DEFENSE.OPTION=VALUE")
    parser.add_argument("pairs", nargs="+", metavar="OLD=NEW")
    args = parser.parse_args(argv)
    try:
        pairs = dict(parse_pair(p) for p in args.pairs)
        previous: dict[str, dict[str, Any]] = {}
        for text in args.previous_default:
            defense, option, value = parse_default(text)
            previous.setdefault(defense, {})[option] = value
    except ValueError as exc:
        print(f"relabel: {exc}", file=sys.stderr)
        return 2
    results, runs = study_script.RESULTS, study_script.RUNS
    path = results / f"{args.study}.json"
    with claimed(runs / args.study / "records.lock"):
        try:
            records = load_records(path)
        except (OSError, ValueError) as exc:  # unreadable or damaged: nothing is touched
            print(f"relabel: {path}: {exc}", file=sys.stderr)
            return 2
        problems = check(records, pairs, previous)
        pieces = {
            (name, int(r["seed"]))
            for r in records
            if r["method"] in pairs
            for name in (r["method"], pairs[r["method"]])
        }
        problems += [
            f"{m} seed {s}: a worker holds its lock; stop it first"
            for m, s in sorted(pieces)
            if is_claimed(study_script.piece_lock(args.study, m, s))
        ]
        if problems:
            print(f"relabel: {args.study}: nothing changed", file=sys.stderr)
            for p in problems:
                print(f"  {p}", file=sys.stderr)
            return 1
        move_all(
            [(runs / args.study / old, runs / args.study / new) for old, new in pairs.items()]
            + [
                (results / "evidence" / args.study / old, results / "evidence" / args.study / new)
                for old, new in pairs.items()
            ]
            + [
                (study_script.PARKED / args.study / old, study_script.PARKED / args.study / new)
                for old, new in pairs.items()
            ]
        )
        monitor = results / f"{args.study}_monitor_gap.json"
        derived = [
            *sorted(results.glob(f"{args.study}_paired*.json")),
            *sorted(results.glob(f"{args.study}_transfer*.json")),
        ]
        for file in [*derived, *([monitor] if monitor.is_file() else [])]:
            atomic_write_json(file, rename_in(json.loads(file.read_text(encoding="utf-8")), pairs))
        paired = f"{args.study}_paired_vs_{{}}.json"  # a file named after its reference row follows it
        move_all([(results / paired.format(old), results / paired.format(new)) for old, new in pairs.items()])
        out = [relabelled(r, r["method"], pairs[r["method"]]) if r["method"] in pairs else r for r in records]
        atomic_write_json(path, {"study": args.study, "records": out})
    for old, new in pairs.items():
        print(f"[relabel] {args.study}: {old} -> {new} ({sum(r['method'] == old for r in records)} record(s))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
