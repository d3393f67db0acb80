"""Standard training of the word-CNN on MR: the clean-accuracy check of the text domain.

Trains ``word-cnn`` (Kim 2014; embeddings initialised from the fetched vectors and fine-tuned) with
Adam on the MR training split, picks the epoch with the best validation accuracy, and reads the test
split once with that model. Optionally it then scores the first ``--robust-n`` test examples under
``syn:1`` and ``typo:1`` with the worst case over the text attacks (exhaustive search + greedy), and
records robust accuracy and queries per example. Writes ``benchmarks/results/text_baseline.json``
with the command, hardware and seed.

    python benchmarks/text_baseline.py --epochs 5 --seed 0 --robust-n 100
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from metaat.data import DATASETS
from metaat.domains.text.attacks import ExhaustiveAttack, GreedyAttack, worst_case
from metaat.domains.text.attacks.greedy import GreedyConfig
from metaat.models import create
from metaat.runtime import environment, seed_everything, set_threads

OUT = Path(__file__).resolve().parent / "results" / "text_baseline.json"


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return float((pred == y).float().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--robust-n", type=int, default=0, help="test examples scored under syn:1 and typo:1")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    gen = seed_everything(args.seed)
    dataset = DATASETS.create("mr")
    split = {s: dataset.arrays(s, None) for s in ("train", "val", "test")}
    tensors = {s: (torch.from_numpy(x), torch.from_numpy(y)) for s, (x, y) in split.items()}
    x_tr, y_tr = tensors["train"]
    model = create("word-cnn", num_classes=2, in_channels=1, image_size=x_tr.shape[1], vocab="mr")
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, Any]] = (-1.0, -1, {})
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(y_tr), generator=gen)
        total = 0.0
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i : i + args.batch_size]
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        val = accuracy(model, *tensors["val"])
        history.append({"epoch": epoch, "loss": total / len(perm), "val_acc": val, "seconds": time.perf_counter() - t0})
        print(f"epoch {epoch}: loss {total / len(perm):.4f} val {val:.4f}", flush=True)
        if val > best[0]:
            best = (val, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    test = accuracy(model, *tensors["test"])
    record: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "dataset": "mr",
        "model": "word-cnn",
        "defense": "standard",
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "split_sizes": {s: int(len(v[1])) for s, v in tensors.items()},
        "history": history,
        "chosen_epoch": best[1],
        "chosen_by": "validation accuracy",
        "val_acc": best[0],
        "test_acc": test,
        "train_seconds": time.perf_counter() - start,
        "environment": environment(),
    }
    print(f"test accuracy (epoch {best[1]} by validation): {test:.4f}", flush=True)
    if args.robust_n:
        x_te, y_te = tensors["test"]
        x_te, y_te = x_te[: args.robust_n], y_te[: args.robust_n]
        robust: dict[str, Any] = {}
        for threat in ("syn:1", "typo:1"):
            t0 = time.perf_counter()
            attacks = [
                ExhaustiveAttack(threat),
                GreedyAttack(threat, ranking="deletion"),
                GreedyAttack(threat, ranking="gradient"),
            ]
            result = worst_case(model.eval(), x_te, y_te, threat, attacks)
            robust[threat] = {
                **result.to_dict(),
                "attacks": [
                    a.name + (f"({a.config.ranking})" if isinstance(a.config, GreedyConfig) else "") for a in attacks
                ],
                "n": int(len(y_te)),
                "clean_acc": accuracy(model, x_te, y_te),
                "seconds": time.perf_counter() - t0,
            }
            print(f"{threat}: {robust[threat]}", flush=True)
        record["robust"] = robust
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
