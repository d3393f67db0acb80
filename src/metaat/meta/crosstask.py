"""Meta-pretraining over a task file: one channel-shared attacker for every task of a domain, measured
on the tasks it never saw (first-order MAML / REPTILE: Finn, Abbeel, Levine 2017; Nichol, Achiam,
Schulman 2018).

1. Targets: for every (dataset, architecture, defense) of the training tasks and of the held-out
   tasks, a classifier is trained on the dataset's training points (:func:`~metaat.meta.pretrain.train_target`)
   and frozen at each stage. Each target has its own seed, so held-out targets do not depend on what
   was trained before them.
2. Meta-training: each iteration samples a training task (uniformly), adapts a copy of the
   :class:`~metaat.meta.shared.ChannelSharedAttacker` by ``inner_steps`` ascent steps on batches of
   that task's dataset, and moves the attacker towards the copy (REPTILE) or along the copy's query
   gradient (FOMAML) — as :func:`metaat.meta.pretrain.pretrain` does on one dataset.
3. The artifact (safetensors + JSON card, :func:`metaat.meta.io.save_generator`) is saved, then every
   held-out task is evaluated (:mod:`metaat.meta.heldout`) and the card re-written after each one; a
   rerun with ``resume=True`` reuses a saved attacker made from the same task file and skips the
   held-out tasks already in its card.

Cost is counted in target passes (forward+backward of one example) and wall seconds per phase.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from metaat.meta.generators import LearnedAttacker
from metaat.meta.heldout import Reference, apgd_reference, evaluate_heldout_task
from metaat.meta.io import SPEC_NAME, load_generator, save_generator
from metaat.meta.pretrain import Task, _batches, adapt, attack_loss, reptile_step, train_target
from metaat.meta.shared import ChannelSharedAttacker, SharedAttackerSpec
from metaat.meta.tasks import TaskFile, TaskId, threat_for
from metaat.runtime import check_out_dir, derive_seed, make_generator

Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, tuple[float, float]]
"""``(x_train, y_train, x_eval, y_eval, num_classes, box)`` of one dataset."""
Loader = Callable[[str, TaskFile], Split]
CARD_KEY = "cross_task"


def load_split(name: str, tf: TaskFile) -> Split:
    """A dataset's training points (a seeded random subset of ``meta.n``) and evaluation points."""
    import metaat.data as datasets

    info = datasets.info(name)
    m = tf.meta
    x, y = datasets.load(name, "train")
    order = torch.randperm(x.shape[0], generator=make_generator(derive_seed(m.seed, "split", name) % 2**31))
    x, y = x[order], y[order]
    if m.eval_split == "train":
        x_eval, y_eval, x, y = x[: m.eval_n], y[: m.eval_n], x[m.eval_n :], y[m.eval_n :]
    else:
        x_eval, y_eval = datasets.load(name, m.eval_split)
        x_eval, y_eval = x_eval[: m.eval_n], y_eval[: m.eval_n]
    return x[: m.n], y[: m.n], x_eval, y_eval, info.num_classes, tuple(info.box)  # type: ignore[return-value]


def target_pool(
    tf: TaskFile, tasks: list[TaskId], data: dict[str, Split], device: torch.device, log: Callable[[str], None]
) -> tuple[dict[tuple[str, str, str, int], nn.Module], int]:
    """Frozen targets keyed by (dataset, model, defense, stage), and the target-training passes spent."""
    pool: dict[tuple[str, str, str, int], nn.Module] = {}
    passes = 0
    stages = tf.train.stages
    for dataset, model_name, defense in dict.fromkeys(t.target for t in tasks):
        x, y, _, _, num_classes, box = data[dataset]
        threats = [threat_for(t, box) for t in tf.train.threats]
        gen = make_generator(derive_seed(tf.meta.seed, "target", dataset, model_name, defense) % 2**31)
        torch.manual_seed(derive_seed(tf.meta.seed, "init", dataset, model_name, defense) % 2**31)
        frozen = train_target(
            model_name,
            defense,
            stages,
            x.to(device),
            y.to(device),
            num_classes,
            threats,
            gen,
            lr=tf.meta.target_lr,
            batch_size=tf.meta.batch_size,
        )
        for stage, model in frozen:
            pool[(dataset, model_name, defense, stage)] = model
        passes += stages[-1] * min(tf.meta.batch_size, x.shape[0]) * (2 if defense == "fast" else 1)
        log(f"trained target {dataset}/{model_name}/{defense} up to step {stages[-1]}")
    return pool, passes


def make_task(tid: TaskId, pool: dict[tuple[str, str, str, int], nn.Module], data: dict[str, Split]) -> Task:
    return Task(
        str(tid), pool[(tid.dataset, tid.model, tid.defense, tid.stage)], threat_for(tid.threat, data[tid.dataset][5])
    )


def meta_train(
    attacker: nn.Module,
    tasks: list[tuple[TaskId, Task]],
    data: dict[str, Split],
    tf: TaskFile,
    device: torch.device,
    log: Callable[[str], None],
) -> tuple[list[float], int]:
    """REPTILE / FOMAML over the training tasks; returns the attack-loss history and the passes spent."""
    m = tf.meta
    gen = make_generator(derive_seed(m.seed, "meta") % 2**31)
    streams = {name: _batches(split[0].shape[0], m.batch_size, gen) for name, split in data.items()}
    outer = torch.optim.Adam(attacker.parameters(), lr=m.inner_lr) if m.algorithm == "fomaml" else None
    history: list[float] = []
    passes = 0
    for it in range(m.meta_iters):
        tid, task = tasks[int(torch.randint(len(tasks), (1,), generator=gen))]
        x_all, y_all = data[tid.dataset][0], data[tid.dataset][1]

        def batch(
            x_all: torch.Tensor = x_all, y_all: torch.Tensor = y_all, name: str = tid.dataset
        ) -> tuple[torch.Tensor, torch.Tensor]:
            idx = next(streams[name])
            return x_all[idx].to(device), y_all[idx].to(device)

        fast, value = adapt(attacker, task, batch, m, gen)
        passes += m.inner_steps * (m.attacker_steps + 1) * min(m.batch_size, x_all.shape[0])
        if outer is None:
            reptile_step(attacker, fast, m.meta_lr)
        else:
            xb, yb = batch()
            query = attack_loss(fast, task, xb, yb, m, gen)
            grads = torch.autograd.grad(-query, list(fast.parameters()), allow_unused=True)
            outer.zero_grad(set_to_none=True)
            for p, g in zip(attacker.parameters(), grads, strict=True):
                p.grad = g
            outer.step()
            value = float(query.detach())
            passes += (m.attacker_steps + 1) * xb.shape[0]
        history.append(value)
        if (it + 1) % max(1, m.meta_iters // 10) == 0:
            recent = history[-20:]
            log(f"meta-iteration {it + 1}/{m.meta_iters}: attack CE {sum(recent) / len(recent):.3f}")
    return history, passes


def _resumable(out_dir: Path, tf: TaskFile) -> tuple[ChannelSharedAttacker, dict[str, Any]] | None:
    """The attacker and card saved in ``out_dir`` by an earlier run of the same task file, if any."""
    sidecar = out_dir / SPEC_NAME
    if not sidecar.is_file():
        return None
    card = json.loads(sidecar.read_text(encoding="utf-8")).get("metadata", {}).get(CARD_KEY)
    if not isinstance(card, dict) or card.get("task_file") != json.loads(json.dumps(tf.to_dict())):
        return None
    attacker = load_generator(out_dir)
    return (attacker, card) if isinstance(attacker, ChannelSharedAttacker) else None


def pretrain_tasks(
    tf: TaskFile,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = lambda _: None,
    reference: Reference | None = apgd_reference,
    loader: Loader = load_split,
    resume: bool = False,
    command: str | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[ChannelSharedAttacker, dict[str, Any]]:
    """Meta-pretrain a channel-shared attacker over ``tf``'s training tasks, evaluate it on the held-out
    tasks and (``out_dir``) save it with its card. Returns the attacker and the card."""
    dev = torch.device(device)
    folder = Path(out_dir).expanduser() if out_dir is not None else None
    previous = _resumable(folder, tf) if (folder is not None and resume) else None
    if folder is not None and previous is None:
        check_out_dir(folder)  # before the target training, not at the save after it
    t0 = time.perf_counter()
    train_ids, heldout_ids = tf.train_tasks(), tf.heldout_tasks()
    names = list(dict.fromkeys(t.dataset for t in train_ids + heldout_ids))
    data = {name: loader(name, tf) for name in names}
    pool, target_passes = target_pool(tf, train_ids + heldout_ids, data, dev, log)
    t_targets = time.perf_counter() - t0
    train_tasks = [(tid, make_task(tid, pool, data)) for tid in train_ids]
    rank = next(iter(data.values()))[0].dim() - 2
    if previous is not None:
        attacker, card = previous
        attacker = attacker.to(dev)
        log(f"resuming: attacker from {folder}, {len(card.get('heldout_results', {}))} held-out task(s) done")
    else:
        torch.manual_seed(derive_seed(tf.meta.seed, "attacker") % 2**31)
        spec = SharedAttackerSpec(width=tf.meta.width, depth=tf.meta.depth, rank=rank)
        attacker = ChannelSharedAttacker(spec).to(dev)
        t1 = time.perf_counter()
        history, meta_passes = meta_train(attacker, train_tasks, data, tf, dev, log)
        attacker.eval()
        card = {
            "task_file": json.loads(json.dumps(tf.to_dict())),
            "domain": tf.domain,
            "rank": rank,
            "channel_shared": True,
            "distribution": {
                "datasets": {
                    n: {
                        "channels": int(data[n][0].shape[1]),
                        "length": list(data[n][0].shape[2:]),
                        "train_points": int(data[n][0].shape[0]),
                        "eval_points": int(data[n][2].shape[0]),
                    }
                    for n in names
                },
                "sampling": "uniform over training tasks",
            },
            "train_tasks": [str(t) for t in train_ids],
            "heldout_tasks": [str(t) for t in heldout_ids],
            "cost": {
                "target_passes": target_passes,
                "meta_passes": meta_passes,
                "target_seconds": round(t_targets, 2),
                "meta_seconds": round(time.perf_counter() - t1, 2),
            },
            "final_attack_ce": sum(history[-20:]) / max(1, len(history[-20:])),
            "heldout_results": {},
        }
        if command:
            card["command"] = command
        if folder is not None:
            save_generator(attacker, folder, metadata={"trained_by": "metaat meta-pretrain --tasks", CARD_KEY: card})
    results: dict[str, Any] = card.setdefault("heldout_results", {})
    gen = make_generator(derive_seed(tf.meta.seed, "adapt") % 2**31)
    for tid in heldout_ids:
        if str(tid) in results:
            continue
        task = make_task(tid, pool, data)
        x_tr, y_tr, x_ev, y_ev = data[tid.dataset][:4]
        stream = _batches(x_tr.shape[0], tf.meta.batch_size, gen)
        batches = [(x_tr[i].to(dev), y_tr[i].to(dev)) for i in (next(stream) for _ in range(max(tf.meta.adapt_steps)))]
        t2 = time.perf_counter()
        row = evaluate_heldout_task(
            attacker,
            task,
            x_ev.to(dev),
            y_ev.to(dev),
            batches,
            tf.meta,
            tf.meta.adapt_steps,
            seed=tf.meta.seed,
            reference=reference,
            log=log,
        )
        row["seconds"] = round(time.perf_counter() - t2, 2)
        results[str(tid)] = row
        if folder is not None:  # the card grows task by task: an interrupted run keeps what it measured
            save_generator(attacker, folder, metadata={"trained_by": "metaat meta-pretrain --tasks", CARD_KEY: card})
        if on_progress is not None:
            on_progress(card)
    card["seconds_this_run"] = round(time.perf_counter() - t0, 2)
    if folder is not None:
        save_generator(attacker, folder, metadata={"trained_by": "metaat meta-pretrain --tasks", CARD_KEY: card})
    return attacker, card


def as_learned_attacker(attacker: nn.Module, in_channels: int) -> LearnedAttacker:
    """A plain :class:`LearnedAttacker` for ``in_channels`` (a shared attacker is specialised)."""
    if isinstance(attacker, ChannelSharedAttacker):
        return attacker.specialise(in_channels)
    return cast(LearnedAttacker, attacker)
