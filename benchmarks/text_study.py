"""The text benchmark: every text defense on movie-review sentiment (``mr``), word-CNN, several seeds.

Protocol (stated in docs/domains/text.md and recorded in every row):

* training on MR's training split (10,202 snippets), 3 epochs of Adam (lr 1e-3, one-cycle, batch 64):
  fixed on the validation split (1,275; also the per-epoch monitor) from the standard model's
  validation curve (``benchmarks/results/text_baseline.json``: epoch 3 within 0.5 points of the best),
  before any adversarial row was trained; every
  row trains against ``syn:2`` and ``typo:2`` (IBP: the synonym hull, any number of substitutions)
  and keeps its last epoch — no per-row selection;
* evaluation on the first ``eval_n`` test snippets (the test split is a seeded shuffle), read once
  per row: for ``syn:1``, ``syn:2``, ``syn:4`` and ``typo:2`` the worst case per snippet over greedy
  substitution (gradient and deletion ranking), exhaustive single edits, beam search and the genetic
  attack (Alzantot et al. 2018); union = per-snippet AND over the four; the unseen family ``nbr:2``
  (vector neighbours that are not WordNet synonyms, never trained on) by the same worst case; and the
  share of snippets whose word-CNN prediction interval bound proves robust to any synonym substitutions;
* cost: forward+backward passes per training example (the loop's meter) and seconds per epoch.

Each (method, seed) trains in its own run folder (resumable) and its row is appended to
``benchmarks/results/text_study.json`` as soon as it is evaluated; several processes can share the
row list (one lock per row). ``--quick`` is a smoke run (its records go to ``text_study_quick.json``).

    python benchmarks/text_study.py --seeds 0 1 --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NamedTuple

import torch
from sensor_study import park, parse_study_args, run_rows, trained  # benchmarks/ is on the path as a script

ROOT = Path(__file__).resolve().parent
METHODS: tuple[str, ...] = ("standard", "metaat", "a2t", "sat", "freelb", "avg", "max", "l2l", "ibp")
TRAIN_THREATS: tuple[str, ...] = ("syn:2", "typo:2")
EVAL_THREATS: tuple[str, ...] = ("syn:1", "syn:2", "syn:4", "typo:2")
DATA, MODEL = "mr", "word-cnn"
PARKED = ROOT / "parked" / "text_study"


class Variant(NamedTuple):
    """A candidate recipe: its defense, the defense options it sets and the loop's clean share."""

    defense: str
    options: dict[str, Any]
    clean_ratio: float = 0.0


VARIANTS: dict[str, Variant] = {
    "metaat-clean30": Variant("metaat", {}, clean_ratio=0.3),
}
"""Candidate recipes, compared with their defense's default on the validation split (``--split val``)
before any of them is read on the test split."""


def row_recipe(method: str) -> Variant:
    """What a row trains: a study method (its defense, defaults) or a candidate."""
    return VARIANTS.get(method, Variant(method, {}))


class Budget(NamedTuple):
    """What one row costs: epochs, evaluated test snippets, unseen subset."""

    epochs: int = 3
    eval_n: int = 100
    unseen_n: int = 100
    batch_size: int = 64


QUICK = Budget(epochs=1, eval_n=12, unseen_n=12, batch_size=64)


def row_key(method: str, seed: int) -> str:
    return f"{method}/seed{seed}"


def train_row(
    method: str, seed: int, budget: Budget, runs: Path, threads: int, quick: bool
) -> tuple[Path, dict[str, Any]]:
    """Train (or resume, or reuse) one row's model; returns its run folder and the training summary."""
    from metaat.train import TrainConfig

    run_dir = runs / method / f"seed{seed}"
    recipe = row_recipe(method)
    config = TrainConfig(
        data=DATA,
        model=MODEL,
        defense=recipe.defense,
        options=recipe.options,
        clean_ratio=recipe.clean_ratio,
        threats=TRAIN_THREATS,
        epochs=budget.epochs,
        batch_size=budget.batch_size,
        optimizer="adam",
        lr=1e-3,
        seed=seed,
        eval_n=64,
        train_subset=256 if quick else None,
        threads=threads,
    )
    return run_dir, trained(run_dir, config)


def certified_share(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Share of snippets whose interval bound proves the prediction right under any synonym swaps."""
    try:
        from metaat.domains.text.defenses.ibp import certified
        from metaat.domains.text.space import active_space
    except ImportError:
        return None
    model.eval()
    with torch.no_grad():
        ok = torch.cat(
            [certified(model, x[i : i + 200], y[i : i + 200], active_space()) for i in range(0, len(y), 200)]
        )
    return float(ok.float().mean())


def evaluate_row(run_dir: Path, seed: int, budget: Budget, split: str = "test") -> dict[str, Any]:
    """Evaluation of one trained row on the test split (read once) or the validation split."""
    import metaat.data as data
    from metaat.eval import UnseenConfig, evaluate
    from metaat.models import load_model

    model = load_model(run_dir / "final")
    x, y = data.load(DATA, split)
    n = min(budget.eval_n, x.shape[0])
    result = evaluate(
        model,
        x,
        y,
        list(EVAL_THREATS),
        suite="apgd",
        n=n,
        seed=seed,
        unseen=UnseenConfig(n=min(budget.unseen_n, n)),
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
        "certified_syn": certified_share(model, x[:n], y[:n]),
        "protocol": result.protocol,
        "eval_seconds": result.timings.get("total"),
    }


def recipe_fields(method: str) -> dict[str, Any]:
    """What a candidate row records of its recipe (nothing extra for a study method)."""
    if method not in VARIANTS:
        return {}
    recipe = VARIANTS[method]
    return {"defense": recipe.defense, "options": recipe.options, "clean_ratio": recipe.clean_ratio}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch on 256 snippets, 12 test snippets")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "text_study")
    parser.add_argument("--phase", choices=("all", "train", "eval"), default="all")
    parser.add_argument("--park", action="store_true", help="copy the rows' essentials to benchmarks/parked; exit")
    args = parse_study_args(parser, argv, [*METHODS, *VARIANTS])
    runs = args.runs.with_name(args.runs.name + "_quick") if args.quick else args.runs
    if args.park:
        print("parked:", ", ".join(park(runs, PARKED)) or "nothing")
        return 0
    budget = QUICK if args.quick else Budget()
    name = "text_study" + ("_val" if args.split == "val" else "") + ("_quick" if args.quick else "")
    out = ROOT / "results" / f"{name}.json"
    torch.set_num_threads(args.threads)
    header: dict[str, Any] = {
        "command": "python benchmarks/text_study.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "protocol": {
            "data": DATA,
            "model": MODEL,
            "train_threats": list(TRAIN_THREATS),
            "eval_threats": list(EVAL_THREATS),
            "unseen": "nbr:2",
            "budget": budget._asdict(),
            "selection": "validation split (epochs, optimiser, threats fixed before the study); test read once per row",
            "split": args.split,
        },
    }
    run_rows(
        args,
        runs,
        out,
        header,
        None if args.quick else PARKED,
        train=lambda method, seed: train_row(method, seed, budget, runs, args.threads, args.quick),
        evaluate=lambda run_dir, seed: evaluate_row(run_dir, seed, budget, args.split),
        recipe=lambda method: {"trained_on": list(TRAIN_THREATS), **recipe_fields(method)},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
