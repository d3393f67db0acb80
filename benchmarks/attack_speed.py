"""PGD-10 throughput of metaat's attack against its raw limit and against torchattacks.

On one call of 1,000 Fashion-MNIST test images (random images when the data are missing; the JSON
says so) and the benchmark CNN ``cnn-small``, L∞ 0.1, 10 steps of 0.025, random start, it measures:

* ``metaat_auto``  — ``metaat.attacks.create("pgd", steps=10)`` with automatic chunking;
* ``metaat_one_chunk`` — the same with the whole call as one chunk;
* ``raw_limit``    — 10 forward+backward passes of the same model taking input gradients only
  (parameters frozen), nothing else, at the best of chunk sizes 32, 64, 128, 256 and the whole call:
  the speed no PGD on this model and machine can beat;
* ``torchattacks`` — ``torchattacks.PGD(eps, alpha, steps=10)`` on the same call, when importable.

The raw limit's chunk size is picked first; then the contenders run in rotating order, one call
each per round (3 rounds by default), so a drift of the machine hits all of them alike; best and
median images/s are reported. Targets: metaat (auto) >= 90 % of the best-chunk raw limit and >= 2x torchattacks.
Writes ``benchmarks/results/attack_speed.json`` (with the command, hardware, threads and versions).

    python benchmarks/attack_speed.py                # the full run (a few minutes on 2 cores)
    python benchmarks/attack_speed.py --quick --output /tmp/speed.json   # a smoke run in seconds
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import metaat
import metaat.attacks as attacks
import metaat.data as data
import metaat.models as models
from metaat.attacks.base import attack_mode
from metaat.runtime import environment, hardware_summary, set_threads

EPS = 0.1
STEPS = 10
ALPHA = 2.5 * EPS / STEPS  # metaat's default step, given explicitly to torchattacks
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "attack_speed.json"


def load_images(n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``n`` Fashion-MNIST test images, or random ones (and a note saying so) when the data are missing."""
    try:
        x, y = data.load("fashion-mnist", "test", n=n)
        return x.contiguous(), y, "fashion-mnist test"
    except (FileNotFoundError, ValueError) as err:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(n, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        return x, y, f"random images (Fashion-MNIST unavailable: {err})"


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """Run ``fn`` ``repeats`` times; return every wall time plus the best and the median."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"seconds": [round(t, 4) for t in times], "best_s": min(times), "median_s": statistics.median(times)}


def with_rate(result: dict[str, Any], n: int) -> dict[str, Any]:
    result["best_img_per_s"] = round(n / result["best_s"], 1)
    result["median_img_per_s"] = round(n / result["median_s"], 1)
    result["best_s"] = round(result["best_s"], 4)
    result["median_s"] = round(result["median_s"], 4)
    return result


def raw_passes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int) -> None:
    """STEPS forward+backward passes per chunk, input gradients only: the floor of any PGD's cost."""
    for start in range(0, len(y), chunk):
        xc, yc = x[start : start + chunk], y[start : start + chunk]
        delta = torch.zeros_like(xc)
        for _ in range(STEPS):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(xc + delta), yc, reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
            delta = grad.detach()  # keep the data dependence; the value does not matter here


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, Any]]:
    """Time every function once per round, ``repeats`` rounds, in rotating order.

    Interleaving spreads slow drifts of the machine (frequency, a neighbour's load) over all
    contenders instead of charging them to whichever was measured first or last.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {
        name: {"seconds": [round(t, 4) for t in ts], "best_s": min(ts), "median_s": statistics.median(ts)}
        for name, ts in times.items()
    }


def run(n: int, threads: int, repeats: int, chunk_sizes: list[int]) -> dict[str, Any]:
    set_threads(threads)
    x, y, source = load_images(n)
    torch.manual_seed(0)
    model = models.create("cnn-small").eval()

    results: dict[str, Any] = {}
    pgd_auto = attacks.create("pgd", threat=f"linf:{EPS}", steps=STEPS)
    pgd_one = attacks.create("pgd", threat=f"linf:{EPS}", steps=STEPS, batch_size=n)
    pgd_auto(model, x[: min(n, 64)], y[: min(n, 64)])  # warm-up: allocator, thread pool, kernels

    def frozen(fn: Callable[[], Any]) -> Callable[[], Any]:
        """``fn`` with the model in attack mode (eval, parameters frozen), as every metaat attack runs it."""

        def call() -> Any:
            with attack_mode(model):
                return fn()

        return call

    # 1. the raw limit's best chunk size
    per_chunk = {}
    for chunk in sorted({min(c, n) for c in chunk_sizes}):
        per_chunk[str(chunk)] = with_rate(timed(frozen(functools.partial(raw_passes, model, x, y, chunk)), repeats), n)
    best_chunk = int(max(per_chunk, key=lambda c: per_chunk[c]["best_img_per_s"]))

    # 2. the contenders side by side, interleaved round by round
    contenders: dict[str, Callable[[], Any]] = {
        "metaat_auto": lambda: pgd_auto(model, x, y),
        "raw_limit": frozen(functools.partial(raw_passes, model, x, y, best_chunk)),
        "metaat_one_chunk": lambda: pgd_one(model, x, y),
    }
    try:
        import torchattacks

        ta = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)
        contenders["torchattacks"] = lambda: ta(x, y)
        results["torchattacks"] = {"version": getattr(torchattacks, "__version__", "unknown")}
    except ImportError as err:
        results["torchattacks"] = {"skipped": f"torchattacks not importable: {err}"}
    for name, timing in interleaved(contenders, repeats).items():
        results[name] = {**results.get(name, {}), **with_rate(timing, n)}
    results["metaat_auto"]["chunk"] = pgd_auto.chunk_size(x)
    results["metaat_one_chunk"]["chunk"] = n
    results["raw_limit"].update(best_chunk=best_chunk, per_chunk=per_chunk)

    metaat_rate = results["metaat_auto"]["best_img_per_s"]
    raw_rate = results["raw_limit"]["best_img_per_s"]
    targets: dict[str, Any] = {
        "metaat_vs_raw_limit": {
            "target": ">= 0.90 of the best-chunk raw limit",
            "ratio": round(metaat_rate / raw_rate, 3),
            "met": metaat_rate >= 0.9 * raw_rate,
        }
    }
    if "best_img_per_s" in results["torchattacks"]:
        ta_rate = results["torchattacks"]["best_img_per_s"]
        targets["metaat_vs_torchattacks"] = {
            "target": ">= 2x torchattacks",
            "ratio": round(metaat_rate / ta_rate, 3),
            "met": metaat_rate >= 2 * ta_rate,
        }
    return {
        "data": source,
        "n": n,
        "model": "cnn-small",
        "num_parameters": models.count_parameters(model),
        "attack": {"threat": f"linf:{EPS}", "steps": STEPS, "step_size": ALPHA, "random_start": True},
        "repeats": repeats,
        "results": results,
        "targets": targets,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--n", type=int, default=None, help="images in the call (default 1000; 32 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per measurement (default 3; 1 with --quick)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON file (default {DEFAULT_OUTPUT})")
    parser.add_argument(
        "--quick", action="store_true", help="a tiny run to check the script works; numbers mean little"
    )
    args = parser.parse_args(argv)
    n = args.n if args.n is not None else (32 if args.quick else 1000)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if n < 1 or repeats < 1 or args.threads < 1:
        parser.error("--n, --repeats and --threads must be >= 1")
    chunk_sizes = [16] if args.quick else [32, 64, 128, 256, 1000]
    if n not in chunk_sizes:
        chunk_sizes.append(n)

    report = run(n, args.threads, repeats, chunk_sizes)
    report = {
        "command": shlex.join(["python", "benchmarks/attack_speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "hardware": hardware_summary(),
        "environment": environment(),  # CPU model and capability: hosts differ (benchmarks/README.md)
        "measured": time.strftime("%Y-%m-%d", time.gmtime()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "metaat": metaat.__version__,
        **report,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    res = report["results"]
    print(f"PGD-{STEPS} on {n} images ({report['data']}), {report['threads']} threads, best of {repeats}:")
    for key in ("metaat_auto", "metaat_one_chunk", "raw_limit", "torchattacks"):
        if "best_img_per_s" in res[key]:
            print(f"  {key:17s} {res[key]['best_img_per_s']:8.1f} img/s (median {res[key]['median_img_per_s']:.1f})")
        else:
            print(f"  {key:17s} {res[key].get('skipped', '')}")
    for name, target in report["targets"].items():
        print(
            f"  target {name}: ratio {target['ratio']} ({target['target']}) -> {'met' if target['met'] else 'NOT met'}"
        )
    print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main()
