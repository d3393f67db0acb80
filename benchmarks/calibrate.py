"""Calibrate the L2 and L1 radii: accuracy-vs-eps curves of single-norm models.

    python benchmarks/calibrate.py [--study fmnist_small] [--n 200] [--threads 2]

Reads the study's ``standard``, ``pgd-linf``, ``pgd-l2`` and ``pgd-l1`` runs (whichever exist, seed
0), attacks each with the reference package's APGD-CE at a grid of radii per norm on the first
``--n`` test points, and writes ``benchmarks/results/calibration.json`` (with the command),
``benchmarks/results/calibration.svg`` and ``benchmarks/results/calibration_table.md``. The rule
that fixed the radii, and its evidence, are in ``benchmarks/README.md``. Resumable: finished
(model, norm, eps) cells are kept.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study import RESULTS, RUNS, atomic_write_json  # noqa: E402

GRID = {
    "linf": [0.025, 0.05, 0.1, 0.15, 0.2],
    "l2": [0.5, 1.0, 1.5, 2.0, 3.0],
    "l1": [2.5, 5.0, 10.0, 15.0, 20.0],
}
MODELS = ("standard", "pgd-linf", "pgd-l2", "pgd-l1")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", default="fmnist_small")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", type=Path, default=RESULTS / "calibration.json")
    args = p.parse_args(argv)
    import torch

    import metaat.attacks as attacks
    import metaat.data as data
    from metaat.models import resolve_model
    from metaat.runtime import hardware_summary, set_threads

    set_threads(args.threads)
    x, y = data.load("fashion-mnist", "test", n=args.n)
    out = json.loads(args.output.read_text()) if args.output.is_file() else {}
    cells = out.get("cells", {})
    for name in MODELS:
        run = RUNS / args.study / name / "seed0"
        if not (run / "final").is_dir():
            print(f"[calibrate] {name}: no finished run at {run}, skipped")
            continue
        model = resolve_model(run)
        with torch.no_grad():
            clean = (model(x).argmax(1) == y).float().mean().item()
        for norm, grid in GRID.items():
            for eps in grid:
                key = f"{name}|{norm}:{eps:g}"
                if key in cells:
                    continue
                atk = attacks.create("autoattack", threat=f"{norm}:{eps:g}", version="custom", attacks=("apgd-ce",))
                x_adv = atk(model, x, y)
                with torch.no_grad():
                    acc = (model(x_adv).argmax(1) == y).float().mean().item()
                cells[key] = {"model": name, "norm": norm, "eps": eps, "robust": acc, "clean": clean}
                print(f"[calibrate] {name} {norm}:{eps:g} robust {100 * acc:.1f} % (clean {100 * clean:.1f} %)")
                out = {
                    "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
                    "protocol": "pyautoattack APGD-CE (version custom), first n test points",
                    "n": args.n,
                    "study": args.study,
                    "hardware": hardware_summary(),
                    "cells": cells,
                }
                atomic_write_json(args.output, out)
    plot(cells, args.output.with_suffix(".svg"))
    md = table(cells)
    args.output.with_name(args.output.stem + "_table.md").write_text(md, encoding="utf-8")
    print(md)
    return 0


def table(cells: dict[str, dict[str, Any]]) -> str:
    """Robust accuracy (%) per model (rows) and threat (columns), as Markdown; ``–`` where not run."""
    threats = [(norm, eps) for norm, grid in GRID.items() for eps in grid]
    symbol = {"linf": "L∞", "l2": "L2", "l1": "L1"}
    head = "| model | clean | " + " | ".join(f"{symbol[n]} {e:g}" for n, e in threats) + " |\n"
    head += "|---|" + "---:|" * (len(threats) + 1) + "\n"
    lines = []
    for name in MODELS:
        mine: dict[tuple[str, float], dict[str, Any]] = {
            (c["norm"], c["eps"]): c for c in cells.values() if c["model"] == name
        }
        if not mine:
            continue
        clean = next(iter(mine.values()))["clean"]
        vals = [f"{100 * mine[t]['robust']:.1f}" if t in mine else "–" for t in threats]
        lines.append(f"| {name} | {100 * clean:.1f} | " + " | ".join(vals) + " |")
    return head + "\n".join(lines) + "\n"


def plot(cells: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, norm in zip(axes, GRID, strict=True):
        for name in MODELS:
            pts = sorted((c["eps"], c["robust"]) for c in cells.values() if c["model"] == name and c["norm"] == norm)
            if pts:
                ax.plot([e for e, _ in pts], [100 * a for _, a in pts], marker="o", label=name)
        ax.set_title(f"{norm}: robust accuracy vs eps (APGD-CE)", fontsize=9)
        ax.set_xlabel("eps")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("robust accuracy (%)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    with plt.rc_context({"svg.hashsalt": "metaat"}):  # same curves, same bytes
        fig.savefig(path, metadata={"Date": None})
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
