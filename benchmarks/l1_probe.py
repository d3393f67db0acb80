"""How strong are the L1 attacks that training can afford? One model, one batch of test points.

    python benchmarks/l1_probe.py --model benchmarks/runs/fmnist_small/sat/seed0 --n 300 --threads 1

Every multi-threat method's union accuracy in the study sits within about a point of its L1 10
accuracy, so the L1 inner maximisation decides the ranking. This script measures, on the first
``--n`` test points and from one shared random start, the accuracy left by the PGD-L1 variants a
trainer can pay for (4 or 10 steps; step size, top-k sparsity and loss varied), by the reference
package's APGD-CE-L1 at 10 and 100 iterations (1 restart), for comparison with the study's headline
protocol (APGD-CE with 5 restarts and the large-eps schedule + APGD-T over 9 targets). PGD rows are
scored on the final iterate (what training uses) and on the best iterate (what an attack reports).
Targeted rows aim the 4 steps at the top wrong class, or at one of the top 3 drawn per point.
Writes ``benchmarks/results/l1_probe.json``.
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

# (steps, step size as a fraction of eps, L1 top-k sparsity, loss)
VARIANTS = [
    (4, 0.5, 0.99, "ce"),  # metaat's refinement step size, at the random-start budget of 4 steps
    (4, 0.25, 0.99, "ce"),
    (4, 1.0, 0.99, "ce"),
    (4, 2.0, 0.99, "ce"),
    (4, 0.5, 0.95, "ce"),
    (4, 1.0, 0.9, "ce"),
    (4, 1.0, 0.8, "ce"),  # APGD-L1's initial sparsity (20 % of the coordinates)
    (4, 0.5, 0.99, "margin"),
    (4, 0.5, 0.99, "dlr"),
    (10, 0.25, 0.99, "ce"),  # PGD-10 as sat / msd / max / eat train with it
    (10, 0.25, 0.99, "margin"),
    (10, 0.5, 0.99, "ce"),
]
# targeted 4-step PGD (CE towards a wrong class, minimised): the top wrong class of the clean logits,
# or one of the top 3 drawn per point — can aiming like APGD-T does make a few steps stronger?
TARGETED = [(4, 0.5, 0.99, "top1"), (4, 0.5, 0.99, "top3")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="run folder or checkpoint")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--eps", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "l1_probe.json"))
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be >= 1")

    import metaat.data as data
    from metaat.attacks.base import attack_mode
    from metaat.attacks.pgd import pgd_steps
    from metaat.eval.union import predict
    from metaat.losses import get_loss
    from metaat.models import resolve_model
    from metaat.runtime import environment, make_generator, set_threads
    from metaat.threats import ThreatModel, random_init

    set_threads(args.threads)
    model = resolve_model(args.model).eval()
    x, y = data.load("fashion-mnist", "test", n=args.n)
    threat = ThreatModel("l1", args.eps)

    def accuracy(x_adv: torch.Tensor) -> float:
        return float((predict(model, x_adv, 128) == y).float().mean())

    rows: list[dict[str, object]] = []
    delta0 = random_init(x, threat, make_generator(args.seed))
    with torch.no_grad():
        wrong = model(x).scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
    pick = torch.randint(0, 3, (len(y),), generator=make_generator(args.seed + 1))
    targets = {"top1": wrong[:, 0], "top3": wrong.gather(1, pick[:, None]).squeeze(1)}
    cases: list[tuple[int, float, float, str, str | None]] = [(s, f, sp, loss, None) for s, f, sp, loss in VARIANTS]
    cases += [(s, f, sp, "ce", target) for s, f, sp, target in TARGETED]
    with attack_mode(model):
        for steps, frac, sparsity, loss, target in cases:
            row: dict[str, object] = {"attack": "pgd", "steps": steps, "step_size_eps": frac, "sparsity": sparsity}
            row["loss"] = loss
            if target is not None:
                row["target"] = target
            for best in (False, True):
                t0 = time.perf_counter()
                x_adv = pgd_steps(
                    model,
                    x,
                    y if target is None else targets[target],
                    delta0,
                    threat=threat,
                    steps=steps,
                    step_size=frac * args.eps,
                    loss_fn=get_loss(loss),
                    targeted=target is not None,
                    return_best=best,
                    l1_sparsity=sparsity,
                )
                row["best_iterate" if best else "final_iterate"] = accuracy(x_adv)
                row["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    from pyautoattack.autopgd_base import APGDAttack

    for n_iter in (10, 100):
        t0 = time.perf_counter()
        apgd = APGDAttack(
            model, norm="L1", eps=args.eps, n_iter=n_iter, n_restarts=1, loss="ce", seed=args.seed, device=x.device
        )
        row = {"attack": "pyautoattack apgd-ce L1", "steps": n_iter, "restarts": 1}
        row["best_iterate"] = accuracy(apgd.perturb(x, y))
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    clean = accuracy(x)
    report = {
        "model": str(args.model),
        "n": args.n,
        "threat": str(threat),
        "seed": args.seed,
        "clean": clean,
        "rows": rows,
        "environment": environment(),
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
