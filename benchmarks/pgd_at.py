"""The training engine's reference result: PGD-10 adversarial training of ``cnn-small`` at L∞ 0.1.

    python benchmarks/pgd_at.py                      # full Fashion-MNIST, 10 epochs (configs/pgd.yaml)
    python benchmarks/pgd_at.py --threads 2 --n 10000

Trains with ``configs/pgd.yaml`` into ``benchmarks/runs/pgd_at`` (a killed run resumes from its last
checkpoint when the command is repeated), then measures on the first ``--n`` test points: clean
accuracy, PGD-20 (metaat, 1 restart, step 2.5·eps/20) and the reference package's APGD-CE + APGD-T
on the first ``--n-reference`` of them. Writes ``benchmarks/results/pgd_at.json`` with the command,
hardware, seed and sample counts. Target (issue 3): >= 85 % clean and >= 70 % PGD-20 within 10 epochs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "pgd.yaml"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "runs" / "pgd_at"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=10000, help="test points for clean and PGD-20 accuracy")
    parser.add_argument("--n-reference", type=int, default=1000, help="test points for APGD-CE + APGD-T")
    parser.add_argument("--result", default=str(ROOT / "benchmarks" / "results" / "pgd_at.json"))
    args = parser.parse_args(argv)

    import metaat.attacks as attacks
    import metaat.data as data
    from metaat.eval.union import predict
    from metaat.models import resolve_model
    from metaat.runtime import environment, set_threads
    from metaat.train import resume_run, train
    from metaat.train.checkpoint import has_checkpoint
    from metaat.train.config import TrainConfig

    set_threads(args.threads)
    out = Path(args.out)
    start = time.perf_counter()
    if (out / "final").exists():
        pass  # trained already: only evaluate
    elif has_checkpoint(out):
        resume_run(out, quiet=True, threads=args.threads)
    else:
        config = TrainConfig.from_yaml(args.config, threads=args.threads, seed=args.seed)
        train(config, out, quiet=True)
    train_wall = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))

    model = resolve_model(out).eval()
    x, y = data.load("fashion-mnist", "test", n=args.n)
    clean = (predict(model, x, 500) == y).float()
    t0 = time.perf_counter()
    pgd = attacks.create("pgd", threat="linf:0.1", steps=20, seed=args.seed)
    x_adv = pgd(model, x, y)
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == y).float()
    pgd_seconds = time.perf_counter() - t0
    nr = min(args.n_reference, args.n)
    t0 = time.perf_counter()
    aa = attacks.create(
        "autoattack", threat="linf:0.1", version="custom", attacks=("apgd-ce", "apgd-t"), seed=args.seed
    )
    x_ref = aa(model, x[:nr], y[:nr])
    with torch.no_grad():
        ref = (model(x_ref).argmax(1) == y[:nr]).float()
    ref_seconds = time.perf_counter() - t0

    record = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "config": args.config,
        "run": str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out),
        "seed": args.seed,
        "threads": args.threads,
        "environment": environment(),
        "epochs": summary["epochs_completed"],
        "passes_per_example": summary["cost"]["passes_per_example"],
        "train_cost": summary["cost"],
        "per_epoch_eval": summary["metrics"].get("eval"),
        "train_wall_this_invocation": train_wall,
        "n": args.n,
        "clean": float(clean.mean()),
        "pgd20_linf_0.1": float(robust.mean()),
        "pgd20_seconds": pgd_seconds,
        "n_reference": nr,
        "apgd_ce_t_linf_0.1": float(ref.mean()),
        "clean_on_reference_points": float(clean[:nr].mean()),
        "reference_seconds": ref_seconds,
        "target": {"clean": 0.85, "pgd20": 0.70},
        "met": bool(clean.mean() >= 0.85 and robust.mean() >= 0.70),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.result).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps({k: record[k] for k in ("clean", "pgd20_linf_0.1", "apgd_ce_t_linf_0.1", "met")}))
    print(f"wrote {args.result}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
