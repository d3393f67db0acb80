"""``metaat demo``: the embedded default job — meta adversarial training of ``cnn-small`` on
Fashion-MNIST against L∞ 0.1, L2 1.5 and L1 10 with metaat's own recipe, then its robustness
report (reference APGD-CE + APGD-T per threat, union, unseen attacks, gradient-masking checks).

It is sized to finish in about 10 minutes on 2 CPU cores (2 epochs over the first 10,000 training
images, a 100-point report); ``--train-subset 0 --epochs 5 --n 1000`` is the full-size job. Every
knob is an option, and a killed demo resumes from its last checkpoint when run again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from metaat.threats import DEFAULT_THREATS, resolve_threat

DEMO_THREATS = [resolve_threat(norm) for norm in DEFAULT_THREATS]


def demo_cmd(
    out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/demo"),
    defense: Annotated[str, typer.Option(help="defense to train (metaat list defenses)")] = "metaat",
    epochs: Annotated[int, typer.Option(help="training epochs")] = 2,
    train_subset: Annotated[int | None, typer.Option(help="train on the first N images (0: all 60,000)")] = 10000,
    n: Annotated[int, typer.Option(help="test points in the robustness report")] = 100,
    suite: Annotated[str, typer.Option(help="quick | apgd | standard")] = "apgd",
    unseen: Annotated[bool, typer.Option("--unseen/--no-unseen", help="run the unseen attacks")] = True,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")] = "auto",
    fresh: Annotated[bool, typer.Option("--fresh", help="delete an earlier demo run first")] = False,
) -> None:
    """Meta adversarial training on Fashion-MNIST, then its robustness report (the embedded default)."""
    import shutil

    from rich.console import Console

    from metaat.cli import describe, fail
    from metaat.cli.eval import eval_cmd
    from metaat.cli.train import train_cmd
    from metaat.runtime import FolderLock

    console = Console(stderr=True)
    try:  # the arguments, before the first step is announced
        import metaat.defenses as defenses

        defenses.DEFENSES.get(defense)
        for name, value, low in (("--epochs", epochs, 1), ("--n", n, 1), ("--train-subset", train_subset or 0, 0)):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if suite not in ("quick", "apgd", "standard"):
            raise ValueError(f"unknown suite {suite!r}; valid suites: apgd, quick, standard")
    except (ValueError, KeyError) as err:
        fail(describe(err))
    if fresh and (out.exists() or out.is_symlink()):
        try:
            check_demo_folder(out)
            with FolderLock(out):  # not while a run is using it
                pass
        except ValueError as err:
            fail(describe(err))
        shutil.rmtree(out)
    if (out / "final" / "model.json").is_file():
        console.print(f"[demo] {out} already holds a trained model; evaluating it (use --fresh to retrain)")
    elif (out / "checkpoint").is_dir():
        console.print(f"[demo] resuming the interrupted demo run in {out}")
        train_cmd(resume=out, threads=threads, device=device)
    else:
        console.print(
            f"[demo] step 1/2: {defense} training of cnn-small on Fashion-MNIST, threats {' '.join(DEMO_THREATS)}, "
            f"{epochs} epoch(s)"
        )
        train_cmd(
            data="fashion-mnist",
            model="cnn-small",
            defense=defense,
            threat=list(DEMO_THREATS),
            epochs=epochs,
            train_subset=train_subset or None,
            seed=seed,
            threads=threads,
            device=device,
            out=out,
        )
    console.print(f"[demo] step 2/2: robustness report on {n} test points (suite {suite})")
    eval_cmd(
        str(out),
        data="fashion-mnist",
        threat=list(DEMO_THREATS),
        n=n,
        suite=suite,
        unseen=unseen,
        seed=seed,
        threads=threads,
        device=device,
    )


def check_demo_folder(out: Path) -> None:
    """``ValueError`` unless ``out`` is a folder ``--fresh`` may delete: empty, or a metaat run's
    (``config.yaml`` and ``environment.json``, or a checkpoint) — never a folder of other files."""
    from metaat.runtime import LOCK_FILE
    from metaat.train.checkpoint import has_checkpoint

    if out.is_symlink() or not out.is_dir():
        raise ValueError(f"--fresh deletes an earlier demo run; {out} is not a folder")
    names = sorted({p.name for p in out.iterdir()} - {LOCK_FILE})
    run = (out / "config.yaml").is_file() and (out / "environment.json").is_file()
    if names and not run and not has_checkpoint(out):
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise ValueError(
            f"--fresh deletes an earlier demo run, but {out} is not a metaat run folder (it holds {shown}); "
            "choose another --out"
        )


def register(app: typer.Typer) -> None:
    from metaat.cli import guarded

    app.command("demo")(guarded(demo_cmd))
