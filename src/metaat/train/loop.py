"""The one training loop, for every defense.

Per step: the learning rate from the schedule, the defense's loss on the adversarial share of the
batch mixed with clean cross-entropy on the clean share (``clean_ratio``), a finite-loss check,
backward, optional gradient clipping, the optimizer step; the cost meter counts every pass through
the model. Per epoch: the monitor (:mod:`metaat.train.monitor`: clean and PGD accuracy on a fixed
held-out batch, not counted as training cost, and the catastrophic-overfitting guard), a line in
``metrics.jsonl``, an atomic checkpoint (:mod:`metaat.train.resume`). SIGINT/SIGTERM finish the
current step, save and return.

The entry points that build and run it are in :mod:`metaat.train.entry`.

Determinism: each epoch's data order is a permutation drawn from a generator seeded by
``(seed, epoch)`` — nothing to store, the same on every rank — and the attack generator's state
is checkpointed, so a resumed run ends bit-exact with an uninterrupted one.
"""

from __future__ import annotations

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
from rich.progress import Progress
from torch import nn

from metaat.attacks.base import predictions
from metaat.defenses import Defense, TrainContext
from metaat.models import get_spec, save_model
from metaat.runtime import (
    derive_seed,
    environment,
    make_generator,
)
from metaat.train import distributed
from metaat.train.checkpoint import has_checkpoint
from metaat.train.config import TrainConfig
from metaat.train.console import RunConsole, epoch_line
from metaat.train.cost import CostMeter
from metaat.train.monitor import OverfitGuard, evaluate
from metaat.train.outcome import TrainingError, TrainResult
from metaat.train.resume import METRICS, CheckpointedRun, defense_config
from metaat.train.schedules import lr_at
from metaat.train.tracking import Tracker, create_tracker, flatten

SUMMARY = "summary.json"
FINAL = "final"


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of ``epoch``: a permutation of ``range(n)`` fixed by ``(seed, epoch)``."""
    return torch.randperm(n, generator=make_generator(derive_seed("data", seed, epoch, scheme="sha256")))


def build_optimizer(config: TrainConfig, params: Iterator[nn.Parameter] | list[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD (with momentum) or Adam, as the config says (the learning rate is set every step)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


class Trainer(CheckpointedRun):
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
        self.out = RunConsole(quiet, info.is_main)

        defense.setup(self.model, device, num_classes, tuple(x.shape[1:]))
        self.optimizer = build_optimizer(config, list(self.model.parameters()))
        self.meter = CostMeter()
        self.hook = self.meter.attach(self.model)
        self.net = distributed.wrap_model(self.model, info, device)
        self.generator = make_generator(derive_seed("attack", config.seed, info.rank, scheme="sha256"))
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
        guard_on = self.x_eval is not None and (
            config.fo_overfit_guard if config.fo_overfit_guard is not None else defense.single_step
        )
        self.guard = OverfitGuard(enabled=bool(guard_on), drop=config.fo_overfit_drop)
        # Counters and accumulators: everything here goes into the checkpoint.
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}
        self.epoch_seconds = 0.0
        self.metrics_lines = 0
        self.last_metrics: dict[str, Any] = {}
        self.status = "running"
        self.stop_requested = False
        self.tracker: Tracker | None = None

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl (rank 0)."""
        self.metrics_lines += 1
        if not self.info.is_main:
            return
        with (self.run_dir / METRICS).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

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
            metrics["clean_acc"] = float((predictions(logits.detach()) == yb[:n_clean]).float().mean())
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
        self.out.say(epoch_line(record, self.cfg.epochs))
        event = self.guard.update(self.model, epoch, eval_metrics)
        if event is not None:
            self.status = "stopped"
            self.log(event)
            self.out.say(
                f"catastrophic overfitting at epoch {epoch + 1}: PGD accuracy {100 * event['robust']:.1f}% vs best "
                f"{100 * event['best_robust']:.1f}%; rolled back to epoch {event['rolled_back_to_epoch']} and stopped"
            )
        self.defense.on_epoch_end(epoch, flatten({"train": train_metrics, "eval": eval_metrics}))
        self.sums, self.counts, self.epoch_seconds = {}, {}, 0.0

    # -- the run ------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg, info = self.cfg, self.info
        if self.status in ("completed", "stopped") and (self.status == "stopped" or self.epoch >= cfg.epochs):
            return self.result(f"nothing to do: the run is already {self.status}")
        self.status = "running"
        if info.is_main:
            self.tracker = create_tracker(cfg.tracker, self.run_dir)
            self.tracker.log_params(cfg.to_dict())
        try:
            with self.out.progress() as bars, self.signals():
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
                self.out.say(
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
