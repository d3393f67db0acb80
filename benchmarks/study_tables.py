"""The domain benchmarks' tables and cost plots, regenerated from their records.

``sensors``: ``benchmarks/results/sensor_study.json`` → the table between ``<!-- sensor-benchmark:start
-->`` and ``<!-- sensor-benchmark:end -->`` in ``docs/domains/sensors.md`` and
``docs/domains/sensor_frontier.svg``; ``text``: ``benchmarks/results/text_study.json`` → the
``text-benchmark`` markers in ``docs/domains/text.md`` and ``docs/domains/text_frontier.svg``. The plot
is union robust accuracy against passes per example. ``--check`` changes nothing and exits 1 when a
page is stale.

    python benchmarks/study_tables.py                 # regenerate every study that has records
    python benchmarks/study_tables.py --check         # what tests/test_study_tables.py runs
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python benchmarks/study_tables.py"


def _mean_unseen(row: dict[str, Any]) -> float | None:
    return row.get("unseen_mean")


def _unseen(name: str) -> Any:
    return lambda row: (row.get("unseen") or {}).get(name)


class Study(NamedTuple):
    """Where one benchmark's records, page and plot live, and its extra columns."""

    name: str
    results: Path
    page: Path
    plot: Path
    threats_key: str
    points: str  # what a test point is called in the note ("windows", "snippets")
    split: str  # which points the table reads
    title: str
    extra: tuple[tuple[str, Any], ...]

    @property
    def start(self) -> str:
        return f"<!-- {self.name}-benchmark:start -->"

    @property
    def end(self) -> str:
        return f"<!-- {self.name}-benchmark:end -->"


DOCS = ROOT / "docs" / "domains"
STUDIES: dict[str, Study] = {
    "sensor": Study(
        "sensor",
        ROOT / "benchmarks" / "results" / "sensor_study.json",
        DOCS / "sensors.md",
        DOCS / "sensor_frontier.svg",
        "threats",
        "windows",
        "Test subjects only",
        "watch, fcn-small: robustness against training cost",
        (("unseen mean", _mean_unseen),),
    ),
    "text": Study(
        "text",
        ROOT / "benchmarks" / "results" / "text_study.json",
        DOCS / "text.md",
        DOCS / "text_frontier.svg",
        "eval_threats",
        "snippets",
        "First test snippets only",
        "MR, word-CNN: robustness against training cost",
        (("unseen nbr:2", _unseen("nbr:2")), ("certified (IBP)", lambda r: r.get("certified_syn"))),
    ),
}


def _pct(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def _num(values: list[float], digits: int = 1) -> str:
    return f"{statistics.fmean(values):.{digits}f}" if values else "–"


def grouped(records: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Rows per method, in the study's method order (first appearance)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in records.get("rows", {}).values():
        out.setdefault(row["method"], []).append(row)
    return out


def table(records: dict[str, Any], study: Study) -> str:
    """The Markdown table: mean ± std over seeds."""
    threats = list(records.get("protocol", {}).get(study.threats_key, []))
    extra = [name for name, _ in study.extra]
    head = ["method", "seeds", "clean", *threats, "union", *extra, "passes/example", "s/epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|"]
    groups = grouped(records)
    order = sorted(groups, key=lambda m: -statistics.fmean(r["union"] for r in groups[m]))
    for method in order:
        rows = groups[method]
        cells = [
            f"`{method}`",
            ",".join(str(r["seed"]) for r in sorted(rows, key=lambda r: r["seed"])),
            _pct([r["clean"] for r in rows]),
            *[_pct([r["robust"][t] for r in rows if t in r["robust"]]) for t in threats],
            _pct([r["union"] for r in rows]),
            *[_pct([v for v in map(fn, rows) if v is not None]) for _, fn in study.extra],
            _num([r["passes_per_example"] for r in rows], 2),
            _num([r["seconds_per_epoch"] for r in rows]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    n = {r["n"] for rs in groups.values() for r in rs}
    hardware = sorted({r.get("hardware", "?") for rs in groups.values() for r in rs})
    note = (
        f"\n\n{study.split} ({', '.join(map(str, sorted(n)))} {study.points}), read once per row; sorted by union. "
        f"Hardware: {'; '.join(hardware)}. Records: `{study.results.relative_to(ROOT)}` "
        f"(command: `{records.get('command', '?')}`); this table: `{COMMAND}`."
    )
    return "\n".join(lines) + note


def plot_svg(records: dict[str, Any], study: Study) -> str:
    """Union robust accuracy against passes per example, one point per method (mean over seeds)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = grouped(records)
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    points = []
    for method, rows in groups.items():
        cost = statistics.fmean(r["passes_per_example"] for r in rows)
        union = 100 * statistics.fmean(r["union"] for r in rows)
        points.append((cost, union, method))
        ax.scatter([cost], [union], color="#c0392b" if method.startswith("metaat") else "#1f4e79", s=18)
        ax.annotate(method, (cost, union), fontsize=6, xytext=(3, 2), textcoords="offset points")
    front, best = [], -1.0
    for cost, union, _ in sorted(points):
        if union > best:
            front.append((cost, union))
            best = union
    if front:
        ax.step([c for c, _ in front], [u for _, u in front], where="post", color="#999", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("forward+backward passes per training example")
    ax.set_ylabel("union robust accuracy (%)")
    ax.set_title(study.title, fontsize=8)
    buf = io.StringIO()
    with plt.rc_context({"svg.hashsalt": study.name, "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return buf.getvalue()


def render_page(page: str, records: dict[str, Any], study: Study) -> str:
    if study.start not in page or study.end not in page:
        raise SystemExit(f"{study.page}: add the markers {study.start} and {study.end} where the table goes")
    head, rest = page.split(study.start, 1)
    _, tail = rest.split(study.end, 1)
    body = table(records, study) + f"\n\n![Union against cost]({study.plot.name})"
    return f"{head}{study.start}\n{body}\n{study.end}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="*", default=list(STUDIES), help=f"of {', '.join(STUDIES)}")
    parser.add_argument("--check", action="store_true", help="exit 1 if a page differs from its records")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.studies) - set(STUDIES))
    if unknown:
        raise SystemExit(f"unknown study {', '.join(unknown)}; valid: {', '.join(STUDIES)}")
    status = 0
    for name in args.studies:
        study = STUDIES[name]
        if not study.results.exists():
            continue
        records = json.loads(study.results.read_text(encoding="utf-8"))
        page = study.page.read_text(encoding="utf-8")
        new = render_page(page, records, study)
        if args.check:
            if new != page:
                print(f"{study.page} is stale: run {COMMAND}")
                status = 1
            continue
        study.page.write_text(new, encoding="utf-8")
        study.plot.write_text(plot_svg(records, study), encoding="utf-8")
        print(f"wrote {study.page} and {study.plot}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
