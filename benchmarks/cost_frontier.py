"""A study's cost frontier, and its tables kept apart by protocol (``make_tables.py`` calls both).

**Frontier.** One point per row (its mean over seeds): union robust accuracy against forward+backward
passes per training example, and against wall time per training epoch, the Pareto front marked. A row is
on the front when no other row is at least as cheap and at least as robust, and strictly better in one of
the two; the front is drawn as a staircase (the best union reached at each cost). Seconds per epoch are
compared only between rows trained on the same kind of machine as most rows (CPU or GPU): the others are
drawn hollow and left out of that panel's front. Written as ``<study>_frontier.svg`` beside
``<study>_union_vs_cost.svg``.

**Protocol groups.** Records scored on other points or under another suite are never averaged together:
a study's records split by (split, suite), validation before test, each group with a table of its own and
a caption saying which points, which attacks and which split chose its rows. A study with one group (every
study without ``--holdout`` or ``--suite apgd-worst``) renders as before, without a caption.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SPLIT_ORDER = {"val": 0, "test": 1}
SUITE_ORDER = {"apgd": 0, "apgd-worst": 1}
SUITE_TEXT = {
    "apgd": "APGD-CE + APGD-T",
    "apgd-worst": "the worst case of APGD-CE + APGD-T and an extra pass (APGD-CE with 5 restarts, then APGD-T, "
    "a second seed) on the points it left robust",
    "quick": "metaat's own PGD (quick suite)",
}


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether (cost, accuracy) ``a`` dominates ``b``: no more costly, no less accurate, better in one."""
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, accuracy) points no other point dominates, by cost then accuracy."""
    front = [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda i: points[i])


def machine(record: dict[str, Any]) -> str:
    """The kind of machine a record's model trained on (its seconds compare only with the same kind's)."""
    return "GPU" if str(record.get("device", "cpu")).startswith("cuda") else "CPU"


def _panels(rows: list[dict[str, Any]]) -> list[tuple[str, str, list[float | None], list[bool]]]:
    """(key, axis label, cost per row, whether the row takes part in that panel's front) per panel."""
    kinds = [{machine(r) for r in row["records"]} for row in rows]
    counts = {k: sum(kind == {k} for kind in kinds) for k in ("CPU", "GPU")}
    main = max(counts, key=lambda k: counts[k])
    passes = [statistics.mean(row["passes"]) if row["passes"] else None for row in rows]
    seconds = [statistics.mean(row["seconds"]) if all(s is not None for s in row["seconds"]) else None for row in rows]
    return [
        ("passes", "training cost: forward+backward passes per example (log)", passes, [True] * len(rows)),
        (
            "seconds",
            f"wall time per training epoch, s (log; {main}-trained rows)",
            seconds,
            [k == {main} for k in kinds],
        ),
    ]


def fronts(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Per panel (``passes``, ``seconds``), the rows on its Pareto front, cheapest first."""
    out = {}
    for key, _, cost, compared in _panels(rows):
        taking = [i for i, row in enumerate(rows) if compared[i] and cost[i] is not None]
        points = [(float(cost[i] or 0.0), statistics.mean(rows[i]["union"])) for i in taking]
        out[key] = [rows[taking[j]]["method"] for j in pareto_front(points)]
    return out


def front_text(rows: list[dict[str, Any]]) -> str:
    """One sentence naming the rows on each front."""
    found = fronts(rows)
    return (
        f"Pareto front of union against passes per example: {', '.join(found['passes']) or '–'}; against wall time "
        f"per epoch (rows trained on the same kind of machine as most): {', '.join(found['seconds']) or '–'}."
    )


def plot_frontier(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Write the two-panel frontier of ``rows`` (``make_tables.aggregate``'s) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    found = fronts(rows)
    for ax, (key, label, cost, compared) in zip(axes, _panels(rows), strict=True):
        on_front = set(found[key])
        for row, c, ok in zip(rows, cost, compared, strict=True):
            if c is None:
                continue
            y, front = 100 * statistics.mean(row["union"]), row["method"] in on_front
            colour = "tab:red" if front else "tab:blue"
            ax.scatter(c, y, s=44 if front else 26, facecolors=colour if ok else "none", edgecolors=colour, zorder=3)
            style = {"fontsize": 7.5, "color": "tab:red"} if front else {"fontsize": 6, "color": "0.35"}
            ax.annotate(row["method"], (c, y), textcoords="offset points", xytext=(4, 3), **style)  # type: ignore[arg-type]
        if not all(compared):
            ax.scatter(
                [], [], s=26, facecolors="none", edgecolors="tab:blue", label="another kind of machine: not compared"
            )
        by_name = {row["method"]: (c, 100 * statistics.mean(row["union"])) for row, c in zip(rows, cost, strict=True)}
        xs, ys = zip(*(by_name[m] for m in found[key]), strict=True) if found[key] else ((), ())
        ax.plot(xs, ys, drawstyle="steps-post", color="tab:red", alpha=0.6, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("union robust accuracy (%)")
    for ax in axes:
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with plt.rc_context({"svg.hashsalt": "metaat"}):  # the same records give the same bytes
        fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)


def figures(study: str, rows: list[dict[str, Any]], union_vs_cost: str, frontier: str) -> str:
    """The page's figures (links relative to the page) and the fronts' sentence; empty below two rows."""
    if len(rows) < 2:
        return ""
    return (
        f"![union robust accuracy vs cost]({union_vs_cost})\n\n![{study}: cost frontier]({frontier})\n\n"
        f"{front_text(rows)}\n\n"
    )


def group_key(record: dict[str, Any]) -> tuple[str, str]:
    return str(record.get("split", "test")), str(record.get("suite", "apgd"))


def protocol_groups(records: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(caption, records) per (split, suite), validation first; one group gets no caption."""
    keys = sorted(
        {group_key(r) for r in records}, key=lambda k: (SPLIT_ORDER.get(k[0], 2), SUITE_ORDER.get(k[1], 2), k)
    )
    groups = [[r for r in records if group_key(r) == key] for key in keys]
    if len(groups) == 1:
        return [("", groups[0])]
    return [(caption(rs), rs) for rs in groups]


def summary_group(records: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """The records the README's summary of rows ``names`` reads: of the protocol groups holding every one
    of them, the last (test after validation, the worst case after ``apgd``); every record when none does."""
    covering = [rs for _, rs in protocol_groups(records) if set(names) <= {r["method"] for r in rs}]
    return covering[-1] if covering else records


def val_points(record: dict[str, Any]) -> str:
    """Which training images a validation record scored (the last ``train_holdout``, held out of training)."""
    first = 60_000 - int(record.get("train_holdout") or 0) + int(record.get("val_start") or 0)
    return f"training images {first:,}–{first + record['n'] - 1:,}, held out of training"


def caption(records: list[dict[str, Any]]) -> str:
    """Which points, which attacks and which split chose the rows of one group of records."""
    split, suite = group_key(records[0])
    r0, n = records[0], records[0]["n"]
    if split == "val":
        where = f"**Validation points** ({val_points(r0)})"
    else:
        start = int(r0.get("test_start") or 0)
        where = f"**Test points** {start:,}–{start + n - 1:,}"
    chosen: dict[str, list[str]] = {}
    for r in records:
        names = chosen.setdefault(str(r.get("chosen_on", "not recorded")), [])
        names += [] if r["method"] in names else [r["method"]]
    split_text = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(chosen.items()))
    said = any("chosen_on" in r for r in records)
    return f"{where}, {SUITE_TEXT.get(suite, suite)}." + (f" Rows chosen on — {split_text}." if said else "") + "\n\n"


def worst_table(records: list[dict[str, Any]]) -> str:
    """For ``apgd-worst`` records: per row and seed, the first pass's union, the worst case's, and the
    points the extra pass broke per threat and for the union (empty for other suites)."""
    worst = [r for r in records if r.get("extra_broken")]
    if not worst:
        return ""
    threats = [k for k in worst[0]["extra_broken"] if k != "union"]
    head = "| method | seed | union, first pass | union, worst case | " + " | ".join(
        f"broken by the extra pass: {t}" for t in [*threats, "union"]
    )
    lines = [head + " |", "|---|---:|---:|---:|" + "---:|" * (len(threats) + 1)]
    for r in sorted(worst, key=lambda r: (-r["extra_broken"]["union"], r["method"], r["seed"])):
        broken = " | ".join(str(r["extra_broken"].get(t, "–")) for t in [*threats, "union"])
        first = r["first_pass"]["robust"]["union"]
        lines.append(
            f"| {r['method']} | {r['seed']} | {100 * first:.1f} | {100 * r['robust']['union']:.1f} | {broken} |"
        )
    return "\n" + "\n".join(lines) + "\n"
