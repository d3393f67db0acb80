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


def _run_task_file(tf: Any, tasks: Path, out: Path, resume: bool, device: Any, log: Any) -> dict[str, Any]:
    from metaat.meta.crosstask import pretrain_tasks

    command = f"metaat meta-pretrain --tasks {tasks} --out {out}" + (" --resume" if resume else "")
    _, card = pretrain_tasks(tf, out, device=device, log=log, reference=task_reference, resume=resume, command=command)
    return card


ATTACKER_FILES = ("generator.safetensors", "generator.json")
"""What ``meta-pretrain`` writes into ``--out`` (besides the lock file)."""


def check_attacker_folder(folder: Path, *, overwrite: bool, force: bool, reusable: bool | None) -> None:
    """Refuse (one-line ``ValueError``) to write an attacker into ``folder`` when that would replace
    one without ``--overwrite`` or write into a folder that is not an attacker's without ``--force``.

    ``reusable``: None without ``--resume``; else whether ``--resume`` can reuse the saved attacker
    (made from the same task file). Call it while holding the folder's lock. Temporary files that a
    killed save left (``.generator.*.tmp``) are removed.
    """
    from metaat.runtime import LOCK_FILE

    for name in ATTACKER_FILES:
        (folder / f".{name}.tmp").unlink(missing_ok=True)
    names = sorted({p.name for p in folder.iterdir()} - {LOCK_FILE})
    if not names:
        return
    if any(name in names for name in ATTACKER_FILES):
        if overwrite or reusable:
            return
        why = "one made from another task file; --resume cannot reuse it" if reusable is False else "an attacker"
        raise ValueError(f"{folder} already holds {why}; pass --overwrite to replace it or choose another folder")
    if not force:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise ValueError(
            f"{folder} exists and is not a metaat attacker folder (it holds {shown}); choose another folder "
            "or pass --force to write into it"
        )


def parse_stages(text: str) -> tuple[int, ...]:
    """``"0,5,10"`` → (0, 5, 10); a one-line error for anything else."""
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--stages must be comma-separated integers such as 0,5,10; got {text!r}") from None


_SINGLE_DATASET = (
    "data",
    "data_dir",
    "n",
    "threat",
    "model",
    "stages",
    "algorithm",
    "iters",
    "inner_steps",
    "inner_lr",
    "meta_lr",
    "attacker_steps",
    "batch_size",
    "hidden",
    "seed",
)
"""Options of the single-dataset pretraining; a task file sets all of them."""


def register(app: typer.Typer) -> None:
    """Add the ``meta-pretrain`` command to ``app``."""

    @app.command("meta-pretrain")
    def meta_pretrain(
        ctx: typer.Context,
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
        overwrite: Annotated[bool, typer.Option(help="replace an attacker already saved in --out")] = False,
        force: Annotated[bool, typer.Option(help="write into an existing folder that is not an attacker's")] = False,
    ) -> None:
        """Meta-pretrain the threat-conditioned learned attacker (REPTILE / FOMAML) and save it."""
        from metaat.cli import check_threat_fits, console, describe, fail, require_nonempty
        from metaat.meta.pretrain import PretrainConfig, pretrain
        from metaat.runtime import owned_folder, resolve_device, seed_everything, set_threads

        def log(text: str) -> None:
            console.print(text, highlight=False)

        def written(folder: Path) -> bool:
            return any((folder / name).exists() for name in ATTACKER_FILES)

        if tasks is not None:
            try:
                from metaat.meta.crosstask import _resumable
                from metaat.meta.tasks import load_task_file

                ignored = [
                    "--" + name.replace("_", "-")
                    for name in _SINGLE_DATASET
                    if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")
                ]
                if ignored:
                    raise ValueError(
                        f"{', '.join(ignored)} cannot be combined with --tasks (the task file sets the data, "
                        "models, threats and meta-training)"
                    )
                tf = load_task_file(tasks)
                set_threads(threads)
                dev = resolve_device(device)
                with owned_folder(out, written=written) as folder:
                    reusable = (_resumable(folder, tf) is not None) if resume else None
                    check_attacker_folder(folder, overwrite=overwrite, force=force, reusable=reusable)
                    card = _run_task_file(tf, tasks, out, resume, dev, log)
            except (ValueError, TypeError, KeyError, FileNotFoundError, RuntimeError) as err:
                fail(describe(err))
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
            if resume:
                raise ValueError("--resume needs --tasks (only a task-file run can be resumed)")
            require_nonempty("--data", data)
            for value in [*(threat or []), *(model or [])]:
                require_nonempty("--threat/--model", value)
            import metaat.data as datasets
            from metaat.threats import ThreatModel

            domain = datasets.info(data).domain
            for value in threat or []:
                check_threat_fits(value, data, domain)
                if not ThreatModel.parse(value).continuous:
                    raise ValueError(
                        f"--threat {value}: the learned attacker takes gradient steps; give a continuous threat"
                    )
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
            with owned_folder(out, written=written) as folder:
                check_attacker_folder(folder, overwrite=overwrite, force=force, reusable=None)
                seed_everything(seed)
                _, summary = pretrain(cfg, folder, device=dev, log=log)
        except (ValueError, TypeError, KeyError, FileNotFoundError, RuntimeError) as err:
            fail(describe(err))
            return
        if as_json:
            typer.echo(json.dumps({"out": str(out), **summary}))
        else:
            typer.echo(
                f"saved attacker to {out}: accuracy under it {100 * summary['mean_learned_acc']:.1f} % vs "
                f"FGSM {100 * summary['mean_fgsm_acc']:.1f} % over {len(summary['tasks'])} tasks "
                f"({summary['seconds']:.0f} s)"
            )
