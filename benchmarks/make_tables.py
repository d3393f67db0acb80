"""Turn the study records into the docs' benchmark tables, the README's summary and the cost-vs-robustness plot.

    python benchmarks/make_tables.py --study fmnist_study --title "Full protocol" --page docs/studies/fmnist.md
    python benchmarks/make_tables.py --study fmnist_study --page README.md --rows metaat,sat,max
    python benchmarks/make_tables.py --study fmnist_study --check --page docs/studies/fmnist.md

Reads ``benchmarks/results/<study>.json`` (one record per method and seed, written by
``study.py``), aggregates mean ± std over seeds (headline records, ``--suite standard``, get a table
of their own and are never averaged with the per-threat rows), and writes ``benchmarks/results/<study>_table.md``,
``benchmarks/results/<study>_union_vs_cost.svg``, ``<study>_frontier.svg`` (``cost_frontier.py``: union against
passes and against wall time, Pareto front marked) and the section between the
``benchmark:start`` / ``benchmark:end`` markers of a Markdown page (``--page``, relative to the project
root; its links are written relative to that page, and a page inside ``docs/`` gets a copy of the plot
beside it, under ``figures/``, because the documentation site only serves files under ``docs/``).
``--rows`` writes the short summary instead (the named rows only: clean, union, passes per example),
which the README shows. Nothing here is typed by hand: every number comes from the records.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import cost_frontier  # benchmarks/ is on the path when run as a script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = "docs"  # pages under ROOT/DOCS get the plot copied beside them (the site serves nothing else)
DEFAULT_PAGE = "docs/studies/fmnist.md"
START, END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
TARGET_BASELINES = ("sat", "avg", "max", "msd")  # issue 4: metaat's union must reach the best of these


def mean_std(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    vals = [v * scale for v in values if v is not None]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def suite_of(record: dict[str, Any]) -> str:
    return str(record.get("suite", "apgd"))


def split_headline(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per-threat study records, headline records): ``--suite standard`` records are the headline
    protocol (full AutoAttack, usually ``--union-only``) and are never averaged with the study's
    APGD-CE + APGD-T rows."""
    study = [r for r in records if suite_of(r) != "standard"]
    headline = [r for r in records if suite_of(r) == "standard"]
    return study, headline


def headline_table(headline: list[dict[str, Any]], study: list[dict[str, Any]]) -> str:
    """One line per headline record, beside the same model's union under the study protocol."""
    per_threat = {(r["method"], r["seed"], r["epochs"], r["n"]): r for r in study}
    head = (
        "| method | seed | clean | union, AutoAttack standard | union, APGD-CE + APGD-T (same model, same points) "
        "| difference | test points | attacks |\n|---|---:|---:|---:|---:|---:|---:|---|\n"
    )
    lines = []
    for r in sorted(headline, key=lambda r: (-r["robust"]["union"], r["method"], r["seed"])):
        other = per_threat.get((r["method"], r["seed"], r["epochs"], r["n"]))
        # a headline run on a retrained model carries its own study-protocol rerun (study.py): that is
        # the same model's number; the per-threat record's is only when the rerun reproduced it
        rerun = r.get("study_protocol_rerun")
        same = rerun["robust"]["union"] if rerun else (other["robust"]["union"] if other else None)
        union = 100 * r["robust"]["union"]
        mark = "" if not rerun or rerun.get("matches_record") else " (retrained model)"
        ref = f"{100 * same:.1f}{mark}" if same is not None else "–"
        diff = f"{union - 100 * same:+.1f}" if same is not None else "–"
        mode = "union only" if (r.get("protocol") or {}).get("union_only") else "every threat"
        lines.append(
            f"| {r['method']} | {r['seed']} | {100 * r['clean']:.1f} | **{union:.1f}** | {ref} | {diff} | "
            f"{r['n']:,} | standard ({mode}) |"
        )
    return head + "\n".join(lines) + "\n"


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[r["method"]].append(r)
    rows = []
    for method, rs in groups.items():
        rows.append(
            {
                "method": method,
                "seeds": sorted(r["seed"] for r in rs),
                "clean": [r["clean"] for r in rs],
                "linf": [r["robust"]["linf"] for r in rs],
                "l2": [r["robust"]["l2"] for r in rs],
                "l1": [r["robust"]["l1"] for r in rs],
                "union": [r["robust"]["union"] for r in rs],
                "unseen": [(r.get("unseen") or {}).get("mean") for r in rs],
                "passes": [r["passes_per_example"] for r in rs],
                "seconds": [r["seconds_per_epoch"] for r in rs],
                "presets": sorted({str(r["preset"]) for r in rs if r.get("preset")}),
                "records": rs,
            }
        )
    rows.sort(key=lambda row: -statistics.mean(row["union"]))
    return rows


def reference_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best target baseline: the highest mean union among sat / avg / max / msd, compared on the
    seeds they all ran (a baseline with an extra, harder seed is not penalised for it)."""
    candidates = [row for row in rows if row["method"] in TARGET_BASELINES]
    if not candidates:
        return None
    shared = set.intersection(*(set(row["seeds"]) for row in candidates))

    def score(row: dict[str, Any]) -> float:
        values = [r["robust"]["union"] for r in row["records"] if not shared or r["seed"] in shared]
        return statistics.mean(values)

    return max(candidates, key=score)


def paired_delta(row: dict[str, Any], reference: dict[str, Any]) -> str:
    """Union minus the reference's union on the seeds both ran, in points: ``+1.2 ± 0.5 (3)``.

    Seeds differ a lot (one seed is 1–6 points harder for every method), so a row is compared to the
    reference seed by seed, never across different seed sets.
    """
    if row is reference:
        return "–"
    ref = {r["seed"]: r["robust"]["union"] for r in reference["records"]}
    diffs = [100 * (r["robust"]["union"] - ref[r["seed"]]) for r in row["records"] if r["seed"] in ref]
    if not diffs:
        return "–"
    if len(diffs) == 1:
        return f"{diffs[0]:+.1f} (1)"
    return f"{statistics.mean(diffs):+.1f} ± {statistics.stdev(diffs):.1f} ({len(diffs)})"


def _presets(row: dict[str, Any]) -> str:
    """The preset(s) a row's records say trained them (``configs/presets/<name>.yaml``), or ``–``."""
    return ", ".join(f"`{name}`" for name in row["presets"]) or "–"


def table(rows: list[dict[str, Any]]) -> str:
    reference = reference_row(rows)
    delta = f" | Δ union vs {reference['method']} (same seeds)" if reference else ""
    presets = any(row["presets"] for row in rows)  # a column once records name the preset they trained
    head = (
        f"| method | clean | L∞ 0.1 | L2 1.5 | L1 10 | union | unseen | passes / example | s / epoch | seeds{delta}"
        + (" | preset" if presets else "")
        + " |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        + ("---:|" if reference else "")
        + ("---|" if presets else "")
        + "\n"
    )
    lines = []
    for row in rows:
        lines.append(
            f"| {row['method']} | {mean_std(row['clean'])} | {mean_std(row['linf'])} | {mean_std(row['l2'])} | "
            f"{mean_std(row['l1'])} | **{mean_std(row['union'])}** | {mean_std(row['unseen'])} | "
            f"{mean_std(row['passes'], 1, 2)} | "
            f"{mean_std(row['seconds'], 1, 0)}{_gpu_mark(row['records'])} | {', '.join(map(str, row['seeds']))} |"
            + (f" {paired_delta(row, reference)} |" if reference else "")
            + (f" {_presets(row)} |" if presets else "")
        )
    return head + "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row in rows:
        px, py = statistics.mean(row["passes"]), 100 * statistics.mean(row["union"])
        ax.scatter(px, py, s=36, color="tab:red" if row["method"].startswith("metaat") else "tab:blue")
        ax.annotate(row["method"], (px, py), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training cost: forward+backward passes per example (log)")
    ax.set_ylabel("union robust accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    # a fixed hash salt and no date: the same records give the same bytes, so git sees only real changes
    with plt.rc_context({"svg.hashsalt": "metaat"}):
        fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)


def _train_threats(records: list[dict[str, Any]]) -> str:
    """Which methods trained on which threats, grouped (every record keeps its own list)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for r in records:
        key = ", ".join(r.get("train_threats") or [])
        if r["method"] not in groups[key]:
            groups[key].append(r["method"])
    common = max(groups, key=lambda k: len(groups[k]))
    others = "; ".join(f"{', '.join(f'`{m}`' for m in ms)} on {k}" for k, ms in groups.items() if k != common)
    return f"methods train on {common}" + (f", except {others}" if others else "")


def _unseen_points(records: list[dict[str, Any]]) -> str:
    """The unseen summaries' point counts, as recorded (``–`` when none has one yet)."""
    counts = sorted({r["unseen"]["n"] for r in records if r.get("unseen")})
    return " / ".join(f"{n:,}" for n in counts) or "–"


def _trained_on_gpu(r: dict[str, Any]) -> bool:
    return str(r.get("device", "cpu")).startswith("cuda")


def _gpu_mark(records: list[dict[str, Any]]) -> str:
    """`` (GPU)`` after a row's seconds when any of its records trained on a GPU (not comparable with CPU rows)."""
    return " (GPU)" if any(map(_trained_on_gpu, records)) else ""


def _where(r: dict[str, Any]) -> str:
    torch = r["environment"]["torch"]
    chunk = f", attack chunks of {r['eval_chunk']:,}" if r.get("eval_chunk", 128) != 128 else ""
    return f"{r['hardware']}, torch {torch}{chunk}"


def _hardware(records: list[dict[str, Any]]) -> str:
    """Where most records ran, and the records that ran elsewhere (other threads, a GPU), grouped and named."""
    groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        groups[_where(r)][r["method"]].append(r["seed"])
    main = max(groups, key=lambda h: sum(map(len, groups[h].values())))
    others = [
        "; ".join(f"{m} {', '.join(map(str, sorted(seeds)))}" for m, seeds in sorted(names.items()))
        + ("" if where.startswith("trained ") else " on")  # "pgd-l2 0, 1 trained on X, evaluated on Y"
        + f" {where}"
        for where, names in groups.items()
        if where != main
    ]
    return main + (f" (except {'; '.join(others)})" if others else "")


def _gpu_note(records: list[dict[str, Any]]) -> str:
    if not any(map(_trained_on_gpu, records)):
        return ""
    return (
        " Rows marked (GPU) trained on the GPU named above, several study processes sharing it: their "
        "seconds per epoch are not comparable with the CPU rows'."
    )


def _points(r: dict[str, Any]) -> str:
    """Which test points a record was scored on."""
    start = int(r.get("test_start") or 0)
    if r.get("split") == "val":
        return f"validation points ({cost_frontier.val_points(r)})"
    if not start:
        return f"the first {r['n']:,} test points"
    return f"test points {start:,}–{start + r['n'] - 1:,} (held out from every tuning run, probe and monitor)"


def describe(records: list[dict[str, Any]]) -> str:
    r0 = records[0]
    subset = r0.get("train_subset")
    data = f"the first {subset:,} training images" if subset else "all 60,000 training images"
    suites = sorted({r["suite"] for r in records})
    one_split = len({r.get("split", "test") for r in records}) == 1  # else: validation and test points
    points = _points(r0) if one_split else "the points each table names"
    protocol = {
        "apgd": "the reference AutoAttack package's APGD-CE + APGD-T (pyautoattack "
        + str(r0.get("protocol", {}).get("reference_version", r0["environment"].get("pyautoattack")))
        + ") per threat",
        "standard": "the reference AutoAttack `standard` version per threat",
        "quick": "metaat's own PGD (quick suite — monitoring only, not a headline protocol)",
        "apgd-worst": cost_frontier.SUITE_TEXT["apgd-worst"] + " per threat",
    }
    epochs = sorted({r["epochs"] for r in records})
    return (
        f"`cnn-small` on Fashion-MNIST, {data}, {', '.join(map(str, epochs))} epoch(s), batch 128, Adam one-cycle; "
        f"robust accuracy on {points} under {'; '.join(protocol[s] for s in suites)}; "
        f"union = per-example AND over L∞ 0.1, L2 1.5, L1 10; {_train_threats(records)}. "
        f"Unseen = mean of four attacks no method trained on "
        f"(PGD-20 at twice each radius, rotation ±15° / translation ±2 px, common corruptions, a universal "
        f"patch) on the first {_unseen_points(records)} of those points (`benchmarks/unseen_summary.py`; "
        f"metaat's own attacks, "
        f"a secondary number; mean over the seeds that have one). Rows with one seed ran seed 0 only: "
        f"compare rows on the same seeds. Hardware: {_hardware(records)}; "
        f"metaat {r0['metaat_version']}; "
        f"seconds per epoch (of the images trained on) are "
        f"attack + update time measured while other jobs shared the machine (compare passes per example "
        f"for cost; `benchmarks/train_speed.py` times methods side by side).{_gpu_note(records)} "
        f"Every record in the JSON keeps the "
        f"command that produced it, e.g. `{r0['command']}`."
    )


def _link(path: Path, folder: Path) -> str:
    """``path`` as a link from a Markdown file in ``folder`` (forward slashes on every OS)."""
    return Path(os.path.relpath(path, folder)).as_posix()


def _figure_path(study: str, here: Path) -> Path:
    """Where a page in folder ``here`` finds the plot: a copy under ``figures/`` for a docs page, the
    results file otherwise."""
    svg = RESULTS / f"{study}_union_vs_cost.svg"
    inside_docs = (ROOT / DOCS).resolve() in (here.resolve(), *here.resolve().parents)
    return here / "figures" / svg.name if inside_docs else svg


def section(study: str, write: bool = True, page: Path | None = None) -> tuple[str, str]:
    """(the study's table as Markdown, its page text); with ``write``, the table and plot files too.

    ``page`` is the Markdown file the text goes into (default: the docs' study page): links are
    written relative to its folder."""
    here = (page or ROOT / DEFAULT_PAGE).parent
    src = RESULTS / f"{study}.json"
    every = json.loads(src.read_text(encoding="utf-8"))["records"]
    kept = [r for r in every if not r.get("superseded")]  # kept in the JSON with the reason, not shown
    records, headline = split_headline(kept)
    groups = cost_frontier.protocol_groups(records) if records else []  # never averaged together
    rows = aggregate(max((rs for _, rs in groups), key=lambda rs: len({r["method"] for r in rs}), default=[]))
    md = "\n".join(cap + table(aggregate(rs)) + cost_frontier.worst_table(rs) for cap, rs in groups)
    if headline:
        md += (
            "\nHeadline protocol: the reference AutoAttack `standard` version (APGD-CE, APGD-T, FAB-T, "
            "Square) per threat, beside the study protocol's number for the same model:\n\n"
            + headline_table(headline, [r for r in records if cost_frontier.group_key(r) == ("test", "apgd")])
        )
    svg, front = RESULTS / f"{study}_union_vs_cost.svg", RESULTS / f"{study}_frontier.svg"
    figure_path = _figure_path(study, here)
    if write:
        (RESULTS / f"{study}_table.md").write_text(md, encoding="utf-8")
        plot(rows, svg, f"{study}: union robust accuracy vs training cost")
        cost_frontier.plot_frontier(rows, front, f"{study}: union robust accuracy vs cost, Pareto front in red")
        if figure_path != svg and len(rows) > 1:
            figure_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(svg, figure_path)
            shutil.copyfile(front, figure_path.with_name(front.name))
    links = _link(figure_path, here), _link(figure_path.with_name(front.name), here)
    figure = cost_frontier.figures(study, rows, *links)
    gone = len(every) - len(kept)
    note = f" ({gone} superseded record(s) stay in that file, each saying why, and are not shown.)" if gone else ""
    head = describe(records or headline) if kept else "No record on the current protocol yet."
    text = f"{head}\n\n{md}\n{figure}Records: `{_link(src, here)}`.{note}"
    return md, text


def summary_table(rows: list[dict[str, Any]], names: list[str]) -> str:
    """The README's short table: the named rows, in the order of their mean union, with clean and union
    robust accuracy (mean ± std over seeds), passes per example, the seeds and, once records name it,
    the preset that trained each row."""
    by_name = {row["method"]: row for row in rows}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(f"no records for {', '.join(missing)}; rows with records: {', '.join(by_name)}")
    shown = [row for row in rows if row["method"] in names]
    presets = any(row["presets"] for row in shown)
    head = "| method | clean | union | passes / example | seeds |" + (" preset |" if presets else "")
    head += "\n|---|---:|---:|---:|---|" + ("---|" if presets else "") + "\n"
    lines = [
        f"| `{row['method']}` | {mean_std(row['clean'])} | **{mean_std(row['union'])}** | "
        f"{statistics.mean(row['passes']):g} | {', '.join(map(str, row['seeds']))} |"
        + (f" {_presets(row)} |" if presets else "")
        for row in shown
    ]
    return head + "\n".join(lines) + "\n"


def summary(study: str, names: list[str]) -> str:
    """The README's text for ``study``: one wrapped sentence saying what was measured, and the short table."""
    every = json.loads((RESULTS / f"{study}.json").read_text(encoding="utf-8"))["records"]
    records = cost_frontier.summary_group(split_headline([r for r in every if not r.get("superseded")])[0], names)
    r0, suite = records[0], suite_of(records[0])
    attacks = "the reference APGD-CE + APGD-T" if suite == "apgd" else cost_frontier.SUITE_TEXT.get(suite, suite)
    subset = r0.get("train_subset")
    data = f"the first {subset:,} training images" if subset else "all 60,000 training images"
    epochs = ", ".join(map(str, sorted({r["epochs"] for r in records})))
    seeds = ", ".join(map(str, sorted({r["seed"] for r in records})))
    lead = (
        f"`cnn-small` on Fashion-MNIST ({data}, {epochs} epochs, seeds {seeds}); robust accuracy (%) on "
        f"{_points(r0)} under {attacks} per threat, union = per-example AND over "
        f"L∞ 0.1, L2 1.5 and L1 10; {_train_threats([r for r in records if r['method'] in names])}; "
        f"cost in forward + backward passes per training example."
    )
    return _wrap(lead) + "\n\n" + summary_table(aggregate(records), names).rstrip("\n")


def _wrap(text: str, width: int = 120) -> str:
    """A paragraph wrapped at ``width`` without splitting words or hyphenated names."""
    return textwrap.fill(text, width=width, break_long_words=False, break_on_hyphens=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--study",
        action="append",
        default=None,
        help="a results name (repeat for several: each gets its own README subsection, in order)",
    )
    p.add_argument("--title", action="append", default=None, help="a heading per --study, in the same order")
    p.add_argument(
        "--page",
        "--readme",
        dest="page",
        default=DEFAULT_PAGE,
        help="the Markdown file (relative to the project root) whose benchmark:start/end section is written",
    )
    p.add_argument(
        "--rows",
        default=None,
        help="comma-separated rows: write the README's short summary of these rows instead of the full tables",
    )
    p.add_argument("--no-readme", "--no-page", dest="no_readme", action="store_true", help="write the table files only")
    p.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when the page's section differs from what the records give",
    )
    args = p.parse_args(argv)
    studies = args.study or ["fmnist_study"]
    titles = args.title or []
    if titles and len(titles) != len(studies):
        p.error(f"{len(titles)} --title for {len(studies)} --study; give one per study or none")
    if args.rows and (len(studies) > 1 or titles):
        p.error("--rows summarises one study, without --title")
    readme = ROOT / args.page
    if not readme.is_file() and (args.check or not args.no_readme):
        p.error(f"no file {readme}; --page names a Markdown file under {ROOT}")
    missing = [s for s in studies if not (RESULTS / f"{s}.json").is_file()]
    if missing:
        known = sorted(f.stem for f in RESULTS.glob("*.json") if '"records"' in f.read_text(encoding="utf-8"))
        p.error(f"no records for {', '.join(missing)} in {RESULTS}; studies with records: {', '.join(known) or 'none'}")
    shown = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--check"]
    command = ("python benchmarks/make_tables.py " + " ".join(shlex.quote(a) for a in shown)).strip()
    parts = []
    if args.rows:
        try:
            parts.append(summary(studies[0], [n.strip() for n in args.rows.split(",") if n.strip()]))
        except ValueError as exc:
            p.error(str(exc))
        parts.append(_wrap(f"Regenerate this section: `{command}`."))
    else:
        for i, study in enumerate(studies):
            md, text = section(study, write=not args.check, page=readme)
            if not args.check:
                print(md)
            if len(studies) > 1 or titles:
                title = titles[i] if titles else f"`{study}`"
                text = f"### {title}\n\n{text}"
            parts.append(text)
        parts.append(f"Regenerate this section: `{command}`.")
    block = "\n\n".join(parts)
    if args.no_readme and not args.check:
        return 0
    body = readme.read_text(encoding="utf-8")
    if START not in body or END not in body:
        if args.check:
            print(f"{readme} has no {START} ... {END} section", file=sys.stderr)
            return 1
        return 0
    head, rest = body.split(START, 1)
    current, tail = rest.split(END, 1)
    if args.check:
        if current.strip() == block.strip():
            print(f"{args.page}'s benchmark section matches the records")
            return 0
        old, new = current.strip().splitlines(), block.strip().splitlines()
        diff = [f"- {a}\n+ {b}" for a, b in zip(old, new, strict=False) if a != b][:3]
        print(
            f"{args.page}'s benchmark section differs from the records ({len(old)} vs {len(new)} lines); first "
            f"differences:\n" + "\n".join(d[:400] for d in diff) + f"\nrun: {command}",
            file=sys.stderr,
        )
        return 1
    readme.write_text(f"{head}{START}\n{block}\n{END}{tail}", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
