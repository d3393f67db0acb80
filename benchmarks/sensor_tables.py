"""The sensor benchmark's table and cost plot, regenerated from ``benchmarks/results/sensor_study.json``.

Writes the table between ``<!-- sensor-benchmark:start -->`` and ``<!-- sensor-benchmark:end -->`` in
``docs/domains/sensors.md`` and the plot (union robust accuracy against passes per example) to
``docs/domains/sensor_frontier.svg``. ``--check`` changes nothing and exits 1 when the page is stale.

    python benchmarks/sensor_tables.py            # regenerate
    python benchmarks/sensor_tables.py --check    # what tests/test_sensor_tables.py runs
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "sensor_study.json"
PAGE = ROOT / "docs" / "domains" / "sensors.md"
PLOT = ROOT / "docs" / "domains" / "sensor_frontier.svg"
START, END = "<!-- sensor-benchmark:start -->", "<!-- sensor-benchmark:end -->"
COMMAND = "python benchmarks/sensor_tables.py"


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


def table(records: dict[str, Any]) -> str:
    """The Markdown table: mean ± std over seeds, test subjects."""
    threats = list(records.get("protocol", {}).get("threats", []))
    head = ["method", "seeds", "clean", *threats, "union", "unseen mean", "passes/example", "s/epoch"]
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
            _pct([r["unseen_mean"] for r in rows if r.get("unseen_mean") is not None]),
            _num([r["passes_per_example"] for r in rows], 2),
            _num([r["seconds_per_epoch"] for r in rows]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    n = {r["n"] for rs in groups.values() for r in rs}
    hardware = sorted({r.get("hardware", "?") for rs in groups.values() for r in rs})
    note = (
        f"\n\nTest subjects only ({', '.join(map(str, sorted(n)))} windows), read once per row; sorted by union. "
        f"Hardware: {'; '.join(hardware)}. Records: `benchmarks/results/sensor_study.json` "
        f"(command: `{records.get('command', '?')}`); this table: `{COMMAND}`."
    )
    return "\n".join(lines) + note


def plot_svg(records: dict[str, Any]) -> str:
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
    ax.set_title("watch, fcn-small: robustness against training cost", fontsize=8)
    buf = io.StringIO()
    with plt.rc_context({"svg.hashsalt": "sensor", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return buf.getvalue()


def render_page(page: str, records: dict[str, Any]) -> str:
    if START not in page or END not in page:
        raise SystemExit(f"{PAGE}: add the markers {START} and {END} where the table goes")
    head, rest = page.split(START, 1)
    _, tail = rest.split(END, 1)
    body = table(records) + "\n\n![Union against cost](sensor_frontier.svg)"
    return f"{head}{START}\n{body}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from the records")
    args = parser.parse_args(argv)
    records = json.loads(RESULTS.read_text(encoding="utf-8"))
    page = PAGE.read_text(encoding="utf-8")
    new = render_page(page, records)
    if args.check:
        if new != page:
            print(f"{PAGE} is stale: run {COMMAND}")
            return 1
        return 0
    PAGE.write_text(new, encoding="utf-8")
    PLOT.write_text(plot_svg(records), encoding="utf-8")
    print(f"wrote {PAGE} and {PLOT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
