"""Warm start in training: does a meta-pretrained attacker make ``metaat`` reach its robustness sooner?

For each domain: (a) the cross-task attacker is meta-pretrained as ``metaat meta-pretrain --tasks FILE
--resume`` does (``--attacker DOMAIN=DIR`` takes an existing artifact instead); (b) ``metaat`` trains the
domain's model per seed, with the same seed (initial weights, data order, attack noise): *cold*
(``attacker_path`` empty, the shipped recipe), *warm* (``attacker_path`` = the artifact) and optionally
*shape*, an untrained attacker of the artifact's architecture, which separates pretraining from size;
(c) per epoch, the loop's monitor (PGD-10 per threat and their union, on validation points never trained
on) and cost meter (cumulative passes per training example) are read from each run's ``metrics.jsonl``;
the summary gives the first epoch at which each arm reaches *cold*'s final union, and the passes saved.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/warm_start.py --seeds 0 1 --threads 1
    .venv/bin/python benchmarks/warm_start.py --table benchmarks/results/warm_start.json   # print the tables
    .venv/bin/python benchmarks/warm_start.py --table benchmarks/results/warm_start.json \
        --docs docs/concepts/meta-pretraining.md                                           # write them there

Resumable: each run lives in ``--runs/<domain>/<arm>/seed<s>`` (a killed run continues from its
checkpoint, a finished one is read back) and the JSON is rewritten after every run. ``--quick`` is a
smoke run (tiny task files and budgets; its records go to ``warm_start_quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml

from metaat.runtime import atomic_write_text

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent


class Domain(NamedTuple):
    """One domain's target task and budget. ``val_start``: where the validation points are carved out
    of the training split (None: the dataset's own ``val`` split)."""

    tasks: str
    data: str
    model: str
    threats: tuple[str, ...]
    epochs: int
    batch_size: int
    train_subset: int | None
    eval_n: int
    val_start: int | None


SENSOR_THREATS = ("linf:0.25", "l2:3", "spike:5,2", "drift:0.5")
IMAGE_THREATS = ("linf:0.1", "l2:1.5", "l1:10")
DOMAINS: dict[str, Domain] = {
    # the sensor study's recipe (benchmarks/sensor_study.py): watch, fcn-small, 4 threats, 10 epochs, batch 64;
    # monitor: every window of the validation subject
    "sensors": Domain("configs/tasks/sensors.yaml", "watch", "fcn-small", SENSOR_THREATS, 10, 64, None, 265, None),
    # Fashion-MNIST (no validation split): the first 3,000 training images train, 300 from index 50,000 monitor
    "images": Domain(
        "configs/tasks/images.yaml", "fashion-mnist", "cnn-small", IMAGE_THREATS, 4, 128, 3000, 300, 50000
    ),
}
QUICK_META = {"meta_iters": 2, "inner_steps": 1, "n": 64, "eval_n": 8, "batch_size": 16, "adapt_steps": [0]}
EVAL_STEPS = 10


def quick_task_file(domain: str, src: Path, runs: Path) -> Path:
    """A tiny copy of a task file (one model, one stage, a few points) for ``--quick``."""
    tf = yaml.safe_load(src.read_text(encoding="utf-8"))
    tf["train"].update(models=tf["train"]["models"][:1], stages=[2], datasets=tf["train"].get("datasets", [])[:1])
    tf["heldout"] = {k: v for k, v in tf["heldout"].items() if k == "threats"}
    tf["meta"] = {**tf.get("meta", {}), **QUICK_META}
    out = runs / "tasks" / f"{domain}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(tf, sort_keys=False), encoding="utf-8")
    return out


def pretrain_attacker(folder: Path, tasks: Path) -> dict[str, Any]:
    """What ``metaat meta-pretrain --tasks TASKS --out FOLDER --resume`` runs (in this process: the same
    library call, :func:`metaat.meta.crosstask.pretrain_tasks` with the CLI's reference attack), and a
    summary of the artifact's card. A saved attacker made from the same task file is reused."""
    from metaat.cli.meta import task_reference
    from metaat.meta.crosstask import pretrain_tasks
    from metaat.meta.tasks import load_task_file

    shown = [os.path.relpath(p, REPO) for p in (tasks, folder)]
    command = shlex.join(["metaat", "meta-pretrain", "--tasks", shown[0], "--out", shown[1], "--resume"])
    start = time.perf_counter()
    pretrain_tasks(
        load_task_file(REPO / tasks),
        folder,
        resume=True,
        reference=task_reference,
        command=command,
        log=lambda text: print(text, flush=True),
    )
    made = {"command": command, "wall_seconds_this_call": round(time.perf_counter() - start, 1)}
    return made | describe_attacker(folder)


def describe_attacker(folder: Path, tasks: Path | None = None) -> dict[str, Any]:
    """Where the artifact is, its checksum, and its card: the command that made it, task file, cost."""
    from metaat.meta.io import read_card
    from metaat.runtime import file_sha256

    card = read_card(folder)["cross_task"]
    return {
        "path": os.path.relpath(folder, REPO),
        "sha256": file_sha256(folder / "generator.safetensors"),
        "made_by": card.get("command"),
        "task_file": card["task_file"],
        "train_tasks": len(card["train_tasks"]),
        "train_datasets": card["task_file"]["train"]["datasets"],
        "cost": card["cost"],
        "heldout_success": {  # attack success rate on the artifact's held-out tasks (its card)
            task: {k: row[k]["success"] for k in ("pgd_same", "fgsm", "pgd10", "reference") if k in row}
            | {"learned_K0": row["learned"]["0"]["success"], "clean_correct": row["clean_correct"]}
            for task, row in card.get("heldout_results", {}).items()
        },
    }


def shape_attacker(artifact: Path, folder: Path, seed: int) -> Path:
    """An untrained attacker with the artifact's architecture (same spec, fresh seeded weights)."""
    from metaat.meta.io import load_generator, save_generator
    from metaat.meta.shared import ChannelSharedAttacker

    if not (folder / "generator.safetensors").exists():
        trained = load_generator(artifact)
        assert isinstance(trained, ChannelSharedAttacker)
        torch.manual_seed(seed)
        fresh = ChannelSharedAttacker(trained.spec)
        made = json.loads((artifact / "generator.json").read_text(encoding="utf-8"))["metadata"]["cross_task"]
        card = {"cross_task": {"domain": made["domain"], "rank": made["rank"], "untrained_copy_of": str(artifact)}}
        save_generator(fresh, folder, metadata=card)
    return folder


def train_arm(dom: Domain, seed: int, attacker: Path | None, run_dir: Path, threads: int) -> None:
    """``metaat train --defense metaat [-o attacker_path=...]`` on the domain's task (resumes a killed run)."""
    import metaat.data as data
    import metaat.defenses as defenses
    import metaat.models as models
    from metaat.runtime import seed_everything, set_threads
    from metaat.threats import ThreatModel
    from metaat.train import TrainConfig
    from metaat.train.checkpoint import has_checkpoint
    from metaat.train.entry import fit

    if (run_dir / "final").exists():
        return
    attacker_path = str(attacker) if attacker else None
    config = TrainConfig(
        data=dom.data,
        model=dom.model,
        defense="metaat",
        threats=dom.threats,
        epochs=dom.epochs,
        batch_size=dom.batch_size,
        lr=1e-3,
        seed=seed,
        eval_n=dom.eval_n,
        eval_steps=EVAL_STEPS,
        threads=threads,
        train_subset=dom.train_subset,
        options={"attacker_path": attacker_path},
    )
    set_threads(threads)
    meta = data.info(dom.data)
    threats = [ThreatModel.parse(t) for t in config.threats]
    if meta.box != (0.0, 1.0):
        threats = [t.with_box(*meta.box) for t in threats]
    defense = defenses.create("metaat", threats, **config.options)
    x, y = data.load(dom.data, "train", n=dom.train_subset)
    if dom.val_start is None:
        x_val, y_val = data.load(dom.data, "val", n=dom.eval_n)
    else:
        x_val, y_val = data.load(dom.data, "train", n=dom.eval_n, start=dom.val_start)
    seed_everything(seed)  # the model's initial weights depend on the seed only
    box = meta.box if meta.box != (0.0, 1.0) else None
    model = models.create(
        dom.model, meta.num_classes, meta.in_channels, meta.image_size, box=box, **dict(meta.model_kwargs)
    )
    resume = has_checkpoint(run_dir)
    result = fit(
        model, defense, x, y, config, run_dir, x_val, y_val, resume=resume, quiet=True, num_classes=meta.num_classes
    )
    if result.status != "completed":
        raise SystemExit(f"{run_dir}: training {result.status} ({result.message}); run again to resume")


def curve(run_dir: Path, n_train: int) -> list[dict[str, Any]]:
    """Per epoch: the monitor's clean / per-threat / union accuracy and cumulative passes per example."""
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    epochs = [r for r in map(json.loads, filter(str.strip, lines)) if r.get("type") == "epoch"]
    passes = [(r["cost"]["forward_examples"] + r["cost"]["backward_examples"]) / 2 / n_train for r in epochs]
    robust = [{k[7:]: v for k, v in r["eval"].items() if k.startswith("robust/") and "union" not in k} for r in epochs]
    return [  # train_acc: accuracy on the training batches' final adversarial examples (after the refinement)
        {"epoch": r["epoch"], "union": r["eval"]["robust/union"], "clean": r["eval"]["clean"], "robust": rob}
        | {"passes": p, "seconds": r["epoch_seconds"], "train_acc": r["train"]["acc"]}
        | {"refine_distill": r["train"].get("refine_distill")}  # learned step's distance to the refined one
        for r, p, rob in zip(epochs, passes, robust, strict=True)
    ]


def reach(warm: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first epoch of ``warm`` whose union is at least ``target`` (None: never)."""
    return next((r for r in warm if r["union"] >= target - 1e-9), None)


def summarise(runs: dict[str, Any], seeds: list[int], arms: list[str]) -> dict[str, Any]:
    """Per seed and on the seed-mean curves: each arm vs cold's final union, and the passes saved."""
    out: dict[str, Any] = {}
    keys = [f"seed{s}" for s in seeds if f"cold/seed{s}" in runs]
    mean: dict[str, list[dict[str, Any]]] = {}
    for arm in arms:
        curves = [runs[f"{arm}/{k}"]["curve"] for k in keys if f"{arm}/{k}" in runs]
        if curves and len(curves) == len(keys):
            n_ep = min(len(c) for c in curves)
            avg = [{k: sum(c[i][k] for c in curves) / len(curves) for k in ("union", "passes")} for i in range(n_ep)]
            mean[arm] = [{"epoch": i + 1, **row} for i, row in enumerate(avg)]
    for key, curves in [(k, {a: runs[f"{a}/{k}"]["curve"] for a in arms if f"{a}/{k}" in runs}) for k in keys] + [
        ("mean", mean)
    ]:
        cold = curves.get("cold")
        if not cold:
            continue
        final = cold[-1]
        row: dict[str, Any] = {"cold_final_union": final["union"], "cold_passes": final["passes"]}
        row["cold_mean_union"] = sum(r["union"] for r in cold) / len(cold)
        own = reach(cold, final["union"])
        row["cold_first_epoch_at_final"] = own["epoch"] if own else None
        for arm, c in curves.items():
            if arm == "cold" or len(c) < len(cold):
                continue
            hit = reach(c, final["union"])
            row[arm] = {
                "final_union": c[-1]["union"],
                "mean_union": sum(r["union"] for r in c) / len(c),
                "epoch_reached": hit["epoch"] if hit else None,
                "passes_at_reach": hit["passes"] if hit else None,
                "passes_saved": final["passes"] - hit["passes"] if hit else None,
                "fraction_saved": 1 - hit["passes"] / final["passes"] if hit else None,
            }
        out[key] = row
    out["mean_curves"] = mean
    return out


def save(path: Path, records: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(records, indent=2, sort_keys=True) + "\n")


def table(results: dict[str, Any]) -> str:
    """Markdown: per domain, the union per epoch (seed mean, each seed in brackets) and the summary."""
    lines: list[str] = []
    for name, dom in sorted(results["domains"].items(), key=lambda item: list(DOMAINS).index(item[0])):
        summ, runs, setup = dom.get("summary", {}), dom["runs"], dom["setup"]
        arms = [a for a in results["arms"] if any(k.startswith(a + "/") for k in runs)]
        seeds = [s for s in results["seeds"] if f"cold/seed{s}" in runs]
        if not summ.get("mean_curves"):
            continue
        threats = ", ".join(f"`{t}`" for t in setup["threats"])
        lines += [f"**{name}** (`{setup['data']}` / `{setup['model']}`; union of {threats}; monitor on "
                  f"{setup['eval_n']} validation points; seeds {', '.join(map(str, seeds))})", ""]  # fmt: skip
        lines += ["| epoch | passes / example | " + " | ".join(f"{a} union %" for a in arms) + " |"]
        lines += ["|---" * (len(arms) + 2) + "|"]
        for i, row in enumerate(summ["mean_curves"]["cold"]):
            cells = []
            for a in arms:
                per = [runs[f"{a}/seed{s}"]["curve"][i]["union"] for s in seeds if f"{a}/seed{s}" in runs]
                cells.append(f"{100 * sum(per) / len(per):.1f} ({', '.join(f'{100 * u:.1f}' for u in per)})")
            lines.append(f"| {row['epoch']} | {row['passes']:.1f} | " + " | ".join(cells) + " |")
        others = [a for a in arms if a != "cold"]
        head = ["seed", "cold final union %", "cold first reaches it"]
        head += [f"{a} reaches it at epoch (passes saved / example)" for a in others]
        head += [f"{a} − cold, union % averaged over epochs" for a in others]
        lines += ["", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for key in [f"seed{s}" for s in seeds] + ["mean"]:
            r = summ.get(key)
            if not r or not all(a in r for a in others):
                continue
            cells = [key, f"{100 * r['cold_final_union']:.1f}", str(r["cold_first_epoch_at_final"])]
            for a in others:
                e, saved, frac = (r[a][k] for k in ("epoch_reached", "passes_saved", "fraction_saved"))
                cells.append(f"{e} ({saved:.1f}, {100 * frac:.0f} %)" if e else "not reached")
            cells += [f"{100 * (r[a]['mean_union'] - r['cold_mean_union']):+.1f}" for a in others]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip()


START, END = "<!-- warm-start table -->", "<!-- /warm-start table -->"


def refresh(path: Path, page: Path | None, runs: Path) -> str:
    """Recompute the summaries of a results file from its curves and re-read its attackers' cards (saved
    back); return the tables and, with ``page``, write them between the page's markers."""
    results = json.loads(path.read_text(encoding="utf-8"))
    for name, dom in results["domains"].items():
        for key, run in dom["runs"].items():
            if (runs / name / key / "metrics.jsonl").exists():  # re-read the curves while the run folders exist
                run["curve"] = curve(runs / name / key, run["n_train"])
        if (REPO / dom["attacker"]["path"]).exists():
            dom["attacker"].update(describe_attacker(REPO / dom["attacker"]["path"]))
        dom["summary"] = summarise(dom["runs"], results["seeds"], results["arms"])
    save(path, results)
    text = table(results)
    if page is not None:
        body = page.read_text(encoding="utf-8")
        if START not in body or END not in body:
            raise SystemExit(f"{page}: no {START} ... {END} markers")
        head, rest = body.split(START, 1)
        atomic_write_text(page, head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1])
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--arms", nargs="+", default=["cold", "warm"], choices=["cold", "warm", "shape"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--attacker", nargs="*", default=[], metavar="DOMAIN=DIR", help="an existing artifact")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "warm_start"))
    parser.add_argument("--out", default=None, help="results JSON (default results/warm_start[_quick].json)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny task files, 1 epoch, few points")
    parser.add_argument("--table", metavar="JSON", help="print the tables of a results file and exit")
    parser.add_argument("--docs", metavar="PAGE", help="with --table: replace the page's table between its markers")
    args = parser.parse_args(argv)
    if args.table:
        print(refresh(Path(args.table), Path(args.docs) if args.docs else None, Path(args.runs)))
        return
    from metaat.runtime import environment, hardware_summary, set_threads

    set_threads(args.threads)
    runs = Path(args.runs) / ("quick" if args.quick else "")
    out = Path(args.out or ROOT / "results" / ("warm_start_quick.json" if args.quick else "warm_start.json"))
    records: dict[str, Any] = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
    command = "OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/warm_start.py " + shlex.join(sys.argv[1:])
    records.update(
        commands=list(dict.fromkeys([*records.get("commands", []), command])),
        hardware=hardware_summary(),
        environment=environment(),
        threads=args.threads,
        seeds=sorted(set(records.get("seeds", [])) | set(args.seeds)),
        arms=[a for a in ("cold", "warm", "shape") if a in set(records.get("arms", [])) | set(args.arms)],
        protocol={
            "monitor": f"metaat's per-epoch monitor: PGD-{EVAL_STEPS} per threat (fixed seed) and their per-point "
            "union, on validation points never trained on; never a test number",
            "passes": "cumulative (forward + backward) / 2 per training example, the loop's cost meter",
            "same_seed": "cold and warm share the seed: model init, data order and attack noise",
            "reach": "first epoch whose monitored union >= the cold run's final union; passes saved = cold's "
            "total passes - passes at that epoch",
        },
    )
    records.setdefault("domains", {})
    for name in args.domains:
        dom = DOMAINS[name]
        if args.quick:
            dom = dom._replace(
                epochs=1, eval_n=16, train_subset=256, tasks=str(quick_task_file(name, REPO / dom.tasks, runs))
            )
        entry = records["domains"].setdefault(name, {"runs": {}})
        entry["setup"] = {**dom._asdict(), "eval_steps": EVAL_STEPS, "defense": "metaat (configs/metaat.yaml options)"}
        entry["setup"]["validation"] = (
            f"{dom.eval_n} training points from index {dom.val_start} (the first {dom.train_subset} train)"
            if dom.val_start is not None
            else f"the dataset's val split, first {dom.eval_n} points"
        )
        given = dict(a.split("=", 1) for a in args.attacker)
        artifact = Path(given[name]) if name in given else runs / "attackers" / name
        given_or_made = describe_attacker if name in given else pretrain_attacker
        entry["attacker"] = given_or_made(artifact, REPO / dom.tasks)
        entry["attacker"]["target_dataset_in_training_tasks"] = dom.data in entry["attacker"]["train_datasets"]
        save(out, records)
        import metaat.data as data

        n_train = data.load(dom.data, "train", n=dom.train_subset)[1].shape[0]
        for seed in args.seeds:
            for arm in args.arms:
                path = (
                    shape_attacker(artifact, runs / "attackers" / f"{name}-shape{seed}", seed)
                    if arm == "shape"
                    else (artifact if arm == "warm" else None)
                )
                run_dir = runs / name / arm / f"seed{seed}"
                start = time.perf_counter()
                print(f"[{name}] {arm} seed {seed} -> {run_dir}", flush=True)
                train_arm(dom, seed, path, run_dir, args.threads)
                entry["runs"][f"{arm}/seed{seed}"] = {
                    "attacker_path": os.path.relpath(path, REPO) if path else None,
                    "command": command,
                    "curve": curve(run_dir, n_train),
                    "n_train": n_train,
                    "wall_seconds_this_call": round(time.perf_counter() - start, 1),
                }
                entry["summary"] = summarise(entry["runs"], records["seeds"], records["arms"])
                save(out, records)
    print(table(records))


if __name__ == "__main__":
    main()
