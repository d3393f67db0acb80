"""Checkpoint and exact resume of a training run.

:class:`CheckpointedRun` is the state of a run that a checkpoint holds — model, optimizer, the
defense's modules, optimizers and JSON state, every random generator, the cost meter, the epoch's
accumulators and the overfitting guard — with :meth:`~CheckpointedRun.save` and
:meth:`~CheckpointedRun.restore`; the files themselves are written and verified by
:mod:`metaat.train.checkpoint`. A run killed mid-epoch and resumed from its last checkpoint ends
bit-exact with an uninterrupted one (CPU, same thread count): the data order of an epoch is
re-derived from ``(seed, epoch)`` and the attack generator's state is restored.

A resumed run must be the same run: only :data:`RESUMABLE_CHANGES` may differ from the saved
config, and the defense must be built with the options it was built with (:func:`saved_config`
pins options whose defaults changed since).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metaat.defenses import Defense
from metaat.models import CheckpointError
from metaat.train import distributed
from metaat.train.checkpoint import (
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
from metaat.train.monitor import OverfitGuard
from metaat.train.outcome import TrainingError

METRICS = "metrics.jsonl"
RESUMABLE_CHANGES = ("epochs", "threads", "device", "tracker", "log_every", "checkpoint_every")
"""Config keys that may change when a run is resumed (everything else must match the checkpoint)."""


class CheckpointedRun:
    """The state of a training run that its checkpoint holds; the training loop subclasses it."""

    cfg: TrainConfig
    run_dir: Path
    info: distributed.DistInfo
    device: torch.device
    model: nn.Module
    defense: Defense
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    meter: CostMeter
    guard: OverfitGuard
    steps_per_epoch: int
    epoch: int
    step_in_epoch: int
    global_step: int
    sums: dict[str, float]
    counts: dict[str, float]
    epoch_seconds: float
    metrics_lines: int
    last_metrics: dict[str, Any]
    status: str

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
        if self.guard.last_good is not None:
            tensors.update({f"guard.model.{k}": v for k, v in self.guard.last_good.items()})
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
            "guard": {"best_robust": self.guard.best_robust, "last_good_epoch": self.guard.last_good_epoch},
            "metrics_lines": self.metrics_lines,
            "last_metrics": self.last_metrics,
        }
        path = write_checkpoint(self.run_dir, self.model, tensors, state) if self.info.is_main else None
        distributed.barrier(self.info)
        return path

    def restore(self) -> None:
        """Load the run folder's checkpoint into this run, after checking that it is the same run."""
        ckpt = read_checkpoint(self.run_dir)
        state, tensors = ckpt.state, ckpt.tensors
        self._check_same_run(state, ckpt.path)
        check_config_file(self.run_dir, state["config"])
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
        self.guard.best_robust = state["guard"]["best_robust"]
        self.guard.last_good_epoch = state["guard"]["last_good_epoch"]
        guard = {k[len("guard.model.") :]: v for k, v in tensors.items() if k.startswith("guard.model.")}
        self.guard.last_good = guard or None
        self.metrics_lines = int(state["metrics_lines"])
        self.last_metrics = dict(state["last_metrics"])
        self.status = state["status"]
        if self.info.is_main:
            truncate_lines(self.run_dir / METRICS, self.metrics_lines)

    def _check_same_run(self, state: dict[str, Any], path: Path) -> None:
        """``ValueError`` unless the checkpoint's run is this one: config, defense, processes, data."""
        saved = TrainConfig.from_dict(state["config"])
        # the options the defense was built with, every one resolved (older checkpoints have only the
        # options given, and are compared by those)
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
            raise ValueError(f"{path} was written by {state['world_size']} process(es); resume it with the same number")
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(
                f"{path} has {state['steps_per_epoch']} steps per epoch but this data gives "
                f"{self.steps_per_epoch}: resume with the same data, subset and batch size"
            )


def check_config_file(run_dir: Path, saved: dict[str, Any]) -> None:
    """``ValueError`` naming the fields when ``run_dir/config.yaml`` no longer says what the
    checkpoint's config says (someone edited it): a resume continues the checkpoint's run and would
    rewrite the file, so the edit would be lost without a word. Fields a resume may change
    (:data:`RESUMABLE_CHANGES`) are not compared; a missing file is rewritten."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return
    try:
        on_disk = TrainConfig.from_yaml(path).to_dict()
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"cannot resume {run_dir}: its config.yaml was edited and no longer reads as a run config "
            f"({str(err).splitlines()[0]}); undo the edit (the checkpoint holds the run's config)"
        ) from None
    expected = TrainConfig.from_dict(saved).to_dict()
    diff = [k for k in expected if k not in RESUMABLE_CHANGES and expected[k] != on_disk.get(k)]
    if diff:
        fields = "; ".join(f"{k}: checkpoint {expected[k]!r}, file {on_disk.get(k)!r}" for k in diff)
        raise ValueError(
            f"cannot resume {run_dir}: config.yaml was edited since the run started ({fields}); a run continues "
            f"with the config it was built with — undo the edit, or start a new run with --config {path}"
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
    if built is None:  # an older checkpoint that recorded only the options given: they are all there is
        return config
    now = defense_config(defenses.create(config.defense, list(config.threats), **config.options))
    pinned = {k: v for k, v in built.items() if now.get(k) != v}
    if not pinned:
        return config
    return dataclasses.replace(config, options={**config.options, **pinned})
