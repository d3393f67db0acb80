"""Training cost of every defense, side by side in one run: passes per example and wall time.

    python benchmarks/train_speed.py --threads 2 [--images 3840] [--methods standard,pgd-linf,msd,metaat]
    python benchmarks/train_speed.py --threads 1 --images 4096 --methods metaat \
        --presets metaat-learned-refine0-free4-adaptive-l1x2-js --output benchmarks/results/train_speed_levers.json

Each method trains ``cnn-small`` on the same first ``--images`` Fashion-MNIST training images for one
epoch (batch 128, no per-epoch evaluation), one method after the other in this process, so every
number comes from the same machine state. Reported: forward/backward passes per example (from the
trainer's cost meter), attack and update seconds, and those seconds scaled to one epoch of 60,000
images. ``--presets`` adds presets (``configs/presets/<name>.yaml``: their defense, threats and options,
under the same settings) after the study's methods. Results: ``benchmarks/results/train_speed.json``
(or ``--output``) with the command that produced them.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study import METHODS, RESULTS, atomic_write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=3840)
    p.add_argument("--methods", default="standard,fast,pgd-linf,trades,sat,avg,max,msd,eat,mng,l2l,mat,metaat")
    p.add_argument("--presets", default="", help="comma-separated presets to time after the methods")
    p.add_argument("--output", type=Path, default=RESULTS / "train_speed.json")
    args = p.parse_args(argv)
    import torch

    import metaat
    from metaat.runtime import environment, hardware_summary, set_threads
    from metaat.train import TrainConfig, train
    from metaat.train.presets import available, load_preset

    set_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        p.error(f"unknown method(s) {bad}; valid: {', '.join(METHODS)}")
    presets = [m.strip() for m in args.presets.split(",") if m.strip()]
    bad = [m for m in presets if m not in available()]
    if bad:
        p.error(f"unknown preset(s) {bad}; valid: {', '.join(available())}")
    recipes = {m: (*METHODS[m], None) for m in methods}
    for name in presets:
        preset = load_preset(name)
        recipes[name] = (preset.defense, preset.threats, preset.options, name)
    rows = []
    for method, (defense, threats, options, preset_name) in recipes.items():
        cfg = TrainConfig(
            defense=defense,
            options=dict(options),
            threats=threats,
            epochs=1,
            batch_size=128,
            train_subset=args.images,
            eval_n=0,
            seed=0,
            threads=args.threads,
            device="cpu",
        )
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            result = train(cfg, Path(tmp) / "run", quiet=True)
            wall = time.perf_counter() - t0
        cost = result.cost
        seconds = float(cost["attack_seconds"]) + float(cost["update_seconds"])
        row = {
            "method": method,
            "preset": preset_name,
            "defense": defense,
            "threats": list(threats),
            "passes_per_example": cost["passes_per_example"],
            "forward_examples": cost["forward_examples"],
            "backward_examples": cost["backward_examples"],
            "train_examples": cost["train_examples"],
            "attack_seconds": cost["attack_seconds"],
            "update_seconds": cost["update_seconds"],
            "seconds_per_60k_epoch": seconds / cost["train_examples"] * 60000,
            "wall_seconds": wall,
        }
        rows.append(row)
        print(
            f"{method:22s} passes {row['passes_per_example']:6.2f}  s/60k-epoch {row['seconds_per_60k_epoch']:8.1f}",
            flush=True,
        )
        out = {
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
            "hardware": hardware_summary(),
            "threads": torch.get_num_threads(),
            "images": args.images,
            "metaat_version": metaat.__version__,
            "environment": environment(),
            "results": rows,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.output, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
