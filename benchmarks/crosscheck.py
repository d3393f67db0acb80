"""Cross-check: metaat's evaluation against the reference AutoAttack package called directly, on a
model metaat did not train.

    python benchmarks/crosscheck.py --n 200 --threads 1

Every robustness figure metaat reports goes through its own harness around the reference package:
test points in chunks, a seed per chunk and threat, clean-misclassified points skipped, a resumable
state file, the union as a per-point AND. A sceptical reader should not have to trust that harness,
so this script checks it from the outside:

1. it trains a small CNN with a plain PyTorch loop written here (its own layers, its own L∞ PGD-7
   adversarial training at eps 0.1: no metaat model, defense, attack or trainer); only the
   Fashion-MNIST reader is metaat's;
2. it evaluates that model twice on the same test points, per threat (L∞ 0.1, L2 1.5, L1 10):
   directly, with ``pyautoattack.AutoAttack(version="standard")`` and its ``run_standard_evaluation``
   on all the points at once, as the package's README shows; and through
   ``metaat.evaluate(..., suite="standard")``;
3. it compares clean, per-threat and union robust accuracy, and per point how often the two disagree.

Both are randomised attacks (random starts, Square's random search) seeded differently, so a few
points near the boundary may fall either way; the numbers should agree within about a point.
The model is kept in ``benchmarks/runs/crosscheck`` (safetensors) and each finished evaluation in a
partial file there, so a killed run resumes where it stopped. Writes ``benchmarks/results/crosscheck.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from paired import compare as paired_cells  # benchmarks/ is on the path when run as a script
from study import atomic_write_json
from torch import nn

HERE = Path(__file__).resolve().parent
RUN = HERE / "runs" / "crosscheck"
THREATS = {"linf:0.1": ("Linf", 0.1), "l2:1.5": ("L2", 1.5), "l1:10": ("L1", 10.0)}


def plain_cnn() -> nn.Module:
    """A small CNN defined here, not one of metaat's models."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 5 * 5, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def plain_pgd_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
    """Textbook L∞ PGD (Madry et al. 2018): uniform start, signed-gradient steps of 2.5·eps/steps."""
    alpha = 2.5 * eps / steps
    delta = torch.empty_like(x).uniform_(-eps, eps)
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def train_plain(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = plain_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        order = torch.randperm(len(y))
        for i in range(0, len(y), 128):
            idx = order[i : i + 128]
            model.eval()
            x_adv = plain_pgd_linf(model, x[idx], y[idx], eps=0.1, steps=7)
            model.train()
            loss = F.cross_entropy(model(x_adv), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"[crosscheck] plain PGD-AT epoch {epoch + 1}/{epochs}: last batch loss {float(loss):.3f}")
    return model.eval()


def direct_reference(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, seed: int
) -> list[bool]:
    """Robust flags per point from the package alone, used as its README shows."""
    from pyautoattack import AutoAttack

    aa = AutoAttack(model, norm=norm, eps=eps, version="standard", seed=seed)  # type: ignore[arg-type]
    aa.verbose = False  # type: ignore[attr-defined]
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(y))
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).tolist()


def compare(direct: list[bool], ours: list[bool]) -> dict[str, Any]:
    """Both accuracies and the points each side alone calls robust (``paired.compare``'s cells)."""
    cells = paired_cells(direct, ours)
    return {
        "direct": sum(direct) / len(direct),
        "metaat": sum(ours) / len(ours),
        "only_direct_robust": cells["only_method"],
        "only_metaat_robust": cells["only_reference"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="test points")
    parser.add_argument("--start", type=int, default=9000, help="first test point (the held-out slice)")
    parser.add_argument("--train-subset", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--run", default=str(RUN))
    parser.add_argument("--result", default=str(HERE / "results" / "crosscheck.json"))
    args = parser.parse_args(argv)

    from safetensors.torch import load_file, save_file

    import metaat
    import metaat.data as data
    from metaat.runtime import environment, set_threads

    set_threads(args.threads)
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    weights, partial_path = run / "model.safetensors", run / "partial.json"
    setup = {k: getattr(args, k) for k in ("n", "start", "train_subset", "epochs", "seed")}
    partial: dict[str, Any] = {}
    if partial_path.is_file():
        partial = json.loads(partial_path.read_text(encoding="utf-8"))
        if partial.get("setup") != setup:
            raise SystemExit(f"crosscheck: {partial_path} is from another setup {partial.get('setup')}; remove {run}")
    partial["setup"] = setup

    model = plain_cnn()
    if weights.is_file():
        model.load_state_dict(load_file(str(weights)))
    else:
        t0 = time.perf_counter()
        xt, yt = data.load("fashion-mnist", "train", n=args.train_subset)
        model = train_plain(xt, yt, args.epochs, args.seed)
        partial["train_seconds"] = round(time.perf_counter() - t0, 1)
        save_file(model.state_dict(), str(weights))
        atomic_write_json(partial_path, partial)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = data.load("fashion-mnist", "test", n=args.n, start=args.start)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).tolist()

    direct: dict[str, list[bool]] = partial.setdefault("direct", {})
    for name, (norm, eps) in THREATS.items():
        if name not in direct:
            t0 = time.perf_counter()
            direct[name] = direct_reference(model, x, y, norm, eps, args.seed)
            partial.setdefault("direct_seconds", {})[name] = round(time.perf_counter() - t0, 1)
            atomic_write_json(partial_path, partial)
            print(f"[crosscheck] direct {name}: {100 * sum(direct[name]) / len(y):.1f} %")

    t0 = time.perf_counter()
    res = metaat.evaluate(
        model, x, y, list(THREATS), suite="standard", seed=args.seed, unseen=False, checks=False,
        state_path=run / "metaat-eval.state.json",
    )  # fmt: skip
    metaat_seconds = round(time.perf_counter() - t0, 1)
    ours = {name: [bool(v) for v in res.flags[key].tolist()] for name, key in zip(THREATS, res.threats, strict=True)}
    ours_union = [bool(v) for v in res.flags["union"].tolist()]
    direct_union = [all(direct[t][i] for t in THREATS) for i in range(len(y))]

    rows = {name: compare(direct[name], ours[name]) for name in THREATS}
    rows["union"] = compare(direct_union, ours_union)
    out = {
        "what": "a model trained outside metaat (plain PyTorch L∞ PGD-7 AT), evaluated by pyautoattack "
        "called directly (version standard) and by metaat.evaluate(suite='standard') on the same points",
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "setup": setup,
        "test_points": f"{args.start}-{args.start + args.n - 1}",
        "clean": {"direct": sum(clean) / len(clean), "metaat": res.clean},
        "robust": rows,
        "max_abs_difference_points": round(100 * max(abs(r["direct"] - r["metaat"]) for r in rows.values()), 2),
        "seconds": {
            "train": partial.get("train_seconds"), "direct": partial.get("direct_seconds"), "metaat": metaat_seconds,
        },
        "hardware": environment(),
    }  # fmt: skip
    atomic_write_json(Path(args.result), out)
    for name, r in rows.items():
        print(
            f"[crosscheck] {name}: direct {100 * r['direct']:.1f} %, metaat {100 * r['metaat']:.1f} % "
            f"(robust only under direct {r['only_direct_robust']}, only under metaat {r['only_metaat_robust']})"
        )
    print(f"wrote {args.result}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
