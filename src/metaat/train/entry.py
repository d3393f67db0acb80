"""The entry points of training: ``fit`` on in-memory tensors, ``train`` from a
:class:`~metaat.train.config.TrainConfig` (it loads the data and builds the model and the defense),
``resume_run`` to continue a run from its checkpoint.
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metaat.defenses import Defense
from metaat.models import get_spec
from metaat.runtime import (
    LOCK_FILE,
    FolderLock,
    atomic_write_text,
    check_out_dir,
    environment,
    resolve_device,
    seed_everything,
    set_deterministic,
    set_threads,
)
from metaat.train import distributed
from metaat.train.checkpoint import clean_stale_temporaries, has_checkpoint, read_checkpoint
from metaat.train.config import TrainConfig
from metaat.train.loop import Trainer
from metaat.train.outcome import TrainResult
from metaat.train.resume import saved_config
from metaat.train.tracking import check_tracker


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
    force: bool = False,
) -> TrainResult:
    """Train ``model`` with ``defense`` on in-memory tensors; the run folder is ``out_dir``.

    ``x_train`` (N, C, H, W) float in [0, 1] and ``y_train`` (N,) int64 stay on the CPU; batches move
    to the config's device. ``x_eval``/``y_eval`` (the first ``config.eval_n`` are used) are
    evaluated after each epoch; None skips evaluation. The data fields of ``config`` (``data``,
    ``model``, ``train_subset``...) are only recorded; ``config.threats`` must equal the defense's.
    ``resume=True`` continues from ``out_dir/checkpoint``. ``quiet``: True prints nothing, False
    forces progress bars, None shows them on a terminal. Raises :class:`TrainingError` on a
    non-finite loss, ``ValueError`` for bad input and ``CheckpointError`` for a corrupt checkpoint.

    The run folder is owned: one process at a time holds its lock (another gets
    :class:`~metaat.runtime.FolderInUseError` at once); a folder that exists, holds files and is not
    a metaat run is refused unless ``force``; temporary files a killed run left are removed.
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
    box = defense.threats[0].box  # the input's valid range (pixels: [0, 1]), shared by every threat
    validate_batch(x_train, y_train, num_classes=num_classes, box=box)
    check_model_takes(model, x_train, y_train, num_classes)
    if x_eval is not None:
        if y_eval is None:
            raise ValueError("x_eval given without y_eval")
        x_eval, y_eval = x_eval[: config.eval_n], y_eval[: config.eval_n]
        validate_batch(x_eval, y_eval, num_classes=num_classes, box=box)
    set_threads(config.threads)
    set_deterministic(config.deterministic)
    device = resolve_device(config.device)
    info, device = distributed.init_from_env(device)
    trainer: Trainer | None = None
    lock: FolderLock | None = None
    created = not run_dir.exists()
    lock_existed = (run_dir / LOCK_FILE).exists()
    try:
        if info.is_main:  # one process at a time per run folder; every rank of one run shares rank 0's
            run_dir.mkdir(parents=True, exist_ok=True)
            lock = FolderLock(run_dir).acquire()
            if not resume and not force:  # under the lock: a run that is starting looks like no run yet
                check_run_folder(run_dir)
            clean_stale_temporaries(run_dir)
        if resume and not has_checkpoint(run_dir):
            raise FileNotFoundError(f"nothing to resume: no checkpoint in {run_dir}")
        if not resume and has_checkpoint(run_dir):
            raise ValueError(
                f"{run_dir} already holds a run; resume it (--resume {run_dir}) or choose another output folder"
            )
        if not resume:
            seed_everything(config.seed)
        trainer = Trainer(
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
            atomic_write_text(run_dir / "config.yaml", config.to_yaml())
            atomic_write_text(run_dir / "environment.json", json.dumps(environment(), indent=2) + "\n")
        distributed.barrier(info)
        return trainer.run()
    except BaseException:
        if lock is not None and not lock_existed and not (run_dir / "config.yaml").exists():
            lock.release()  # nothing was written: leave neither our lock file nor an empty folder behind
            lock = None
            (run_dir / LOCK_FILE).unlink(missing_ok=True)
            if created and not any(run_dir.iterdir()):
                run_dir.rmdir()
        raise
    finally:
        if lock is not None:
            lock.release()
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


def check_model_takes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> None:
    """One-line ``ValueError`` before training when ``model`` cannot take ``x`` (shape, dtype,
    device) or does not return ``(batch, num_classes)`` logits — rather than a traceback at the
    first step. One forward pass on two examples, in eval mode, without gradients."""
    from metaat.attacks.base import attack_mode, check_model_inputs
    from metaat.models import model_device

    check_model_inputs(model, x[:2], y[:2])
    try:
        with torch.no_grad(), attack_mode(model):
            out = model(x[:2].to(model_device(model)))
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"the model cannot take the training inputs of shape {tuple(x.shape[1:])}: {reason}") from None
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the model must return one tensor of logits; it returned {type(out).__name__}")
    if out.dim() != 2 or out.shape[0] != min(2, x.shape[0]) or out.shape[1] < num_classes:
        raise ValueError(
            f"the model must return logits of shape (batch, {num_classes}); for {min(2, x.shape[0])} training "
            f"inputs it returned {tuple(out.shape)}"
        )


def check_run_folder(run_dir: Path) -> None:
    """``ValueError`` when ``run_dir`` exists, holds files and is not a metaat run folder (its
    ``config.yaml`` could be someone else's); an absent or empty folder, or a run's, is fine."""
    if not run_dir.is_dir():
        return
    names = {p.name for p in run_dir.iterdir()} - {LOCK_FILE}
    if not names or (run_dir / "config.yaml").is_file() and (run_dir / "environment.json").is_file():
        return
    if has_checkpoint(run_dir):
        return
    shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
    raise ValueError(
        f"{run_dir} exists and is not a metaat run folder (it holds {shown}); choose another output folder "
        "or pass --force to train into it"
    )


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
    resume: bool = False,
    *,
    quiet: bool | None = None,
    force: bool = False,
) -> TrainResult:
    """Load the data, build the model and the defense named by ``config``, and :func:`fit`.

    Every threat is intersected with the dataset's input box (pixels: [0, 1]); the per-epoch monitor
    reads the dataset's validation split where it has one, else the points ``config.train_holdout``
    holds out of training, else the first test points."""
    import metaat.data as data
    import metaat.defenses as defenses
    import metaat.models as models
    from metaat.threats import ThreatModel

    set_threads(config.threads)
    meta = data.info(config.data)
    threats = [ThreatModel.parse(t) for t in config.threats]
    if meta.box != (0.0, 1.0):
        threats = [t.with_box(*meta.box) for t in threats]
    defense = defenses.create(config.defense, threats, **config.options)
    # train_holdout = 0: the first train_subset training examples (all of them when None), as before
    x, y = data.load_holdout(config.data, "train", config.train_holdout, config.data_dir, n=config.train_subset)
    x_eval = y_eval = None
    if config.eval_n > 0:
        if "val" not in meta.splits and config.train_holdout:  # the held-out points, never test points
            x_eval, y_eval = data.load_holdout(config.data, "val", config.train_holdout, config.data_dir)
        else:
            monitor_split = "val" if "val" in meta.splits else "test"
            x_eval, y_eval = data.load(config.data, monitor_split, data_dir=config.data_dir)
        x_eval, y_eval = x_eval[: config.eval_n], y_eval[: config.eval_n]
    seed_everything(config.seed)  # the model's initial weights depend on the seed only
    box = meta.box if meta.box != (0.0, 1.0) else None
    try:
        model = models.create(
            config.model, meta.num_classes, meta.in_channels, meta.image_size, box=box, **dict(meta.model_kwargs)
        )
    except TypeError as err:  # a model of another domain: name both, not a constructor's signature
        raise ValueError(
            f"model {config.model!r} cannot be built for {config.data} ({meta.domain} data): {err}"
        ) from None
    return fit(
        model,
        defense,
        x,
        y,
        config,
        out_dir,
        x_eval,
        y_eval,
        resume=resume,
        quiet=quiet,
        num_classes=meta.num_classes,
        force=force,
    )


def resume_run(run_dir: str | os.PathLike[str], *, quiet: bool | None = None, **changes: Any) -> TrainResult:
    """Continue the run in ``run_dir`` with its saved config (``changes``: e.g. ``epochs``, ``threads``);
    options whose defaults changed since it started keep the values it was built with."""
    ckpt = read_checkpoint(run_dir)
    return train(saved_config(ckpt.state, **changes), run_dir, resume=True, quiet=quiet)
