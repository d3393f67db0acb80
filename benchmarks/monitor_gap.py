"""How much the per-epoch PGD-20 monitor flatters each model against the reference attacks.

    python benchmarks/monitor_gap.py --study fmnist_small

Every study run logs, after each epoch, metaat's own PGD-20 robust accuracy on 200 test points (its
``metrics.jsonl``, ``eval.robust/<threat>``). The study record holds the reference package's number
(APGD-CE + APGD-T) for the same final model on ``n`` points. This script puts them side by side for
every record of ``benchmarks/results/<study>.json`` (headline ``suite: standard`` and superseded records
left out) whose ``metrics.jsonl``, logged to the record's last epoch, is in its run folder or its
kept evidence (``results/evidence/<study>/<method>/seed<k>``), and writes
``benchmarks/results/<study>_monitor_gap.json``:
one row per (method, seed) with both numbers per threat and their difference (monitor − reference,
in points), and the range of those differences per threat. The monitor reads the first 200 test
points; the full protocol's records score test points 9,000-9,999, so there the gap also holds the
difference between two samples of points. A row whose log is gone from both places (records made
before the evidence was kept, on a machine since replaced) is carried over from the file's previous
version, marked ``kept_from``. Why it matters: a training-time monitor is not an
evaluation, and this file says by how much.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from study import finished_state_in, reproduces, run_dirs  # benchmarks/ is on the path when run as a script

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
KEYS = {"linf": "linf:0.1", "l2": "l2:1.5", "l1": "l1:10", "union": "union"}


def last_monitor(metrics: Path) -> dict[str, Any] | None:
    """The last epoch's ``eval`` block of a run's ``metrics.jsonl`` (None when no epoch logged one)."""
    last = None
    for line in metrics.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if isinstance(row.get("eval"), dict) and "epoch" in row:
            last = row
    return last


def evaluated_here(base: Path, record: dict[str, Any]) -> bool:
    """Whether ``base`` (a run folder or its evidence) holds the finished evaluation that made
    ``record``: the same clean and union counts. A piece retrained after its run folder was lost holds
    another model, whose log must not be set against the record's numbers."""
    found = finished_state_in(base, record, record["suite"])
    return found is not None and reproduces(record, *found)


def finished_monitor(study: str, record: dict[str, Any]) -> dict[str, Any] | None:
    """The last monitor of the run that made ``record``: from its run folder's ``metrics.jsonl``, else
    its kept evidence — only where the record's own evaluation lies beside it (:func:`evaluated_here`)
    and the log has reached the record's epoch count."""
    for base in run_dirs(study, record["method"], record["seed"]):
        metrics = base / "metrics.jsonl"
        monitor = last_monitor(metrics) if metrics.is_file() else None
        if monitor is None or int(monitor["epoch"]) != int(record["epochs"]):
            continue
        if evaluated_here(base, record):
            return monitor
    return None


def gap_row(record: dict[str, Any], monitor: dict[str, Any]) -> dict[str, Any]:
    """Monitor vs reference for one record, in percent; a threat the monitor did not log is left out."""
    ev = monitor["eval"]
    threats: dict[str, Any] = {}
    for name, key in KEYS.items():
        ref = record["robust"].get(name)
        mon = ev.get(f"robust/{key}")
        if ref is None or mon is None:
            continue
        threats[name] = {
            "monitor": round(100 * mon, 2),
            "reference": round(100 * ref, 2),
            "gap": round(100 * (mon - ref), 2),
        }
    return {
        "method": record["method"],
        "seed": record["seed"],
        "epoch": monitor["epoch"],
        "monitor_n": int(ev.get("n", 0)),
        "reference_n": record["n"],
        "threats": threats,
    }


def same_record(row: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether an earlier gap ``row`` was computed for ``record``: the same reference number for
    every threat it has (a rerun of the piece would differ in some)."""
    threats = row.get("threats", {})
    return bool(threats) and all(
        record["robust"].get(name) is not None and t.get("reference") == round(100 * record["robust"][name], 2)
        for name, t in threats.items()
    )


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per threat: the smallest, largest and median gap over the rows that have that threat."""
    out: dict[str, dict[str, float]] = {}
    for name in KEYS:
        gaps = sorted(r["threats"][name]["gap"] for r in rows if name in r["threats"])
        if gaps:
            mid = len(gaps) // 2
            median = gaps[mid] if len(gaps) % 2 else (gaps[mid - 1] + gaps[mid]) / 2
            out[name] = {"min": gaps[0], "max": gaps[-1], "median": round(median, 2), "runs": len(gaps)}
    return out


def study_records(study: str, headline: bool = False) -> list[dict[str, Any]] | None:
    """The study's per-threat records (headline ``suite: standard`` and superseded ones left out;
    with ``headline``, only the headline ones); None, after one line on stderr naming the studies
    that do have records, when it has none."""
    src = RESULTS / f"{study}.json"
    if not src.is_file():
        have = sorted(p.stem for p in RESULTS.glob("*.json") if '"records"' in p.read_text(encoding="utf-8"))
        print(f"no records for study {study!r} ({src}); studies with records: {', '.join(have)}", file=sys.stderr)
        return None
    every = json.loads(src.read_text(encoding="utf-8"))["records"]
    return [r for r in every if (r.get("suite") == "standard") == headline and not r.get("superseded")]


def previous_output(name: str) -> dict[str, Any]:
    """The current ``results/<name>.json`` (empty when there is none or it does not parse)."""
    path = RESULTS / f"{name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_result(name: str, out: dict[str, Any]) -> Path:
    """Write ``results/<name>.json`` with the command that produced it and when."""
    out = {**out, "command": "python " + " ".join(shlex.quote(a) for a in sys.argv)}
    out["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    dst = RESULTS / f"{name}.json"
    dst.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="fmnist_small")
    args = parser.parse_args(argv)
    records = study_records(args.study)
    if records is None:
        return 2
    rows, missing = [], []
    previous = previous_output(f"{args.study}_monitor_gap")
    earlier = {(e["method"], e["seed"]): e for e in previous.get("rows", [])}
    for r in records:
        monitor = finished_monitor(args.study, r)
        if monitor is not None:
            rows.append(gap_row(r, monitor))
            continue
        missing.append(f"{r['method']} seed {r['seed']}")
        kept = earlier.get((r["method"], r["seed"]))
        if kept is not None and same_record(kept, r):  # keep it, saying since when
            rows.append({**kept, "kept_from": kept.get("kept_from", previous.get("finished", "an earlier run"))})
    out = {
        "study": args.study,
        "what": "monitor (metaat PGD-20, last epoch) minus reference (APGD-CE + APGD-T), percentage points",
        "summary": summarise(rows),
        "rows": rows,
        "runs_missing": missing,
    }
    dst = write_result(f"{args.study}_monitor_gap", out)
    for name, s in out["summary"].items():
        print(f"{name:6s} gap {s['min']:+.1f} .. {s['max']:+.1f} points (median {s['median']:+.1f}, {s['runs']} runs)")
    if missing:
        print(
            f"no log of the run that made the record (run folder or evidence) for: {', '.join(missing)} "
            "(earlier rows kept where known)"
        )
    print(f"wrote {dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
