"""The study's unseen-attack column: four attacks no method trained on, one number per model.

    python benchmarks/unseen_summary.py --study fmnist_small --n 200 --threads 1

For every current record of ``benchmarks/results/<study>.json`` (headline ``suite: standard`` and
superseded records left alone) that has no summary yet (or one on other points), loads the run's
final model from ``benchmarks/runs/<study>/<method>/seed<k>`` and scores it on the study's first
``--n`` test points (the full protocol's start at 9,000; the summary keeps ``start``) with
:func:`metaat.eval.run_unseen`:

* ``eps2x`` — robust accuracy at twice each training radius (L∞ 0.2, L2 3, L1 20), metaat's PGD-20
  with CE and margin losses, averaged over the three norms (a larger budget than any method saw);
* ``spatial`` — worst case over rotations up to ±15° and translations up to ±2 px (at the
  evaluation default of ±30° / ±3 px every model here scores about 0, which separates nothing);
* ``corruptions`` — mean accuracy under Gaussian noise, blur and contrast at severities 1–5;
* ``patch`` — a universal 5×5 patch learned on other points (two-fold);
* ``mean`` — the mean of those four: the column ``make_tables.py`` prints.

These are secondary numbers (metaat's own attacks, fewer points); the headline robust accuracies
stay the reference package's. ``study.py`` calls :func:`summary` for every new record, so the full
protocol fills the column by itself; this script fills it in for records made before.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from typing import Any

PARTS = ("eps2x", "spatial", "corruptions", "patch")


def summary(model: Any, x: Any, y: Any, threats: tuple[str, ...], seed: int = 0, start: int = 0) -> dict[str, Any]:
    """The four unseen-attack accuracies of ``model`` on ``(x, y)`` and their mean; the sweep doubles
    each of ``threats``' radii and the universal perturbations use them. ``start`` is the index of
    ``x``'s first test point, kept in the result so that it says which points it read."""
    from metaat.eval import UnseenConfig, run_unseen
    from metaat.threats import parse_threats

    cfg = UnseenConfig(n=None, sweep_factors=(2.0,), max_rotation=15.0, max_translation=2.0)
    t0 = time.perf_counter()
    out = run_unseen(model, x, y, parse_threats(threats), cfg, seed=seed)
    sweep = [point["accuracy"] for curve in out["eps_sweep"]["curves"].values() for point in curve]
    values = {
        "eps2x": statistics.mean(sweep),
        "spatial": out["spatial"]["accuracy"],
        "corruptions": out["corruptions"]["mean"],
        "patch": out["universal"]["patch"]["accuracy"],
    }
    return {
        **values,
        "mean": statistics.mean(values[p] for p in PARTS),
        "n": int(out["n"]),
        "start": start,
        "seed": seed,
        "attacks": "eps2x: metaat PGD-20 (CE, margin) at 2x each radius; spatial ±15°/±2 px grid; "
        "corruptions: noise/blur/contrast, severities 1-5; patch: universal 5x5, two-fold",
        "seconds": round(time.perf_counter() - t0, 1),
    }


def unseen_points(record: dict[str, Any]) -> tuple[int | None, int]:
    """(how many, first index) of the test points ``record``'s unseen summary read. Summaries written
    before they said so came from study.py, which reads the first points of the record's own slice."""
    unseen = record.get("unseen") or {}
    return unseen.get("n"), int(unseen.get("start", record.get("test_start") or 0))


def needs_summary(record: dict[str, Any], n: int, start: int, methods: set[str] | None = None) -> bool:
    """Whether ``record`` is a current per-threat record (not a headline or superseded one), of one of
    ``methods`` (any when None), without a summary on ``n`` points from ``start``."""
    current = record.get("suite") not in ("standard", "apgd-worst") and not record.get("superseded")
    wanted = methods is None or record["method"] in methods
    return current and wanted and unseen_points(record) != (n, start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="fmnist_study")
    parser.add_argument("--n", type=int, default=200, help="first N test points")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=None, help="comma-separated subset (default: every record)")
    args = parser.parse_args(argv)

    from study import ALL, RESULTS, TEST_START, atomic_write_json, run_path  # benchmarks/ is on the path as a script

    import metaat.data as data
    from metaat.models import resolve_model
    from metaat.runtime import set_threads

    set_threads(args.threads)
    path = RESULTS / f"{args.study}.json"
    if not path.is_file():
        raise SystemExit(f"no study results at {path}; run benchmarks/study.py first")
    wanted = set(args.methods.split(",")) if args.methods else None
    start = TEST_START.get(args.study, 0)  # the study's own points: the full protocol's are 9,000 onwards
    x, y = data.load("fashion-mnist", "test", n=args.n, start=start)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    records = json.loads(path.read_text(encoding="utf-8"))["records"]
    todo = [(r["method"], r["seed"]) for r in records if needs_summary(r, args.n, start, wanted)]
    for method, seed in todo:
        run = run_path(args.study, method, seed)
        if not (run / "final").is_dir():
            print(f"[unseen] {method} seed {seed}: no final model in {run}; skipped", flush=True)
            continue
        result = summary(resolve_model(run).eval(), x, y, ALL, seed=seed, start=start)
        result["command"] = command
        # Reload before writing: a study process may have appended records meanwhile.
        study = json.loads(path.read_text(encoding="utf-8"))
        for r in study["records"]:
            if r["method"] == method and r["seed"] == seed and needs_summary(r, args.n, start, wanted):
                r["unseen"] = result
        atomic_write_json(path, study)
        print(f"[unseen] {method} seed {seed}: mean {result['mean']:.3f} ({result['seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
