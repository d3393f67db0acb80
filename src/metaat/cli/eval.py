"""``metaat eval`` and ``metaat compare`` (registered into the typer app by :func:`register`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from metaat.cli import guarded
from metaat.eval.report import fmt_pct
from metaat.runtime import check_out_dir

DEFAULT_STATE = ".eval-state.json"
HOLDOUT_POINTS = 500


def load_target(target: str | os.PathLike[str]) -> tuple[Any, Path, Path | None]:
    """The model (CPU, eval mode), its file/folder and its run folder."""
    import metaat.models as models

    path, run = models.locate_model(target)
    return models.load_model(path), path, run


def _model_card(model: Any, path: Path) -> dict[str, Any]:
    from metaat.models import count_parameters

    spec = getattr(model, "metaat_spec", None)
    return {
        "name": spec.get("name") if isinstance(spec, dict) else type(model).__name__,
        "source": str(path),
        "parameters": count_parameters(model),
        "spec": spec if isinstance(spec, dict) else None,
    }


def check_data_fits(spec: dict[str, Any] | None, data: str, info: Any) -> None:
    """One-line error when the checkpoint's architecture was built for other data."""
    if not isinstance(spec, dict):
        return
    want = (spec.get("in_channels"), spec.get("image_size"), spec.get("num_classes"))
    have = (info.in_channels, info.image_size, info.num_classes)
    if want != have:
        raise ValueError(
            f"the checkpoint is a {spec.get('name')} for {want[0]}x{want[1]}x{want[1]} inputs and {want[2]} classes, "
            f"but {data} has {have[0]}x{have[1]}x{have[1]} inputs and {have[2]} classes"
        )


def summary_table(report: dict[str, Any]) -> Table:
    from metaat.eval.report import headline_rows

    table = Table(
        title=f"{report['model']['name']} on {report['dataset']['name']} (n = {report['dataset']['n']}, "
        f"suite {report['protocol']['suite']})"
    )
    table.add_column("metric")
    table.add_column("accuracy (%)", justify="right")
    for row in headline_rows(report):
        table.add_row(row["label"], fmt_pct(row["value"], row["upper"]))
    return table


def _transfer_set(path: Path, data: str, start: int, x: Any, y: Any, threats: Any) -> tuple[Any, Any]:
    """A saved adversarial set checked against this evaluation: the same dataset, points inside the
    evaluated slice, labels and threat ball verified against the clean points, an evaluated threat.
    Returns ``(set, positions in the slice)``; raises ``ValueError``/``FileNotFoundError``."""
    from metaat.attacks.transfer import check_against, load_adversarial

    adv = load_adversarial(path)
    if not adv.meta["within_threat"]:
        raise ValueError(
            f"{path} holds {adv.meta['attack']} examples that do not all lie in {adv.threat}: a transfer check "
            "compares only examples inside the evaluated threat"
        )
    if adv.meta["split"] != "test":
        raise ValueError(f"{path} holds {adv.meta['split']}-split examples; this evaluation scores the test split")
    if adv.meta["data"] != data:
        raise ValueError(f"{path} holds {adv.meta['data']} examples; this evaluation scores {data}")
    positions = adv.index - start
    if int(positions.min()) < 0 or int(positions.max()) >= x.shape[0]:
        raise ValueError(
            f"{path} covers test points {int(adv.index.min())}-{int(adv.index.max())}, outside this evaluation's "
            f"{start}-{start + x.shape[0] - 1}"
        )
    check_against(adv, x[positions], y[positions])
    evaluated = [str(t) for t in threats]
    if str(adv.threat) not in evaluated:
        raise ValueError(f"{path} holds {adv.threat} examples; evaluated threats: {', '.join(evaluated)}")
    return adv, positions


def _with_transfer_checks(result: Any, model: Any, x: Any, y: Any, transferred: list[tuple[Any, Any]]) -> Any:
    """``result`` with one ``transfer`` check per saved set, against its exact per-threat flags
    (the union's flags where ``--union-only`` made the threat's an upper bound: fewer points, so
    the check can only undercount)."""
    import dataclasses

    from metaat.eval.checks import check_transfer
    from metaat.models import model_device

    device = model_device(model)
    extra = []
    for adv, positions in transferred:
        threat = str(adv.threat)
        against = "union" if result.upper_bound.get(threat) else "threat"
        white = result.flags["union" if against == "union" else threat][positions]
        source = str(adv.meta.get("source_model") or "another model")
        xs, ys = x[positions].to(device), y[positions].to(device)
        extra.append(check_transfer(model, xs, adv.x_adv.to(device), ys, white, threat, source, against=against))
    return dataclasses.replace(result, checks=(*result.checks, *extra))


def extra_state(state_path: Path) -> Path:
    """Where ``--suite apgd-worst`` keeps its extra pass's state: beside the apgd evaluation's."""
    return state_path.with_name(f"{state_path.stem}.extra{state_path.suffix}")


def eval_cmd(
    target: Annotated[str, typer.Argument(help="run folder, checkpoint folder or model .safetensors")],
    data: Annotated[str | None, typer.Option(help="dataset (default: the run's, else fashion-mnist)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="folder holding the dataset files")] = None,
    threat: Annotated[
        list[str] | None,
        typer.Option("--threat", help="threat, repeatable (default: the dataset's own; images: linf:0.1 l2:1.5 l1:10)"),
    ] = None,
    n: Annotated[
        int, typer.Option("--n", "--points", help="number of test points (--points under torchrun, see below)")
    ] = 1000,
    start: Annotated[
        int,
        typer.Option(
            "--start",
            "--start-at",
            help="index of the first test point (the full benchmark scores --start 9000 --n 1000)",
        ),
    ] = 0,
    suite: Annotated[
        str,
        typer.Option(
            help="quick | apgd | standard | apgd-worst (apgd, then APGD-CE x5 + APGD-T with a second seed on the "
            "points it left robust: the per-point worst case, and how many points the extra pass broke)"
        ),
    ] = "apgd",
    union_only: Annotated[
        bool,
        typer.Option(
            "--union-only",
            help="attack each threat only on points still robust (same union, upper-bound per-threat numbers)",
        ),
    ] = False,
    unseen: Annotated[bool, typer.Option("--unseen/--no-unseen", help="run the unseen attacks")] = True,
    checks: Annotated[bool, typer.Option("--checks/--no-checks", help="run the gradient-masking checks")] = True,
    out: Annotated[Path | None, typer.Option(help="report folder (default: the run folder)")] = None,
    state: Annotated[Path | None, typer.Option(help="resume file (default: <out>/.eval-state.json)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="points per attack chunk (default: auto)")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")] = "auto",
    transfer: Annotated[
        list[Path] | None,
        typer.Option(
            "--transfer",
            help="examples saved by `metaat attack --save` on another model: a transfer check, repeatable",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON on stdout")] = False,
) -> None:
    """Evaluate a model: clean, per-threat and union robust accuracy, unseen attacks, gradient-masking
    checks; writes report.json, report.md and report.html.

    Under ``torchrun --nproc_per_node=N -m metaat.cli eval ...`` the attack chunks are split over the
    N processes (gloo on CPU, nccl on GPU, one GPU each) and merged: the same flags as one process;
    rank 0 runs the unseen attacks and checks and writes the report. There, spell ``--n`` as
    ``--points`` and ``--start`` as ``--start-at``: torchrun's own parser reads ``--n`` and ``--start``
    as abbreviations of its options (``--nnodes``…, ``--start-method``) before metaat sees them."""
    from rich.progress import Progress

    import metaat.data as datasets
    from metaat.cli import check_threat_fits, describe, fail, require_nonempty
    from metaat.eval.evaluate import EVAL_THREATS, evaluate
    from metaat.eval.output import write_reports
    from metaat.eval.report import build_report, read_run_config
    from metaat.eval.state import StateMismatchError
    from metaat.eval.union import Shard
    from metaat.eval.worst import WORST_SUITE, evaluate_worst
    from metaat.runtime import resolve_device, seed_everything, set_threads
    from metaat.threats import parse_threats, resolve_threat
    from metaat.train import distributed

    err_console = Console(stderr=True)
    dist_info = distributed.DistInfo()
    try:
        for flag, value in (("--data", data), ("--suite", suite), ("target", target)):
            require_nonempty(flag, value)
        for value in threat or []:
            require_nonempty("--threat", value)
        set_threads(threads)
        dist_info, dev = distributed.init_from_env(resolve_device(device))
        seed_everything(seed)
        if suite not in ("quick", "apgd", "standard", WORST_SUITE):
            raise ValueError(f"unknown suite {suite!r}; valid suites: apgd, apgd-worst, quick, standard")
        model, path, run = load_target(target)
        config = read_run_config(run)
        name = data or config.get("data") or "fashion-mnist"
        folder = data_dir if data_dir is not None else config.get("data_dir") if data is None else None
        info = datasets.info(name)
        threats = parse_threats(tuple(resolve_threat(t) for t in threat) if threat else (info.threats or EVAL_THREATS))
        for t in threats:
            check_threat_fits(str(t), name, info.domain)
        check_data_fits(getattr(model, "metaat_spec", None), name, info)
        x, y = datasets.load(name, "test", data_dir=folder, n=n, start=start)
        holdout = None
        if unseen:
            try:
                holdout = datasets.load(name, "train", data_dir=folder, n=HOLDOUT_POINTS)
            except (ValueError, FileNotFoundError):
                holdout = None  # universal attacks fall back to two-fold on the test points
        transferred = [_transfer_set(p, name, start, x, y, threats) for p in transfer or []]
        out_dir = check_out_dir(out or run or (path if path.is_dir() else path.parent))
        state_path = state or out_dir / DEFAULT_STATE
        model = model.to(dev)
    except (ValueError, TypeError, KeyError, FileNotFoundError, RuntimeError) as err:
        distributed.shutdown(dist_info)
        fail(describe(err))
        return
    shard = None
    if dist_info.enabled:
        shard = Shard(
            dist_info.rank,
            dist_info.world_size,
            lambda t: distributed.all_reduce_sum(t, dist_info),
            lambda value: distributed.gather_json(value, dist_info),
        )
        state_path = state_path.with_name(
            f"{state_path.stem}.rank{dist_info.rank}-of-{dist_info.world_size}{state_path.suffix}"
        )
    main = not dist_info.enabled or dist_info.is_main

    def run_evaluation() -> Any:
        with Progress(console=err_console, transient=True, disable=not main) as bar:
            tasks: dict[str, Any] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done, total=total)

            options: dict[str, Any] = {"union_only": union_only, "seed": seed, "unseen": unseen, "checks": checks}
            options.update(batch_size=batch_size, holdout=holdout, progress=progress, shard=shard)
            if suite == WORST_SUITE:  # the apgd evaluation's state, then the extra pass's beside it
                return evaluate_worst(
                    model, x, y, threats, state_path=state_path, extra_state_path=extra_state(state_path), **options
                ).result
            return evaluate(model, x, y, threats, suite=suite, state_path=state_path, **options)

    lock = None
    if main and not dist_info.enabled and run is not None and out_dir.resolve() == Path(run).resolve():
        from metaat.runtime import FolderLock

        try:  # a run folder: not while a training or another evaluation writes into it
            lock = FolderLock(out_dir).acquire()
        except ValueError as err:
            fail(describe(err))
    try:
        try:
            result = run_evaluation()
        except StateMismatchError:
            if state is not None:
                raise
            for stale in (state_path, extra_state(state_path)):
                stale.unlink(missing_ok=True)  # a stale default state from another evaluation
            result = run_evaluation()
        if main and transferred:
            result = _with_transfer_checks(result, model, x, y, transferred)
        if main:
            report = build_report(
                result,
                model=_model_card(model, path),
                dataset={"name": name, "split": "test", "start": start},
                run_dir=run,
            )
            paths = write_reports(report, out_dir)
        if state is None:
            state_path.unlink(missing_ok=True)
            extra_state(state_path).unlink(missing_ok=True)
    except (ValueError, TypeError, KeyError, FileNotFoundError, RuntimeError, OSError) as err:
        fail(describe(err))
        return
    finally:
        if lock is not None:
            lock.release()
        distributed.shutdown(dist_info)
    if not main:
        return
    if as_json:
        typer.echo(json.dumps({k: v for k, v in report.items() if k != "examples"}, indent=2, ensure_ascii=False))
        return
    console = Console()
    console.print(summary_table(report))
    from metaat.eval.report import checks_summary

    console.print(checks_summary(report), style="bold red" if report["flagged"] else "green")
    for c in report["flagged"]:
        where = f" ({c['threat']})" if c.get("threat") else ""
        console.print(f"  - {c['name']}{where}: {c['explanation']}", highlight=False)
    console.print(f"HTML report: {paths['html']}", highlight=False, soft_wrap=True)


def compare_cmd(
    runs: Annotated[list[Path], typer.Argument(help="run folders (or report.json files)")],
    out: Annotated[Path | None, typer.Option(help="folder for leaderboard.md/html (default: the runs' parent)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the leaderboard as JSON on stdout")] = False,
) -> None:
    """Leaderboard of evaluated runs, sorted by union robust accuracy, with training cost."""
    from metaat.cli import fail
    from metaat.eval.compare import leaderboard, render_leaderboard_markdown
    from metaat.eval.output import write_leaderboard

    try:
        board = leaderboard(list(runs))
        parents = {Path(r).expanduser().resolve().parent for r in runs}
        out_dir = out or (parents.pop() if len(parents) == 1 else Path.cwd())
        paths = write_leaderboard(board, out_dir)
    except (ValueError, KeyError, FileNotFoundError, OSError) as err:
        fail(str(err))
        return
    if as_json:
        typer.echo(json.dumps(board, indent=2, ensure_ascii=False))
        return
    typer.echo(render_leaderboard_markdown(board))
    notes = Console(stderr=True)
    for reason in board["skipped"]:
        notes.print(f"skipped: {reason}", highlight=False, soft_wrap=True)
    notes.print(f"HTML leaderboard: {paths['html']}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``eval`` and ``compare`` to the ``metaat`` command."""
    app.command("eval")(guarded(eval_cmd))
    app.command("compare")(guarded(compare_cmd))
