"""``metaat compare``: a leaderboard of run reports, sorted by union robust accuracy, with cost.

Rows come straight from each run's ``report.json``; nothing is recomputed. Runs evaluated with a
different dataset, suite or number of points are still listed, with a warning that their numbers
are not directly comparable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metaat.eval.report import FORMAT, fmt_pct, leaderboard_columns, md_table


def find_report(path: str | os.PathLike[str]) -> Path:
    """``report.json`` of a run folder (or the file itself); a one-line error when there is none."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    candidate = p if p.is_file() else p / "report.json"
    if not candidate.is_file():
        raise FileNotFoundError(f"no report.json in {p}; run `metaat eval {p}` first")
    return candidate


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    file = find_report(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: not a readable report ({err})") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{file}: not a metaat report")
    problem = report_problem(data)
    if problem:
        raise ValueError(f"{file}: a damaged metaat report ({problem})")
    return data


def _is_fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def report_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with the fields ``compare`` reads from a report; None when they are sound."""
    threats = data.get("threats")
    if not isinstance(threats, list) or not all(isinstance(t, str) for t in threats):
        return "threats must be a list of threat names"
    for key in ("model", "dataset", "protocol"):
        if not isinstance(data.get(key), dict):
            return f"{key} must be an object"
    if not isinstance(data["dataset"].get("name"), str) or not isinstance(data["dataset"].get("n"), int):
        return "dataset must name the data and its number of points"
    for key in ("clean", "union"):
        if not _is_fraction(data.get(key)):
            return f"{key} must be a fraction in [0, 1]; got {data.get(key)!r}"
    robust = data.get("robust")
    if not isinstance(robust, dict) or not all(_is_fraction(v) for v in robust.values()):
        return "robust must map each threat to a fraction in [0, 1]"
    return None


def leaderboard(paths: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    """Rows (one per report) sorted by union robust accuracy, best first; the threats seen in any.

    Run folders without a report are skipped (listed under ``skipped``) and other files ignored, so
    ``metaat compare runs/*`` works while some runs are still unevaluated; no report at all is an error.
    """
    if not paths:
        raise ValueError("compare needs at least one run folder or report.json")
    rows, threats, skipped = [], [], []
    for path in paths:
        p = Path(path).expanduser()
        if p.is_file() and p.suffix != ".json":
            continue  # e.g. runs/leaderboard.md from an earlier compare
        try:
            report = load_report(p)
        except FileNotFoundError as err:
            skipped.append(str(err))
            continue
        for t in report["threats"]:
            if t not in threats:
                threats.append(t)
        cost = report.get("cost") or {}
        name = Path(report.get("run") or find_report(p).parent).name
        rows.append(
            {
                "run": name,
                "path": str(find_report(p)),
                "model": report["model"].get("name"),
                "defense": (report.get("training") or {}).get("defense"),
                "dataset": report["dataset"]["name"],
                "n": report["dataset"]["n"],
                "suite": report["protocol"].get("suite"),
                "clean": report["clean"],
                "robust": report["robust"],
                "upper_bound": report.get("robust_upper_bound", {}),
                "union": report["union"],
                "flagged": len(report.get("flagged", [])),
                "passes_per_example": cost.get("passes_per_example"),
                "seconds_per_epoch": cost.get("seconds_per_epoch"),
                "threats": report["threats"],
            }
        )
    if not rows:
        raise FileNotFoundError(
            skipped[0] if len(skipped) == 1 else "no report.json in any of the given paths; run `metaat eval RUN` first"
        )
    rows.sort(key=lambda r: (-r["union"], -r["clean"], r["run"]))
    warnings = []
    for field, what in (("dataset", "datasets"), ("suite", "attack suites"), ("n", "numbers of points")):
        if len({r[field] for r in rows}) > 1:
            warnings.append(f"Runs use different {what}: their numbers are not directly comparable.")
    if len({tuple(r["threats"]) for r in rows}) > 1:
        warnings.append("Runs were evaluated on different threat sets: their union numbers differ in meaning.")
    warnings += [f"Skipped: {reason}." for reason in skipped]
    return {"threats": threats, "rows": rows, "warnings": warnings, "skipped": skipped}


def render_leaderboard_markdown(board: dict[str, Any]) -> str:
    threats = board["threats"]
    header = leaderboard_columns(threats, " (%)")
    rows = []
    for rank, r in enumerate(board["rows"], 1):
        rows.append(
            [
                str(rank),
                r["run"],
                str(r["model"]),
                str(r["defense"] or "—"),
                str(r["dataset"]),
                str(r["n"]),
                str(r["suite"]),
                fmt_pct(r["clean"]),
                *[fmt_pct(r["robust"].get(t), bool(r["upper_bound"].get(t))) for t in threats],
                fmt_pct(r["union"]),
                str(r["flagged"]),
                _fmt(r["passes_per_example"]),
                _fmt(r["seconds_per_epoch"]),
            ]
        )
    lines = ["# Leaderboard — union robust accuracy", ""]
    lines += [f"> {w}" for w in board["warnings"]]
    if board["warnings"]:
        lines.append("")
    lines += md_table(header, rows, "rllllrl" + "r" * (len(header) - 7))
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"
