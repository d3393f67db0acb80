"""``metaat train``: train a model with a defense, from flags and/or a recipe, or resume a run.

Precedence: defaults < ``--preset NAME`` (``metaat list presets``) or ``--config FILE`` < flags.
``--option key=value`` sets a defense option (repeatable). ``--resume RUN`` continues a run from its
last checkpoint with its saved config; only ``--epochs``, ``--threads``, ``--device``, ``--tracker``,
``--log-every`` and ``--checkpoint-every`` may change then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from metaat.cli import check_threat_fits, console, describe, fail, guarded, parse_options, require_nonempty

_RESUME_FLAGS = ("epochs", "threads", "device", "tracker", "log_every", "checkpoint_every")


def default_out(config: Any) -> Path:
    """``runs/<defense>-<norms>``, e.g. ``runs/pgd-linf``."""
    norms = "+".join(t.split(":")[0] for t in config.threats)
    return Path("runs") / f"{config.defense}-{norms}"


def train_cmd(
    data: Annotated[str | None, typer.Option(help="dataset (metaat list datasets)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="folder holding the dataset files")] = None,
    model: Annotated[str | None, typer.Option(help="model (metaat list models)")] = None,
    defense: Annotated[str | None, typer.Option(help="defense (metaat list defenses)")] = None,
    threat: Annotated[
        list[str] | None,
        typer.Option(
            "--threat", "-t", help="training threat, repeatable: linf:0.1, l2:1.5, l1:10 (a bare norm: default radius)"
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="epochs")] = None,
    batch_size: Annotated[int | None, typer.Option(help="batch size (per process)")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd or adam")] = None,
    lr: Annotated[float | None, typer.Option(help="peak learning rate")] = None,
    momentum: Annotated[float | None, typer.Option(help="SGD momentum")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="weight decay")] = None,
    schedule: Annotated[str | None, typer.Option(help="onecycle, cosine, piecewise or constant")] = None,
    grad_clip: Annotated[float | None, typer.Option(help="max gradient norm (0: off)")] = None,
    clean_ratio: Annotated[float | None, typer.Option(help="share of each batch trained on clean inputs")] = None,
    train_subset: Annotated[int | None, typer.Option(help="train on the first N training examples")] = None,
    eval_n: Annotated[int | None, typer.Option(help="test points evaluated after each epoch (0: none)")] = None,
    eval_steps: Annotated[int | None, typer.Option(help="PGD steps of the per-epoch evaluation")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N")] = None,
    tracker: Annotated[str | None, typer.Option(help="none, mlflow or tensorboard")] = None,
    fo_overfit_guard: Annotated[
        bool | None,
        typer.Option(
            "--fo-overfit-guard/--no-fo-overfit-guard", help="catastrophic-overfitting guard (default: fast only)"
        ),
    ] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="also checkpoint every N steps (0: epoch ends)")] = None,
    log_every: Annotated[int | None, typer.Option(help="write a metrics line every N steps (0: epochs only)")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="defense option key=value")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML config, e.g. configs/presets/pgd10-linf.yaml")
    ] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", "-p", help="a named recipe: metaat list presets (e.g. default)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/<defense>-<norms>)")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue the run in this folder")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print nothing but errors")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="train into an existing folder that is not a metaat run")
    ] = False,
) -> None:
    """Train a model with a defense; checkpoints, metrics.jsonl and final/ go to the run folder."""
    from metaat.models import CheckpointError
    from metaat.train import TrainingError, train
    from metaat.train.checkpoint import read_checkpoint
    from metaat.train.config import TrainConfig
    from metaat.train.resume import saved_config

    flags: dict[str, Any] = {
        "data": data,
        "data_dir": str(data_dir) if data_dir is not None else None,
        "model": model,
        "defense": defense,
        "threats": tuple(threat) if threat else None,
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "lr": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "schedule": schedule,
        "grad_clip": grad_clip,
        "clean_ratio": clean_ratio,
        "train_subset": train_subset,
        "eval_n": eval_n,
        "eval_steps": eval_steps,
        "seed": seed,
        "threads": threads,
        "device": device,
        "tracker": tracker,
        "fo_overfit_guard": fo_overfit_guard,
        "checkpoint_every": checkpoint_every,
        "log_every": log_every,
    }
    overrides = {k: v for k, v in flags.items() if v is not None}
    try:
        for flag, value in (("--data", data), ("--model", model), ("--defense", defense), ("--preset", preset)):
            require_nonempty(flag, value)
        for value in threat or []:
            require_nonempty("--threat", value)
        options = parse_options(option)
        if resume is not None:
            if config is not None or preset is not None:
                raise ValueError("--config/--preset cannot be combined with --resume (the run's saved config is used)")
            if out is not None and out.resolve() != resume.resolve():
                raise ValueError("--out cannot differ from --resume (a run continues in its own folder)")
            fixed = sorted(set(overrides) - set(_RESUME_FLAGS)) + (["option"] if options else [])
            if fixed:
                raise ValueError(
                    f"cannot change {', '.join('--' + k.replace('_', '-') for k in fixed)} when resuming; "
                    f"allowed: {', '.join('--' + k.replace('_', '-') for k in _RESUME_FLAGS)}"
                )
            cfg = saved_config(read_checkpoint(resume).state, **overrides)
            run_dir = resume
        else:
            if config is not None and preset is not None:
                raise ValueError("--config and --preset both name a recipe; give one")
            from metaat.train.presets import preset_path

            source = preset_path(preset) if preset is not None else config
            base = TrainConfig.from_yaml(source) if source is not None else TrainConfig()
            values = base.to_dict()
            if "defense" in overrides and overrides["defense"] != base.defense:
                values["options"] = {}  # a preset's options belong to its own defense
            values["options"] = {**values["options"], **options}
            import metaat.data as datasets

            info = datasets.info(str(overrides.get("data", values["data"])))
            if info.domain == "text" and not threat and source is None and info.threats:
                overrides["threats"] = info.threats[:1]  # the pixel default (linf:0.1) means nothing on token ids
            cfg = TrainConfig.from_dict(values, **overrides)
            domain = info.domain
            for text in cfg.threats:
                check_threat_fits(text, cfg.data, domain)
            run_dir = out if out is not None else default_out(cfg)
        result = train(cfg, run_dir, resume=resume is not None, quiet=True if quiet else None, force=force)
    except (ValueError, TypeError, KeyError, FileNotFoundError, CheckpointError, TrainingError) as err:
        fail(describe(err))
        return
    if result.status == "interrupted":
        console.print(f"interrupted; resume with: metaat train --resume {run_dir}", highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    if not quiet:
        ev = result.metrics.get("eval", {})
        accs = ", ".join(f"{k} {100 * v:.1f}%" for k, v in ev.items() if k != "n")
        seconds = sum(result.cost[k] for k in ("attack_seconds", "update_seconds", "eval_seconds"))
        console.print(
            f"{result.status}: {result.epochs_completed} epoch(s), {accs or 'no evaluation'}; "
            f"{result.cost['passes_per_example']:.2f} passes/example, {seconds:.1f} s; run folder {run_dir}",
            highlight=False,
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    """Add ``metaat train`` to the CLI."""
    app.command("train")(guarded(train_cmd))
