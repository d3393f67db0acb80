"""Held-out evaluation of a meta-pretrained attacker: is it any good on tasks it never trained on?

Meta-pretrains the channel-shared learned attacker over a task file (``metaat.meta.crosstask``) and,
on each held-out task, compares the attack success rate after K = 0, 1, 5 adaptation steps with PGD
at the same passes per example, FGSM, PGD-10 and the reference attack (AutoAttack APGD-CE for Lp
threats, the domain's worst-case suite for a domain threat), each with its passes per example.

    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python benchmarks/meta_heldout.py \
        --tasks configs/tasks/sensors.yaml --out benchmarks/results/meta_heldout.json
    .venv/bin/python benchmarks/meta_heldout.py --table benchmarks/results/meta_heldout.json   # print the table
    .venv/bin/python benchmarks/meta_heldout.py --table benchmarks/results/meta_heldout.json \
        --docs docs/concepts/meta-pretraining.md                                               # write it there

Resumable: the attacker and its card live in ``--artifact`` (default ``benchmarks/runs/meta_heldout``);
a rerun reuses an attacker made from the same task file and skips the held-out tasks already
measured. The JSON is rewritten after each held-out task.
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

from metaat.cli.meta import task_reference
from metaat.meta.crosstask import pretrain_tasks
from metaat.meta.tasks import load_task_file
from metaat.runtime import atomic_write_text, environment, hardware_summary


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per held-out task, success rates in % (passes per example in the header)."""
    card = results["card"]
    ks = [str(k) for k in card["task_file"]["meta"]["adapt_steps"]]
    s = card["task_file"]["meta"]["attacker_steps"]
    head = [f"learned K={k}" for k in ks] + [f"PGD-{s}", "FGSM", "PGD-10", "reference"]
    lines = [
        "| held-out task | clean acc. | " + " | ".join(head) + " |",
        "|---" * (len(head) + 2) + "|",
    ]
    for name, row in card["heldout_results"].items():
        ref = row.get("reference") or {}
        ref_text = f"{100 * ref['success']:.1f} ({ref['passes']})" if "success" in ref else "—"
        cells = [f"{100 * row['learned'][k]['success']:.1f} ({s})" for k in ks]
        cells += [f"{100 * row[key]['success']:.1f} ({row[key]['passes']})" for key in ("pgd_same", "fgsm", "pgd10")]
        cells.append(ref_text)
        lines.append(
            f"| `{name}` | {100 * row['clean_accuracy']:.1f} ({row['clean_correct']}) | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


START, END = "<!-- held-out table -->", "<!-- /held-out table -->"


def write_docs(page: Path, text: str) -> None:
    """Put ``text`` between the page's table markers (the page must hold both)."""
    body = page.read_text(encoding="utf-8")
    if START not in body or END not in body:
        raise SystemExit(f"{page}: no {START} ... {END} markers")
    head, rest = body.split(START, 1)
    atomic_write_text(page, head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="configs/tasks/sensors.yaml")
    parser.add_argument("--out", default="benchmarks/results/meta_heldout.json")
    parser.add_argument("--artifact", default="benchmarks/runs/meta_heldout")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", metavar="JSON", help="print the held-out table of a results file and exit")
    parser.add_argument("--docs", metavar="PAGE", help="with --table: replace the page's table between its markers")
    args = parser.parse_args(argv)
    if args.table:
        text = table(json.loads(Path(args.table).read_text(encoding="utf-8")))
        if args.docs:
            write_docs(Path(args.docs), text)
        print(text)
        return
    torch.set_num_threads(args.threads)
    tf = load_task_file(args.tasks)
    out = Path(args.out)
    command = "OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python " + shlex.join(
        ["benchmarks/meta_heldout.py", *sys.argv[1:]]
    )
    t0 = time.perf_counter()

    def write(card: dict[str, Any], done: bool) -> None:
        record = {
            "command": command,
            "hardware": hardware_summary(),
            "environment": environment(),
            "threads": args.threads,
            "seeds": {"task_file": tf.meta.seed, "evaluation": tf.meta.seed},
            "samples": {
                "eval_points_per_task": tf.meta.eval_n,
                "eval_split": tf.meta.eval_split,
                "train_points_per_dataset": tf.meta.n,
            },
            "complete": done,
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "card": card,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(record, indent=2, sort_keys=True) + "\n")

    _, card = pretrain_tasks(
        tf,
        args.artifact,
        resume=True,
        reference=task_reference,
        command=command,
        log=lambda text: print(text, flush=True),
        on_progress=lambda c: write(c, False),
    )
    write(card, True)
    print(table(json.loads(out.read_text(encoding="utf-8"))))


if __name__ == "__main__":
    main()
