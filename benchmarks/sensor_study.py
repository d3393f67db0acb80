"""The sensor benchmark: every defense on the smartwatch IMU data (``watch``), 1-d FCN, several seeds.

Protocol (stated in docs/domains/sensors.md and recorded in every row):

* training on the training subjects; every choice (epochs, radii, options) made on the validation
  subject, which is also the per-epoch monitor; the test subjects are read once per final row;
* threats in σ units inside the ±8σ saturation box: ``linf:0.25``, ``l2:3``, ``spike:5,2``,
  ``drift:0.5``, fixed before any method was trained (L2 at the same fraction of the L∞ ball's
  diagonal as the image radii: 1.5 / (0.1·28) ≈ 0.54, times 0.25·√600); union = per-window AND;
* evaluation on the test windows: the reference APGD-CE + APGD-T (``pyautoattack``, through
  metaat's reference view) for L∞ / L2, and for spike and drift metaat's PGD (CE and margin, two
  restarts of 100 steps) followed by the domain's own search attacks (the worst case per window);
  the unseen families (dropout / stuck-at, misalignment, time warp) searched exhaustively;
* cost: forward+backward passes per training example (the loop's meter) and seconds per epoch.

Each (method, seed) is trained in its own run folder (resumable: a killed run continues from its
checkpoint) and its row is appended to ``benchmarks/results/sensor_study.json`` as soon as it is
evaluated, so the study can stop and resume anywhere. ``--quick`` is a smoke run (tiny budgets;
its records go to ``sensor_study_quick.json``).

    python benchmarks/sensor_study.py --seeds 0 1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

ROOT = Path(__file__).resolve().parent
METHODS: tuple[str, ...] = (
    "standard",
    "metaat",
    "sat",
    "pgd-linf",
    "mng",
    "msd",
    "max",
    "trades-linf",
    "fast-linf",
    "avg",
    "eat",
    "l2l",
    "mat",
    "sensor-augment",
)
THREATS: tuple[str, ...] = ("linf:0.25", "l2:3", "spike:5,2", "drift:0.5")
DATA, MODEL = "watch", "fcn-small"
SINGLE_THREAT: dict[str, str] = {"pgd-linf": "pgd", "trades-linf": "trades", "fast-linf": "fast"}
"""Rows of single-threat defenses: trained against the L∞ threat only, evaluated on all four."""


VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "metaat-drift10": ("metaat", {"refine_by_norm": {"drift": 10}}),
}
"""Candidate recipes, each ``(defense, options)``: compared with their defense's default on the
validation subject (``--split val``) before any of them is read on the test subjects."""


def row_recipe(row: str) -> tuple[str, tuple[str, ...]]:
    """``(defense, training threats)`` of a row (the row name is the defense for multi-threat ones)."""
    if row in SINGLE_THREAT:
        return SINGLE_THREAT[row], (THREATS[0],)
    if row in VARIANTS:
        return VARIANTS[row][0], THREATS
    return row, THREATS


def row_options(row: str) -> dict[str, Any]:
    """The defense options a row sets (empty: the defense's defaults)."""
    return dict(VARIANTS[row][1]) if row in VARIANTS else {}


class Budget(NamedTuple):
    """What one row costs: epochs, monitor size, evaluated test windows, unseen subset."""

    epochs: int = 10
    eval_n: int | None = None  # None: every test window
    unseen_n: int = 200
    batch_size: int = 64


QUICK = Budget(epochs=1, eval_n=40, unseen_n=20, batch_size=64)


def row_key(method: str, seed: int) -> str:
    return f"{method}/seed{seed}"


def load_records(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"rows": {}}
    return json.loads(path.read_text(encoding="utf-8"))


def save_records(path: Path, records: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def add_row(path: Path, header: dict[str, Any], key: str, row: dict[str, Any]) -> None:
    """Merge one row into the results file under an exclusive lock (several study processes may
    run side by side, e.g. one per seed, each owning its rows' run folders)."""
    import fcntl

    with open(path.with_suffix(".json.lock"), "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        records = load_records(path)
        records.update(header)
        records["rows"][key] = row
        save_records(path, records)


PARKED = ROOT / "parked" / "sensor_study"
KEEP = ("final", "checkpoint", "summary.json", "metrics.jsonl", "config.yaml", "eval_state.json", "eval_state_val.json")
"""What parking keeps of a run folder (a trained row: its final model and records; a row in
training: its last checkpoint) so that a new machine resumes where this one stopped."""


def park(runs: Path, parked_root: Path = PARKED) -> list[str]:
    """Copy every row's essentials into ``benchmarks/parked/<study>`` (to commit)."""
    import shutil

    parked = []
    for run_dir in sorted(d for d in runs.glob("*/seed*") if d.is_dir()):
        dest = parked_root / run_dir.relative_to(runs)
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for name in KEEP:
            if name == "checkpoint" and (run_dir / "final").exists():
                continue  # a finished row needs only its final model
            src = run_dir / name
            if src.is_dir():
                shutil.copytree(src, dest / name)
            elif src.exists():
                shutil.copy2(src, dest / name)
        parked.append(str(run_dir.relative_to(runs)))
    return parked


def unpark(run_dir: Path, runs: Path, parked_root: Path | None = PARKED) -> None:
    """Restore a row's parked copy when this machine has no run folder for it (``None``: nothing
    parked, e.g. a ``--quick`` smoke run, which must not pick up the real study's rows)."""
    import shutil

    if parked_root is None:
        return
    src = parked_root / run_dir.relative_to(runs)
    if not run_dir.exists() and src.exists():
        shutil.copytree(src, run_dir)


def train_row(method: str, seed: int, budget: Budget, runs: Path, threads: int) -> tuple[Path, dict[str, Any]]:
    """Train (or resume, or reuse) one row's model; returns its run folder and the training result."""
    from metaat.train import TrainConfig

    run_dir = runs / method / f"seed{seed}"
    defense, threats = row_recipe(method)
    config = TrainConfig(
        data=DATA,
        model=MODEL,
        defense=defense,
        threats=threats,
        epochs=budget.epochs,
        batch_size=budget.batch_size,
        lr=1e-3,
        seed=seed,
        eval_n=64,
        eval_steps=10,
        threads=threads,
        options=row_options(method),
    )
    return run_dir, trained(run_dir, config)


def trained(run_dir: Path, config: Any) -> dict[str, Any]:
    """Train ``config`` into ``run_dir`` (resuming a checkpoint) unless it is done; the row's
    training summary (passes per example, seconds per epoch, epochs, last monitor), kept in
    ``summary.json``."""
    from metaat.train import resume_run, train
    from metaat.train.checkpoint import has_checkpoint

    if (run_dir / "final").exists():
        kept = dict(json.loads((run_dir / "summary.json").read_text(encoding="utf-8")))
        if "passes_per_example" in kept:  # the row's summary (else the training loop's own)
            return kept
    else:
        result = resume_run(run_dir, quiet=True) if has_checkpoint(run_dir) else train(config, run_dir, quiet=True)
        if result.status not in ("completed", "stopped") or (result.status == "stopped" and not _guard_stop(run_dir)):
            raise SystemExit(f"{run_dir}: training {result.status} ({result.message}); run again to resume")
    epochs = _epoch_lines(run_dir)
    seconds = [float(m.get("epoch_seconds", 0.0)) for m in epochs]
    stop = _guard_stop(run_dir)
    kept_epoch = stop["rolled_back_to_epoch"] if stop else len(epochs)
    summary = {
        # every pass spent counts, those of an epoch the guard rolled back included
        "passes_per_example": epochs[-1]["cost"]["passes_per_example"],
        "seconds_per_epoch": sum(seconds) / max(1, len(seconds)),
        "epochs": kept_epoch,
        "monitor": next((m.get("eval", {}) for m in epochs if m["epoch"] == kept_epoch), {}),
        **({"stopped": stop} if stop else {}),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _guard_stop(run_dir: Path) -> dict[str, Any] | None:
    """The catastrophic-overfitting guard's event, when it stopped the run (the loop keeps the epoch it
    rolled back to as the final model: the single-step defenses' documented early stop)."""
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines if '"catastrophic_overfitting"' in line]
    return events[-1] if events else None


def _epoch_lines(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    out = [json.loads(line) for line in lines if line.strip()]
    return [r for r in out if r.get("type") == "epoch"]


def evaluate_row(run_dir: Path, seed: int, budget: Budget, split: str = "test") -> dict[str, Any]:
    """Evaluation of one trained row on the test subjects (read once) or the validation subject."""
    import metaat.data as data
    from metaat.eval import UnseenConfig, evaluate
    from metaat.models import load_model

    model = load_model(run_dir / "final")
    x, y = data.load(DATA, split)
    unseen = UnseenConfig(n=min(budget.unseen_n, x.shape[0]), sweep_factors=(1.0, 2.0))
    result = evaluate(
        model,
        x,
        y,
        list(THREATS),
        suite="apgd",
        n=budget.eval_n,
        seed=seed,
        unseen=unseen,
        checks=False,
        state_path=run_dir / ("eval_state.json" if split == "test" else f"eval_state_{split}.json"),
    )
    domain = (result.unseen or {}).get("domain") or {}
    return {
        "split": split,
        "n": result.n,
        "clean": result.clean,
        "robust": result.robust,
        "union": result.union,
        "unseen": {k: v["accuracy"] for k, v in domain.items()},
        "unseen_mean": sum(v["accuracy"] for v in domain.values()) / len(domain) if domain else None,
        "protocol": result.protocol,
        "eval_seconds": result.timings.get("total"),
    }


def recipe_fields(method: str) -> dict[str, Any]:
    """The row's recipe as recorded: its defense, training threats and the options it sets."""
    defense, threats = row_recipe(method)
    return {
        "defense": defense,
        "trained_on": list(threats),
        **({"options": row_options(method)} if method in VARIANTS else {}),
    }


def run_rows(
    args: argparse.Namespace,
    runs: Path,
    out: Path,
    header: dict[str, Any],
    parked_root: Path | None,
    train: Callable[[str, int], tuple[Path, dict[str, Any]]],
    evaluate: Callable[[Path, int], dict[str, Any]],
    recipe: Callable[[str], dict[str, Any]],
) -> None:
    """Every (seed, method) row not yet in ``out``, one full seed first: claim it (skip a row another
    process holds), restore its parked copy, train it (``args.phase`` may stop there), evaluate it
    and merge the row into ``out``."""
    for seed in args.seeds:
        for method in args.methods:
            key = row_key(method, seed)
            if key in load_records(out)["rows"]:
                continue
            if claim(runs / method / f"seed{seed}.lock") is None:
                print(f"{key}: another study process has it; skipped", flush=True)
                continue
            t0 = time.perf_counter()
            unpark(runs / method / f"seed{seed}", runs, parked_root)
            if args.phase == "eval" and not (runs / method / f"seed{seed}" / "final").exists():
                continue
            run_dir, summary = train(method, seed)
            print(f"{key}: trained ({summary['passes_per_example']} passes/example)", flush=True)
            if args.phase == "train":
                continue
            row: dict[str, Any] = {"method": method, **recipe(method), "seed": seed}
            row.update(summary)
            row.update(evaluate(run_dir, seed))
            row["hardware"] = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
            row["threads"] = args.threads
            row["wall_seconds"] = round(time.perf_counter() - t0, 1)
            add_row(out, header, key, row)
            print(f"{key}: clean {row['clean']:.3f} union {row['union']:.3f} passes {row['passes_per_example']}")


def claim(path: Path) -> Any:
    """A non-blocking OS lock on ``path`` held for the process's life (None if another process holds
    it): several study processes can share one row list without running a row twice."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115  (kept open: the lock lives as long as the handle)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    _CLAIMED.append(handle)
    return handle


_CLAIMED: list[Any] = []


def parse_study_args(parser: argparse.ArgumentParser, argv: list[str] | None, rows: list[str]) -> argparse.Namespace:
    """Add ``--split`` (test points for the study, validation points for choosing among candidates),
    parse, and refuse a ``--methods`` name that is not one of ``rows``, listing the valid ones."""
    parser.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="score the test points (the study) or the validation points (choosing among candidates)",
    )
    args = parser.parse_args(argv)
    unknown = [m for m in args.methods if m not in rows]
    if unknown:
        parser.error(f"unknown rows {unknown}; valid rows: {', '.join(rows)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, 40 test windows")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "sensor_study")
    parser.add_argument(
        "--phase", choices=("all", "train", "eval"), default="all", help="train only, evaluate trained rows, or both"
    )
    parser.add_argument("--park", action="store_true", help="copy the rows' essentials to benchmarks/parked; exit")
    args = parse_study_args(parser, argv, [*METHODS, *VARIANTS])
    if args.park:
        print("parked:", ", ".join(park(args.runs)) or "nothing")
        return 0
    budget = QUICK if args.quick else Budget()
    name = "sensor_study" + ("_val" if args.split == "val" else "") + ("_quick" if args.quick else "")
    out = ROOT / "results" / f"{name}.json"
    runs = args.runs.with_name(args.runs.name + "_quick") if args.quick else args.runs
    torch.set_num_threads(args.threads)
    header: dict[str, Any] = {}
    header["command"] = "python benchmarks/sensor_study.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header["protocol"] = {
        "data": DATA,
        "model": MODEL,
        "threats": list(THREATS),
        "budget": budget._asdict(),
        "selection": "validation subject (monitor, every choice); test subjects read once per row",
        "split": args.split,
    }
    run_rows(
        args,
        runs,
        out,
        header,
        None if args.quick else PARKED,
        train=lambda method, seed: train_row(method, seed, budget, runs, args.threads),
        evaluate=lambda run_dir, seed: evaluate_row(run_dir, seed, budget, args.split),
        recipe=recipe_fields,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
