"""The one training loop, for every defense.

``fit`` trains a model with a defense on in-memory tensors; ``train`` builds data, model and
defense from a :class:`~metaat.train.config.TrainConfig` and calls ``fit``. Per step: the
learning rate from the schedule, the defense's loss on the adversarial share of the batch mixed
with clean cross-entropy on the clean share (``clean_ratio``), a finite-loss check, backward,
optional gradient clipping, the optimizer step. Per epoch: clean and PGD accuracy on a fixed
held-out batch (not counted as training cost), a line in ``metrics.jsonl``, the catastrophic-
overfitting guard, an atomic checkpoint. SIGINT/SIGTERM finish the current step, save and return.

Determinism: each epoch's data order is a permutation drawn from a generator seeded by
``(seed, epoch)`` — nothing to store, the same on every rank — and the attack generator's state
is checkpointed, so a run killed mid-epoch and resumed from its last checkpoint ends bit-exact
with an uninterrupted one (CPU, same thread count).
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from metaat.attacks import create as create_attack
from metaat.defenses import Defense, TrainContext
from metaat.models import CheckpointError, get_spec, save_model
from metaat.runtime import (
    check_out_dir,
    environment,
    make_generator,
    resolve_device,
    seed_everything,
    set_deterministic,
    set_threads,
)
from metaat.train import distributed
from metaat.train.checkpoint import (
    has_checkpoint,
    load_module_tensors,
    load_optimizer_state,
    load_rng_state,
    module_tensors,
    optimizer_state,
    read_checkpoint,
    rng_state,
    write_checkpoint,
)
from metaat.train.config import TrainConfig
from metaat.train.cost import CostMeter
from metaat.train.schedules import lr_at
from metaat.train.tracking import Tracker, check_tracker, create_tracker, flatten

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
FINAL = "final"
EVAL_CHUNK = 250
# Config keys that may change when a run is resumed (everything else must match the checkpoint).
RESUMABLE_CHANGES = ("epochs", "threads", "device", "tracker", "log_every", "checkpoint_every")


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or gradient); the last good checkpoint is intact."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """The outcome of :func:`fit` / :func:`train`.

    ``status``: ``completed``, ``interrupted`` (signal; resume it) or ``stopped`` (the
    catastrophic-overfitting guard rolled back and ended the run). ``metrics`` is the last epoch's
    metrics line; ``final_model`` the ``final/`` folder (``load_model`` reads it), None when
    interrupted.
    """

    run_dir: Path
    status: str
    epochs_completed: int
    global_step: int
    metrics: dict[str, Any]
    cost: dict[str, Any]
    final_model: Path | None
    message: str = ""


# -- small pure helpers -------------------------------------------------------------------------------


def derived_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (e.g. ``("data", seed, epoch)``)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of ``epoch``: a permutation of ``range(n)`` fixed by ``(seed, epoch)``."""
    return torch.randperm(n, generator=make_generator(derived_seed("data", seed, epoch)))


def build_optimizer(config: TrainConfig, params: Iterator[nn.Parameter] | list[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD (with momentum) or Adam, as the config says (the learning rate is set every step)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: tuple[Any, ...],
    *,
    steps: int = 20,
    seed: int = 0,
    info: distributed.DistInfo | None = None,
) -> dict[str, float]:
    """Clean accuracy and PGD-``steps`` accuracy per threat (and their union) on ``(x, y)``.

    The same PGD noise every call (fixed seed), so epochs are comparable. A point counts as robust
    only if it is also classified correctly when clean. Under DDP each rank takes a share and the
    counts are summed.
    """
    info = info or distributed.DistInfo()
    device = next(model.parameters()).device
    xs, ys = x[info.rank :: info.world_size], y[info.rank :: info.world_size]
    was_training = model.training
    model.eval()
    clean_ok = torch.zeros(len(ys), dtype=torch.bool)
    robust_ok = torch.zeros(len(threats), len(ys), dtype=torch.bool)
    try:
        for start in range(0, len(ys), EVAL_CHUNK):
            xb, yb = xs[start : start + EVAL_CHUNK].to(device), ys[start : start + EVAL_CHUNK].to(device)
            with torch.no_grad():
                clean_ok[start : start + len(yb)] = (model(xb).argmax(dim=1) == yb).cpu()
            for i, threat in enumerate(threats):
                attack = create_attack("pgd", threat=threat, steps=steps)
                gen = make_generator(derived_seed("eval", seed, i, start))
                x_adv = attack(model, xb, yb, generator=gen)
                with torch.no_grad():
                    robust_ok[i, start : start + len(yb)] = (model(x_adv).argmax(dim=1) == yb).cpu()
    finally:
        model.train(was_training)
    robust_ok &= clean_ok
    counts = torch.cat([clean_ok.sum()[None], robust_ok.sum(dim=1), robust_ok.all(dim=0).sum()[None]]).double()
    counts = distributed.all_reduce_sum(counts, info)
    n = float(distributed.all_reduce_sum(torch.tensor([float(len(ys))], dtype=torch.float64), info))
    out = {"n": n, "clean": float(counts[0]) / n}
    for i, threat in enumerate(threats):
        out[f"robust/{threat}"] = float(counts[1 + i]) / n
    if len(threats) > 1:
        out["robust/union"] = float(counts[-1]) / n
    return out


def worst_robust(eval_metrics: dict[str, float]) -> float | None:
    """The lowest per-threat robust accuracy (what the overfitting guard watches)."""
    values = [v for k, v in eval_metrics.items() if k.startswith("robust/") and k != "robust/union"]
    return min(values) if values else None


# -- the loop -------------------------------------------------------------------------------------------


class _Trainer:
    """State of one run (model, optimizer, counters); ``run()`` trains, checkpoints and returns."""

    def __init__(
        self,
        model: nn.Module,
        defense: Defense,
        x: torch.Tensor,
        y: torch.Tensor,
        config: TrainConfig,
        run_dir: Path,
        x_eval: torch.Tensor | None,
        y_eval: torch.Tensor | None,
        *,
        num_classes: int,
        device: torch.device,
        info: distributed.DistInfo,
        quiet: bool | None,
    ) -> None:
        self.cfg, self.run_dir, self.info, self.device = config, run_dir, info, device
        self.model, self.defense = model.to(device), defense
        self.x, self.y = x, y
        use_eval = config.eval_n > 0 and x_eval is not None and y_eval is not None
        self.x_eval: torch.Tensor | None = x_eval if use_eval else None
        self.y_eval: torch.Tensor | None = y_eval if use_eval else None
        self.num_classes = num_classes
        self.console = Console(stderr=True)
        self.quiet = bool(quiet)
        # quiet=True: silent; False: bars even off a terminal; None: bars on a terminal, epoch lines always.
        self.show_bars = info.is_main and (quiet is False or (quiet is None and self.console.is_terminal))

        defense.setup(self.model, device, num_classes, tuple(x.shape[1:]))
        self.optimizer = build_optimizer(config, list(self.model.parameters()))
        self.meter = CostMeter()
        self.hook = self.meter.attach(self.model)
        self.net = distributed.wrap_model(self.model, info, device)
        self.generator = make_generator(derived_seed("attack", config.seed, info.rank))
        n_rank = len(distributed.shard(torch.arange(len(y)), info))
        if n_rank == 0:
            raise ValueError(
                f"no training data for rank {info.rank}: {len(y)} examples for {info.world_size} processes"
            )
        self.steps_per_epoch = math.ceil(n_rank / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.ctx = TrainContext(
            threats=defense.threats,
            generator=self.generator,
            device=device,
            steps_per_epoch=self.steps_per_epoch,
            total_epochs=config.epochs,
            num_classes=num_classes,
            rank=info.rank,
            world_size=info.world_size,
        )
        self.guard_on = self.x_eval is not None and (
            config.fo_overfit_guard if config.fo_overfit_guard is not None else defense.single_step
        )
        # Counters and accumulators: everything here goes into the checkpoint.
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}
        self.epoch_seconds = 0.0
        self.metrics_lines = 0
        self.last_metrics: dict[str, Any] = {}
        self.best_robust: float | None = None
        self.last_good: dict[str, torch.Tensor] | None = None
        self.last_good_epoch: int | None = None
        self.status = "running"
        self.stop_requested = False
        self.tracker: Tracker | None = None

    # -- checkpoint ----------------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Checkpoint the current state (all ranks take part; rank 0 writes)."""
        tensors, opt_meta = optimizer_state(self.optimizer, "optim.model")
        tensors.update(module_tensors(self.defense.modules(), "defense.module"))
        defense_opts: dict[str, Any] = {}
        for name, opt in self.defense.optimizers().items():
            t, meta = optimizer_state(opt, f"optim.defense.{name}")
            tensors.update(t)
            defense_opts[name] = meta
        local_rng, rng_meta = rng_state({"attack": self.generator}, cuda=self.device.type == "cuda")
        keys = sorted(local_rng)
        if any(other != keys for other in distributed.gather_json(keys, self.info)):
            raise TrainingError(f"ranks hold different random-generator states ({keys} on rank {self.info.rank})")
        for key in keys:
            for rank, value in enumerate(distributed.gather_tensor(local_rng[key], self.info)):
                tensors[f"rank{rank}.{key}"] = value
        if self.last_good is not None:
            tensors.update({f"guard.model.{k}": v for k, v in self.last_good.items()})
        state = {
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.info.world_size,
            "status": self.status,
            "optimizer": opt_meta,
            "defense": {
                "name": self.defense.name,
                "config": defense_config(self.defense),
                "state": distributed.gather_json(self.defense.state_dict(), self.info),
                "optimizers": defense_opts,
            },
            "rng": distributed.gather_json(rng_meta, self.info),
            "cost": self.meter.to_dict(),
            "accumulators": {"sums": self.sums, "counts": self.counts, "epoch_seconds": self.epoch_seconds},
            "guard": {"best_robust": self.best_robust, "last_good_epoch": self.last_good_epoch},
            "metrics_lines": self.metrics_lines,
            "last_metrics": self.last_metrics,
        }
        path = write_checkpoint(self.run_dir, self.model, tensors, state) if self.info.is_main else None
        distributed.barrier(self.info)
        return path

    def restore(self) -> None:
        """Load the run folder's checkpoint into this trainer (resume)."""
        ckpt = read_checkpoint(self.run_dir)
        state, tensors = ckpt.state, ckpt.tensors
        saved = TrainConfig.from_dict(state["config"])
        # what the defense was built with, every option resolved (checkpoints from before 2026-11-28
        # have only the options given, and are compared by those)
        saved_defense = state["defense"].get("config")
        free = set(RESUMABLE_CHANGES) | ({"options"} if saved_defense is not None else set())
        changed = [
            f"{k} (checkpoint {getattr(saved, k)!r}, now {getattr(self.cfg, k)!r})"
            for k in saved.to_dict()
            if k not in free and getattr(saved, k) != getattr(self.cfg, k)
        ]
        if changed:
            raise ValueError(f"cannot resume {self.run_dir} with a different " + "; ".join(changed))
        if saved_defense is not None:
            now = defense_config(self.defense)
            diff = sorted(k for k in set(saved_defense) | set(now) if saved_defense.get(k) != now.get(k))
            if diff:
                fields = "; ".join(f"{k}: checkpoint {saved_defense.get(k)!r}, now {now.get(k)!r}" for k in diff)
                raise ValueError(
                    f"cannot resume {self.run_dir}: defense {self.defense.name} would now be built with another "
                    f"configuration ({fields}); a default may have changed since the run started: resume it with "
                    "its saved config (metaat train --resume, or metaat.train.resume_run), which pins those options"
                )
        if state["world_size"] != self.info.world_size:
            raise ValueError(
                f"{ckpt.path} was written by {state['world_size']} process(es); resume it with the same number"
            )
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(
                f"{ckpt.path} has {state['steps_per_epoch']} steps per epoch but this data gives "
                f"{self.steps_per_epoch}: resume with the same data, subset and batch size"
            )
        try:
            self.model.load_state_dict(ckpt.model_state, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{ckpt.path}: model weights do not match the model: {err}") from err
        load_optimizer_state(self.optimizer, tensors, state["optimizer"], "optim.model")
        load_module_tensors(self.defense.modules(), tensors, "defense.module")
        for name, opt in self.defense.optimizers().items():
            load_optimizer_state(opt, tensors, state["defense"]["optimizers"][name], f"optim.defense.{name}")
        self.defense.load_state_dict(state["defense"]["state"][self.info.rank])
        marker = f"rank{self.info.rank}."
        local = {k[len(marker) :]: v for k, v in tensors.items() if k.startswith(marker)}
        load_rng_state(local, state["rng"][self.info.rank], {"attack": self.generator})
        self.meter.load_dict(state["cost"])
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        acc = state["accumulators"]
        self.sums, self.counts = dict(acc["sums"]), dict(acc["counts"])
        self.epoch_seconds = float(acc["epoch_seconds"])
        self.best_robust = state["guard"]["best_robust"]
        self.last_good_epoch = state["guard"]["last_good_epoch"]
        guard = {k[len("guard.model.") :]: v for k, v in tensors.items() if k.startswith("guard.model.")}
        self.last_good = guard or None
        self.metrics_lines = int(state["metrics_lines"])
        self.last_metrics = dict(state["last_metrics"])
        self.status = state["status"]
        if self.info.is_main:
            truncate_lines(self.run_dir / METRICS, self.metrics_lines)

    # -- logging ----------------------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl (rank 0)."""
        self.metrics_lines += 1
        if not self.info.is_main:
            return
        with (self.run_dir / METRICS).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def say(self, text: str) -> None:
        if self.info.is_main and not self.quiet:
            self.console.print(text, highlight=False, soft_wrap=True)

    # -- one step -----------------------------------------------------------------------------------
    def train_step(self, xb: torch.Tensor, yb: torch.Tensor, epoch: int, step: int) -> dict[str, float]:
        cfg, ctx = self.cfg, self.ctx
        ctx.epoch, ctx.step, ctx.timings = epoch, step, {}
        lr = lr_at(cfg.schedule, cfg.lr, self.global_step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        start = time.perf_counter()
        self.net.train()
        b = len(yb)
        n_clean = int(round(cfg.clean_ratio * b))
        metrics: dict[str, float] = {}
        loss = torch.zeros((), device=self.device)
        if n_clean < b:
            adv_loss, metrics = self.defense(self.net, xb[n_clean:], yb[n_clean:], ctx)
            metrics = dict(metrics)
            loss = loss + (b - n_clean) / b * adv_loss
        if n_clean > 0:
            logits = self.net(xb[:n_clean])
            clean_loss = F.cross_entropy(logits, yb[:n_clean])
            loss = loss + n_clean / b * clean_loss
            metrics["clean_loss"] = float(clean_loss.detach())
            metrics["clean_acc"] = float((logits.detach().argmax(dim=1) == yb[:n_clean]).float().mean())
        value = float(loss.detach())
        metrics["loss"] = value
        if distributed.any_rank(not math.isfinite(value), self.info):
            self.fail_non_finite(f"non-finite training loss ({value})", epoch, step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if not math.isfinite(grad_norm):
            self.fail_non_finite(f"non-finite gradient norm ({grad_norm})", epoch, step)
        metrics["grad_norm"] = grad_norm
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        attack = ctx.timings.get("attack", 0.0)
        self.meter.attack_seconds += attack
        self.meter.update_seconds += elapsed - attack
        self.meter.train_examples += b
        self.epoch_seconds += elapsed
        for key, v in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + v * b
            self.counts[key] = self.counts.get(key, 0.0) + b
        metrics["lr"] = lr
        return metrics

    def fail_non_finite(self, what: str, epoch: int, step: int) -> None:
        where = f"epoch {epoch + 1} step {step + 1}"
        self.log({"type": "event", "event": "non_finite", "epoch": epoch + 1, "step": step + 1, "what": what})
        last = self.run_dir / "checkpoint"
        kept = (
            f"the last good checkpoint {last} is intact"
            if has_checkpoint(self.run_dir)
            else "no checkpoint had been written yet"
        )
        raise TrainingError(f"{what} at {where}; training stopped, {kept} (try a lower --lr or --grad-clip)")

    # -- one epoch end ------------------------------------------------------------------------------
    def end_epoch(self, epoch: int) -> None:
        train_metrics = {k: self.sums[k] / self.counts[k] for k in sorted(self.sums)}
        eval_metrics: dict[str, float] = {}
        if self.x_eval is not None and self.y_eval is not None:
            start = time.perf_counter()
            with self.meter.pause():
                eval_metrics = evaluate(
                    self.model,
                    self.x_eval,
                    self.y_eval,
                    self.defense.threats,
                    steps=self.cfg.eval_steps,
                    seed=self.cfg.seed,
                    info=self.info,
                )
            self.meter.eval_seconds += time.perf_counter() - start
        record = {
            "type": "epoch",
            "epoch": epoch + 1,
            "global_step": self.global_step,
            "lr": lr_at(self.cfg.schedule, self.cfg.lr, max(0, self.global_step - 1), self.total_steps),
            "train": train_metrics,
            "eval": eval_metrics,
            "cost": self.meter.to_dict(),
            "epoch_seconds": self.epoch_seconds,
        }
        self.log(record)
        self.last_metrics = record
        if self.tracker is not None:
            self.tracker.log_metrics(flatten({k: record[k] for k in ("train", "eval", "cost", "lr")}), epoch + 1)
        self.say(self.epoch_line(record))
        self.guard(epoch, eval_metrics)
        self.defense.on_epoch_end(epoch, flatten({"train": train_metrics, "eval": eval_metrics}))
        self.sums, self.counts, self.epoch_seconds = {}, {}, 0.0

    def epoch_line(self, record: dict[str, Any]) -> str:
        train, ev = record["train"], record["eval"]
        parts = [f"epoch {record['epoch']}/{self.cfg.epochs}", f"loss {train.get('loss', float('nan')):.4f}"]
        if "acc" in train:
            parts.append(f"train acc {100 * train['acc']:.1f}%")
        if ev:
            parts.append(f"clean {100 * ev['clean']:.1f}%")
            parts += [f"{k[len('robust/') :]} {100 * v:.1f}%" for k, v in ev.items() if k.startswith("robust/")]
        parts.append(f"{record['cost']['passes_per_example']:.2f} passes/ex, {record['epoch_seconds']:.1f} s")
        return " | ".join(parts)

    def guard(self, epoch: int, eval_metrics: dict[str, float]) -> None:
        """Catastrophic-overfitting guard (Wong et al. 2020): roll back when PGD accuracy collapses."""
        if not self.guard_on:
            return
        robust = worst_robust(eval_metrics)
        if robust is None:
            return
        if self.best_robust is not None and self.best_robust - robust > self.cfg.fo_overfit_drop:
            if self.last_good is not None:
                self.model.load_state_dict(self.last_good)
            self.status = "stopped"
            event = {
                "type": "event",
                "event": "catastrophic_overfitting",
                "epoch": epoch + 1,
                "robust": robust,
                "best_robust": self.best_robust,
                "rolled_back_to_epoch": self.last_good_epoch,
            }
            self.log(event)
            self.say(
                f"catastrophic overfitting at epoch {epoch + 1}: PGD accuracy {100 * robust:.1f}% vs best "
                f"{100 * self.best_robust:.1f}%; rolled back to epoch {self.last_good_epoch} and stopped"
            )
            return
        self.best_robust = robust if self.best_robust is None else max(self.best_robust, robust)
        self.last_good = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        self.last_good_epoch = epoch + 1

    # -- the run ------------------------------------------------------------------------------------
    def progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.show_bars,
        )

    def run(self) -> TrainResult:
        cfg, info = self.cfg, self.info
        if self.status in ("completed", "stopped") and (self.status == "stopped" or self.epoch >= cfg.epochs):
            return self.result(f"nothing to do: the run is already {self.status}")
        self.status = "running"
        if info.is_main:
            self.tracker = create_tracker(cfg.tracker, self.run_dir)
            self.tracker.log_params(cfg.to_dict())
        try:
            with self.progress() as bars, self.signals():
                while self.epoch < cfg.epochs and self.status == "running":
                    if self.run_epoch(bars):
                        return self.result("interrupted: resume with --resume")
        finally:
            if self.tracker is not None:
                self.tracker.close()
        if self.status == "running":
            self.status = "completed"
        self.save()
        return self.finish()

    def run_epoch(self, bars: Progress) -> bool:
        """Train the rest of the current epoch; True when a signal asked to stop."""
        cfg, epoch = self.cfg, self.epoch
        perm = distributed.shard(epoch_permutation(len(self.y), cfg.seed, epoch), self.info)
        avg = self.sums.get("loss", 0.0) / max(1.0, self.counts.get("loss", 0.0))
        task = bars.add_task(
            "train", total=self.steps_per_epoch, completed=self.step_in_epoch, epoch=epoch + 1, loss=avg, acc=0.0
        )
        for step in range(self.step_in_epoch, self.steps_per_epoch):
            idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            xb, yb = self.x[idx].to(self.device), self.y[idx].to(self.device)
            metrics = self.train_step(xb, yb, epoch, step)
            self.step_in_epoch, self.global_step = step + 1, self.global_step + 1
            bars.update(task, advance=1, loss=metrics["loss"], acc=metrics.get("acc", 0.0))
            if cfg.log_every and self.global_step % cfg.log_every == 0:
                self.log(
                    {"type": "step", "epoch": epoch + 1, "step": step + 1, "global_step": self.global_step, **metrics}
                )
            if distributed.any_rank(self.stop_requested, self.info):
                self.status = "interrupted"
                self.save()
                self.say(
                    f"interrupted at epoch {epoch + 1} step {step + 1}; "
                    f"checkpoint saved in {self.run_dir / 'checkpoint'}"
                )
                return True
            if (
                cfg.checkpoint_every
                and self.global_step % cfg.checkpoint_every == 0
                and step + 1 < self.steps_per_epoch
            ):
                self.save()
        self.end_epoch(epoch)
        self.epoch, self.step_in_epoch = epoch + 1, 0
        if self.status != "running" or self.epoch >= cfg.epochs:
            return False  # run() writes the last checkpoint, with the final status
        stop = distributed.any_rank(self.stop_requested, self.info)
        if stop:
            self.status = "interrupted"
        self.save()
        return stop

    @contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM set a flag (the step finishes, a checkpoint is saved); a second SIGINT aborts."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self.stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_requested = True

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def finish(self) -> TrainResult:
        """Write ``final/`` and ``summary.json`` (rank 0) and return the result."""
        final = self.run_dir / FINAL
        if self.info.is_main:
            try:
                get_spec(self.model)
                save_model(self.model, final)
            except ValueError:
                from safetensors.torch import save_file

                final.mkdir(parents=True, exist_ok=True)
                save_file(
                    {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
                    str(final / "model.safetensors"),
                )
        result = self.result(f"{self.status} after {self.epoch} epoch(s)", final)
        if self.info.is_main:
            summary = {
                "status": result.status,
                "epochs_completed": result.epochs_completed,
                "global_step": result.global_step,
                "metrics": result.metrics,
                "cost": result.cost,
                "final_model": str(final),
                "defense": repr(self.defense),
                "defense_config": defense_config(self.defense),
                "world_size": self.info.world_size,
                "device": str(self.device),
                "environment": environment(),
            }
            (self.run_dir / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        distributed.barrier(self.info)
        return result

    def result(self, message: str, final: Path | None = None) -> TrainResult:
        return TrainResult(
            run_dir=self.run_dir,
            status=self.status,
            epochs_completed=self.epoch,
            global_step=self.global_step,
            metrics=self.last_metrics,
            cost=self.meter.to_dict(),
            final_model=final,
            message=message,
        )


def truncate_lines(path: Path, keep: int) -> None:
    """Keep the first ``keep`` lines of ``path`` (lines written after the checkpoint are dropped)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) > keep:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(lines[:keep]), encoding="utf-8")
        os.replace(tmp, path)


# -- public entry points ----------------------------------------------------------------------------


def fit(
    model: nn.Module,
    defense: Defense,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
    x_eval: torch.Tensor | None = None,
    y_eval: torch.Tensor | None = None,
    *,
    resume: bool = False,
    quiet: bool | None = None,
    num_classes: int | None = None,
) -> TrainResult:
    """Train ``model`` with ``defense`` on in-memory tensors; the run folder is ``out_dir``.

    ``x_train`` (N, C, H, W) float in [0, 1] and ``y_train`` (N,) int64 stay on the CPU; batches move
    to the config's device. ``x_eval``/``y_eval`` (the first ``config.eval_n`` are used) are
    evaluated after each epoch; None skips evaluation. The data fields of ``config`` (``data``,
    ``model``, ``train_subset``...) are only recorded; ``config.threats`` must equal the defense's.
    ``resume=True`` continues from ``out_dir/checkpoint``. ``quiet``: True prints nothing, False
    forces progress bars, None shows them on a terminal. Raises :class:`TrainingError` on a
    non-finite loss, ``ValueError`` for bad input and ``CheckpointError`` for a corrupt checkpoint.
    """
    from metaat.data import validate_batch

    run_dir = check_out_dir(out_dir)
    if tuple(map(str, defense.threats)) != config.threats:
        raise ValueError(
            f"config threats {list(config.threats)} differ from the defense's {[str(t) for t in defense.threats]}"
        )
    check_tracker(config.tracker)
    if num_classes is None:
        try:
            num_classes = int(get_spec(model)["num_classes"])
        except ValueError:
            num_classes = int(y_train.max()) + 1
    validate_batch(x_train, y_train, num_classes=num_classes)
    if x_eval is not None:
        if y_eval is None:
            raise ValueError("x_eval given without y_eval")
        x_eval, y_eval = x_eval[: config.eval_n], y_eval[: config.eval_n]
        validate_batch(x_eval, y_eval, num_classes=num_classes)
    if resume and not has_checkpoint(run_dir):
        raise FileNotFoundError(f"nothing to resume: no checkpoint in {run_dir}")
    if not resume and has_checkpoint(run_dir):
        raise ValueError(
            f"{run_dir} already holds a run; resume it (--resume {run_dir}) or choose another output folder"
        )
    set_threads(config.threads)
    set_deterministic(config.deterministic)
    device = resolve_device(config.device)
    info, device = distributed.init_from_env(device)
    trainer: _Trainer | None = None
    try:
        if not resume:
            seed_everything(config.seed)
        trainer = _Trainer(
            model,
            defense,
            x_train,
            y_train,
            config,
            run_dir,
            x_eval,
            y_eval,
            num_classes=num_classes,
            device=device,
            info=info,
            quiet=quiet,
        )
        if resume:
            trainer.restore()  # verifies the checkpoint before anything in the folder is written
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            config.to_yaml(run_dir / "config.yaml")
            (run_dir / "environment.json").write_text(json.dumps(environment(), indent=2) + "\n", encoding="utf-8")
        distributed.barrier(info)
        return trainer.run()
    finally:
        if trainer is not None:
            trainer.hook.remove()  # the caller's model stops feeding the meter
            if info.enabled:
                # Free the DDP wrapper while the process group is still registered. Were its reducer
                # the last owner of the gloo group, the group's destructor would run with the GIL held
                # and could deadlock against a gloo worker thread that is releasing a finished
                # collective's tensors (pytorch/pytorch#56297): it hung 1 run in ~5 under torchrun.
                trainer.net = trainer.model
                del trainer
                gc.collect()
        distributed.shutdown(info)


def train(
    config: TrainConfig, out_dir: str | os.PathLike[str], resume: bool = False, *, quiet: bool | None = None
) -> TrainResult:
    """Load the data, build the model and the defense named by ``config``, and :func:`fit`."""
    import metaat.data as data
    import metaat.defenses as defenses
    import metaat.models as models

    set_threads(config.threads)
    defense = defenses.create(config.defense, list(config.threats), **config.options)
    meta = data.info(config.data)
    x, y = data.load(config.data, "train", data_dir=config.data_dir, n=config.train_subset)
    x_eval = y_eval = None
    if config.eval_n > 0:
        x_eval, y_eval = data.load(config.data, "test", data_dir=config.data_dir, n=config.eval_n)
    seed_everything(config.seed)  # the model's initial weights depend on the seed only
    model = models.create(config.model, meta.num_classes, meta.in_channels, meta.image_size)
    return fit(
        model, defense, x, y, config, out_dir, x_eval, y_eval, resume=resume, quiet=quiet, num_classes=meta.num_classes
    )


def defense_config(defense: Defense) -> dict[str, Any]:
    """``defense``'s configuration with every option resolved (defaults included), as JSON values."""
    resolved: dict[str, Any] = json.loads(json.dumps(defense.config.to_dict(), default=str))
    return resolved


def saved_config(state: dict[str, Any], **changes: Any) -> TrainConfig:
    """The config a checkpoint's run continues with: its saved config plus ``changes`` (e.g. ``epochs``),
    with every defense option whose default has changed since the run started pinned to the value the
    run was built with, so that it goes on exactly as it began."""
    import metaat.defenses as defenses

    config = TrainConfig.from_dict(state["config"], **changes)
    built = state.get("defense", {}).get("config")
    if built is None:  # a checkpoint from before 2026-11-28: its options are all there is
        return config
    now = defense_config(defenses.create(config.defense, list(config.threats), **config.options))
    pinned = {k: v for k, v in built.items() if now.get(k) != v}
    if not pinned:
        return config
    return dataclasses.replace(config, options={**config.options, **pinned})


def resume_run(run_dir: str | os.PathLike[str], *, quiet: bool | None = None, **changes: Any) -> TrainResult:
    """Continue the run in ``run_dir`` with its saved config (``changes``: e.g. ``epochs``, ``threads``);
    options whose defaults changed since it started keep the values it was built with."""
    ckpt = read_checkpoint(run_dir)
    return train(saved_config(ckpt.state, **changes), run_dir, resume=True, quiet=quiet)
