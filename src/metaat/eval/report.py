"""The report: one JSON-ready dict (a RobustBench-like model card) from which ``report.json``,
``report.md`` and ``report.html`` are all rendered, so their numbers cannot drift apart.

Accuracies are stored as fractions in [0, 1]; the renderers show them as percentages with two
decimals through :func:`fmt_pct` (upper bounds prefixed with ``≤``).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from metaat.eval.evaluate import EvalResult
from metaat.runtime import environment

FORMAT = "metaat.report"
VERSION = 1
COST_KEYS = (
    "passes_per_example",
    "seconds_per_epoch",
    "train_seconds",
    "epochs",
    "attack_seconds",
    "update_seconds",
)


def fmt_pct(value: float | None, upper: bool = False) -> str:
    """``0.1234`` → ``"12.34"`` (``"≤ 12.34"`` for an upper bound, ``"—"`` for missing)."""
    if value is None:
        return "—"
    return f"{'≤ ' if upper else ''}{100 * value:.2f}"


def _numbers(record: dict[str, Any]) -> dict[str, Any]:
    """The cost fields of a record (top level, or its ``cost`` entry)."""
    cost = record.get("cost")
    merged = {**record, **(cost if isinstance(cost, dict) else {})}
    return {k: v for k in COST_KEYS if isinstance(v := merged.get(k), int | float) and not isinstance(v, bool)}


def _json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def read_cost(run_dir: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """Training cost of a run folder: the cost counters of ``summary.json`` (else of the last
    ``metrics.jsonl`` record that has them) plus seconds per epoch and epochs from the epoch records
    of ``metrics.jsonl`` (their ``epoch_seconds``). None when the folder records no cost."""
    if run_dir is None:
        return None
    root = Path(run_dir)
    cost: dict[str, Any] = {}
    records = _json_lines(root / "metrics.jsonl") if (root / "metrics.jsonl").is_file() else []
    for record in records:
        cost.update(_numbers(record))
    summary = root / "summary.json"
    if summary.is_file():
        try:
            data = json.loads(summary.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            data = None
        if isinstance(data, dict):
            cost.update(_numbers(data))
            if isinstance(data.get("epochs_completed"), int):
                cost["epochs"] = data["epochs_completed"]
    epochs = [float(r["epoch_seconds"]) for r in records if isinstance(r.get("epoch_seconds"), int | float)]
    if epochs:
        cost.setdefault("seconds_per_epoch", sum(epochs) / len(epochs))
        cost.setdefault("train_seconds", sum(epochs))
        cost.setdefault("epochs", len(epochs))
    return cost or None


def read_run_config(run_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The run's ``config.yaml`` as a dict ({} when the run has none).

    A damaged file is an error naming it, never an empty config: the evaluation would otherwise
    fall back to the default dataset without a word.
    """
    if run_dir is None:
        return {}
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is unreadable ({reason}); restore it from the run's checkpoint/state.json") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of options; got {type(data).__name__}")
    for key in ("data", "data_dir"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ValueError(f"{path}: {key} must be a string; got {data[key]!r}")
    return data


def build_report(
    result: EvalResult,
    *,
    model: dict[str, Any],
    dataset: dict[str, Any],
    run_dir: str | os.PathLike[str] | None = None,
    cost: dict[str, Any] | None = None,
    training_seed: int | None = None,
) -> dict[str, Any]:
    """The single report dict. ``model``: name, source, parameters, spec; ``dataset``: name, split, start."""
    body = result.to_dict()
    config = read_run_config(run_dir)
    if training_seed is None and isinstance(config.get("seed"), int):
        training_seed = config["seed"]
    training = {k: config[k] for k in ("defense", "model", "data", "threats", "epochs", "options") if k in config}
    checks = body["checks"]
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": str(run_dir) if run_dir is not None else None,
        "model": model,
        "training": training or None,
        "dataset": {**dataset, "n": result.n},
        "threats": body["threats"],
        "clean": body["clean"],
        "robust": body["robust"],
        "robust_upper_bound": body["robust_upper_bound"],
        "attacked": body["attacked"],
        "union": body["union"],
        "unseen": body["unseen"],
        "checks": checks,
        "flagged": [c for c in checks if c["status"] == "flagged"],
        "protocol": body["protocol"],
        "cost": cost if cost is not None else read_cost(run_dir),
        "seeds": {"evaluation": result.seed, "training": training_seed},
        "hardware": environment(),
        "timings": body["timings"],
        "examples": body["examples"],
    }


def headline_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the main table (shared by markdown and HTML): key, label, value, upper, attacked."""
    rows = [
        {"key": "clean", "label": "clean", "value": report["clean"], "upper": False, "attacked": report["dataset"]["n"]}
    ]
    for threat, value in report["robust"].items():
        rows.append(
            {
                "key": f"robust/{threat}",
                "label": threat,
                "value": value,
                "upper": bool(report["robust_upper_bound"].get(threat)),
                "attacked": report["attacked"].get(threat),
            }
        )
    rows.append(
        {"key": "union", "label": "union (all threats)", "value": report["union"], "upper": False, "attacked": None}
    )
    return rows


def unseen_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows (section, key, label, value) for every unseen-attack accuracy."""
    unseen = report.get("unseen") or {}
    rows: list[dict[str, Any]] = []
    for norm, points in (unseen.get("eps_sweep") or {}).get("curves", {}).items():
        for p in points:
            tag = " (evaluated)" if p.get("evaluated") else ""
            rows.append(
                {
                    "section": "eps sweep",
                    "key": f"sweep/{norm}:{p['eps']:g}",
                    "label": f"{norm}:{p['eps']:g}{tag}",
                    "value": p["accuracy"],
                }
            )
    if "spatial" in unseen:
        s = unseen["spatial"]
        rows.append(
            {
                "section": "spatial",
                "key": "spatial",
                "label": f"rotation ±{s['max_rotation']:g}°, translation ±{s['max_translation']:g} px "
                f"({s['rotations']}×{s['translations']}×{s['translations']} grid)",
                "value": s["accuracy"],
            }
        )
    if "corruptions" in unseen:
        for name, per in unseen["corruptions"]["accuracy"].items():
            for severity, value in per.items():
                rows.append(
                    {
                        "section": "corruptions",
                        "key": f"corruption/{name}/{severity}",
                        "label": f"{name}, severity {severity}",
                        "value": value,
                    }
                )
        rows.append(
            {
                "section": "corruptions",
                "key": "corruption/mean",
                "label": "mean over corruptions",
                "value": unseen["corruptions"]["mean"],
            }
        )
    for key, part in (unseen.get("domain") or {}).items():
        queries = f" ({part['queries']} queries per point)" if part.get("queries") is not None else ""
        rows.append(
            {"section": "domain", "key": f"domain/{key}", "label": part["label"] + queries, "value": part["accuracy"]}
        )
    if "universal" in unseen:
        u = unseen["universal"]
        for threat, value in u["perturbation"].items():
            rows.append(
                {
                    "section": "universal",
                    "key": f"universal/{threat}",
                    "label": f"universal perturbation {threat}",
                    "value": value,
                }
            )
        rows.append(
            {
                "section": "universal",
                "key": "universal/patch",
                "label": f"universal patch {u['patch']['size']}×{u['patch']['size']} px",
                "value": u["patch"]["accuracy"],
            }
        )
    return rows


def leaderboard_columns(threats: list[str], percent: str = "") -> list[str]:
    """Column titles of the leaderboard (markdown and HTML); ``percent`` is appended to accuracy columns."""
    accuracy = ["clean", *threats, "union"]
    return ["#", "run", "model", "defense", "data", "n", "suite", *[a + percent for a in accuracy]] + [
        "flags",
        "passes/example",
        "s/epoch",
    ]


def md_table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return out


def checks_summary(report: dict[str, Any]) -> str:
    flagged, total = len(report["flagged"]), len(report["checks"])
    if not total:
        return "Gradient-masking checks were not run."
    if flagged:
        return f"⚠ {flagged} of {total} gradient-masking checks FLAGGED — read them before trusting these numbers."
    return f"All {total} gradient-masking checks passed (or were not applicable)."


def training_text(report: dict[str, Any]) -> str:
    t = report.get("training") or {}
    if not t:
        return "unknown (no run config)"
    threats = ", ".join(t.get("threats") or []) or "—"
    return f"defense {t.get('defense', '?')} on {threats}, {t.get('epochs', '?')} epochs"


def protocol_text(report: dict[str, Any]) -> str:
    p = report["protocol"]
    ref = f"; reference package {p['reference_package']} {p['reference_version']}" if "reference_package" in p else ""
    mode = ", union-only mode (per-threat numbers after the first are upper bounds)" if p.get("union_only") else ""
    return f"suite {p['suite']}{ref}{mode}"


def points_text(dataset: dict[str, Any]) -> str:
    """``n = 1000 points``, naming the index range when the points do not start at the first one."""
    n, start = int(dataset["n"]), int(dataset.get("start") or 0)
    return f"n = {n} points" + (f" (indices {start}–{start + n - 1})" if start else "")


def render_markdown(report: dict[str, Any]) -> str:
    """``report.md`` from the report dict."""
    m, d = report["model"], report["dataset"]
    lines = [f"# Robustness report — {m.get('name', 'model')}", ""]
    if report.get("run"):
        lines.append(f"Run: `{report['run']}`  ")
    lines += [
        f"Model source: `{m.get('source')}`, {m.get('parameters', '?')} parameters  ",
        f"Data: {d['name']} {d.get('split', 'test')}, {points_text(d)}  ",
        f"Training: {training_text(report)}  ",
        f"Protocol: {protocol_text(report)}",
        "",
        f"**{checks_summary(report)}**",
        "",
    ]
    for c in report["flagged"]:
        where = f" ({c['threat']})" if c.get("threat") else ""
        lines.append(f"- **{c['name']}{where}**: {c['explanation']}")
    if report["flagged"]:
        lines.append("")
    lines += ["## Robust accuracy", ""]
    lines += md_table(
        ["metric", "accuracy (%)", "points attacked"],
        [
            [r["label"], fmt_pct(r["value"], r["upper"]), "—" if r["attacked"] is None else str(r["attacked"])]
            for r in headline_rows(report)
        ],
        "lrr",
    )
    lines += ["", "Attacks per threat:", ""]
    for threat, names in report["protocol"].get("attacks", {}).items():
        lines.append(f"- {threat}: " + "; ".join(names))
    urows = unseen_rows(report)
    if urows:
        lines += ["", "## Unseen attacks", ""]
        lines += md_table(
            ["attack", "setting", "accuracy (%)"],
            [[r["section"], r["label"], fmt_pct(r["value"])] for r in urows],
            "llr",
        )
    lines += ["", "## Gradient-masking checks", ""]
    if report["checks"]:
        lines += md_table(
            ["check", "threat", "status", "explanation"],
            [
                [
                    c["name"],
                    c.get("threat") or "—",
                    c["status"].upper() if c["status"] == "flagged" else c["status"],
                    c["explanation"],
                ]
                for c in report["checks"]
            ],
            "llll",
        )
    else:
        lines.append("Not run.")
    lines += ["", "## Cost", ""]
    cost = report.get("cost")
    if cost:
        lines += md_table(
            ["quantity", "value"], [[k, f"{v:g}" if isinstance(v, float) else str(v)] for k, v in cost.items()], "lr"
        )
    else:
        lines.append("No training cost recorded (no run summary or metrics with cost fields).")
    hw = report["hardware"]
    lines += [
        "",
        "## Reproducibility",
        "",
        f"- seeds: evaluation {report['seeds']['evaluation']}, training {report['seeds']['training']}",
        f"- hardware: {hw.get('hardware')}; torch {hw.get('torch')}, python {hw.get('python')}, "
        f"metaat {hw.get('metaat')}, pyautoattack {hw.get('pyautoattack')}",
        "- timings (s): " + ", ".join(f"{k} {v}" for k, v in _flat_timings(report["timings"]).items()),
        f"- created {report['created']}",
        "",
    ]
    return "\n".join(lines)


def _flat_timings(timings: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in timings.items():
        if isinstance(v, dict):
            out.update({f"{k}/{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out
