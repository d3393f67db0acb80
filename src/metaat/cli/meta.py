"""``metaat meta-pretrain``: meta-pretrain a learned attacker across tasks and save it.

With ``--tasks FILE`` (a task file, :mod:`metaat.meta.tasks`) it trains one channel-shared attacker
across the file's datasets, architectures, defenses and threats and measures it on the held-out tasks
(:mod:`metaat.meta.crosstask`); without, it runs the single-dataset pretraining of
:mod:`metaat.meta.pretrain`. Registered on the CLI through ``register(app)`` (listed in
``metaat.cli._COMMAND_MODULES``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import torch

    from metaat.threats import ThreatModel


def task_reference(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, seed: int
) -> tuple[torch.Tensor, int, str]:
    """The held-out evaluation's reference attack: AutoAttack APGD-CE for an Lp threat, the domain's
    worst case (metaat PGD, CE + margin, 2 × 100 steps, then the kind's evaluation attacks) otherwise."""
    import torch

    from metaat.eval.suites import domain_worst_case
    from metaat.meta.heldout import apgd_reference
    from metaat.threats import NORMS

    if threat.norm in NORMS:
        return apgd_reference(model, x, y, threat, seed)
    x_adv = domain_worst_case(model, x, y, torch.arange(x.shape[0]), threat, seed)
    kind = threat.kind
    extra = sum(int(str(dict(opts).get("queries", 0))) for _, opts in (kind.evaluation_attacks if kind else ()))
    return x_adv, 200 + extra, f"domain worst case ({threat.norm})"


def _run_task_file(tasks: Path, out: Path, resume: bool, device: Any, log: Any) -> dict[str, Any]:
    from metaat.meta.crosstask import pretrain_tasks
    from metaat.meta.tasks import load_task_file

    tf = load_task_file(tasks)
    command = f"metaat meta-pretrain --tasks {tasks} --out {out}" + (" --resume" if resume else "")
    _, card = pretrain_tasks(tf, out, device=device, log=log, reference=task_reference, resume=resume, command=command)
    return card


def parse_stages(text: str) -> tuple[int, ...]:
    """``"0,5,10"`` → (0, 5, 10); a one-line error for anything else."""
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--stages must be comma-separated integers such as 0,5,10; got {text!r}") from None


def register(app: typer.Typer) -> None:
    """Add the ``meta-pretrain`` command to ``app``."""

    @app.command("meta-pretrain")
    def meta_pretrain(
        out: Annotated[Path, typer.Option(help="folder to write the attacker to (generator.safetensors + .json)")],
        tasks: Annotated[
            Path | None,
            typer.Option(help="task file (YAML): train across its tasks, evaluate on its held-out ones"),
        ] = None,
        resume: Annotated[
            bool, typer.Option(help="with --tasks: reuse the attacker in --out, skip held-out tasks already measured")
        ] = False,
        data: Annotated[str, typer.Option(help="dataset name (metaat list datasets)")] = "fashion-mnist",
        data_dir: Annotated[Path | None, typer.Option(help="folder holding the dataset files")] = None,
        n: Annotated[int, typer.Option(help="training points used (targets and meta-training)")] = 5000,
        threat: Annotated[
            list[str] | None, typer.Option("--threat", help="threat, repeatable (default linf:0.1 l2:1.5 l1:10)")
        ] = None,
        model: Annotated[
            list[str] | None, typer.Option("--model", help="target architecture, repeatable (default mlp cnn-small)")
        ] = None,
        stages: Annotated[str, typer.Option(help="target-training steps at which targets are frozen")] = "20,100,300",
        algorithm: Annotated[str, typer.Option(help="reptile or fomaml")] = "reptile",
        iters: Annotated[int, typer.Option(help="meta-iterations")] = 200,
        inner_steps: Annotated[int, typer.Option(help="attacker adaptation steps per task")] = 4,
        inner_lr: Annotated[float, typer.Option(help="Adam lr of the adaptation (and of FOMAML's outer step)")] = 1e-3,
        meta_lr: Annotated[float, typer.Option(help="REPTILE interpolation step")] = 0.5,
        attacker_steps: Annotated[int, typer.Option(help="learned attack steps per attack")] = 1,
        batch_size: Annotated[int, typer.Option(help="batch size")] = 128,
        hidden: Annotated[int, typer.Option(help="attacker width")] = 32,
        seed: Annotated[int, typer.Option(help="random seed")] = 0,
        threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")] = "auto",
        as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON on stdout")] = False,
    ) -> None:
        """Meta-pretrain the threat-conditioned learned attacker (REPTILE / FOMAML) and save it."""
        from metaat.cli import console, fail
        from metaat.meta.pretrain import PretrainConfig, pretrain
        from metaat.runtime import resolve_device, seed_everything, set_threads

        if tasks is not None:
            try:
                set_threads(threads)
                card = _run_task_file(
                    tasks, out, resume, resolve_device(device), lambda text: console.print(text, highlight=False)
                )
            except (ValueError, TypeError, KeyError, FileNotFoundError, RuntimeError) as err:
                fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
                return
            if as_json:
                typer.echo(json.dumps({"out": str(out), **card}))
            else:
                rows = card["heldout_results"]
                typer.echo(
                    f"saved attacker to {out}: {len(card['train_tasks'])} training tasks, "
                    f"{len(rows)} held-out task(s) measured (see generator.json, metadata.cross_task)"
                )
            return
        try:
            cfg = PretrainConfig(
                data=data,
                data_dir=str(data_dir) if data_dir is not None else None,
                n=n,
                threats=tuple(threat) if threat else PretrainConfig.threats,
                models=tuple(model) if model else PretrainConfig.models,
                stages=parse_stages(stages),
                algorithm=algorithm,
                meta_iters=iters,
                inner_steps=inner_steps,
                inner_lr=inner_lr,
                meta_lr=meta_lr,
                attacker_steps=attacker_steps,
                batch_size=batch_size,
                hidden=hidden,
                seed=seed,
            )
            set_threads(threads)
            dev = resolve_device(device)
            seed_everything(seed)
            _, summary = pretrain(cfg, out, device=dev, log=lambda text: console.print(text, highlight=False))
        except (ValueError, TypeError, KeyError, FileNotFoundError, RuntimeError) as err:
            fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
            return
        if as_json:
            typer.echo(json.dumps({"out": str(out), **summary}))
        else:
            typer.echo(
                f"saved attacker to {out}: accuracy under it {100 * summary['mean_learned_acc']:.1f} % vs "
                f"FGSM {100 * summary['mean_fgsm_acc']:.1f} % over {len(summary['tasks'])} tasks "
                f"({summary['seconds']:.0f} s)"
            )
