"""``metaat attack`` (registered into the typer app by :func:`register`): one attack on a saved
model, ``--save`` to keep the examples, ``--transfer`` to score another model on them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from metaat.cli import (
    check_new_file,
    check_threat_fits,
    console,
    describe,
    expected_failure,
    fail,
    guarded,
    parse_options,
    require_nonempty,
)


def attack_cmd(
    model: Annotated[str, typer.Option(help="checkpoint folder, run folder or model .safetensors")],
    attack: Annotated[str | None, typer.Option(help="attack name (metaat list attacks) [default: pgd]")] = None,
    threat: Annotated[
        str | None,
        typer.Option(
            help="threat model, e.g. linf:0.1, l2:1.5, l1:10, spike:5,2, syn:2 [default: the dataset's first "
            "threat (images: linf:0.1) for an attack bounded by one; spatial, corruption and patch take none]"
        ),
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="dataset name (metaat list datasets) [default: fashion-mnist]")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="folder holding the dataset files")] = None,
    n: Annotated[int | None, typer.Option(help="number of test points [default: 1000]")] = None,
    start: Annotated[int | None, typer.Option(help="index of the first test point [default: 0]")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="attack option key=value")] = None,
    generator: Annotated[Path | None, typer.Option(help="saved generator for --attack learned")] = None,
    batch_size: Annotated[int | None, typer.Option(help="attack chunk size (default: auto)")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")] = "auto",
    save: Annotated[
        Path | None, typer.Option(help="write the adversarial examples to this .safetensors file (for --transfer)")
    ] = None,
    transfer: Annotated[
        Path | None,
        typer.Option(help="score the model on examples saved by --save from another model (a transfer attack)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON on stdout")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="let --save replace an existing file")] = False,
) -> None:
    """Attack a saved model on test points and print clean and robust accuracy.

    ``--save FILE.safetensors`` keeps the adversarial examples, their test-point indices and the
    attack that made them; ``--transfer FILE`` scores this model on examples saved from another one,
    after checking them against the dataset's clean points and the threat they claim.
    """
    try:
        for flag, value in (("--attack", attack), ("--threat", threat), ("--data", data), ("--model", model)):
            require_nonempty(flag, value)
    except ValueError as err:
        fail(str(err))
    if transfer is not None:
        given = {
            "--attack": attack,
            "--threat": threat,
            "--n": n,
            "--start": start,
            "--option": option or None,
            "--generator": generator,
            "--save": save,
            "--overwrite": overwrite or None,
        }
        clash = [flag for flag, value in given.items() if value is not None]
        if clash:
            flags = ", ".join(clash)
            fail(f"--transfer scores the examples saved in {transfer}; it takes no {flags} (the file fixes them)")
        _transfer(model, transfer, data, data_dir, batch_size, seed, threads, device, as_json)
        return
    _attack(
        model,
        attack,
        threat,
        data or "fashion-mnist",
        data_dir,
        1000 if n is None else n,
        0 if start is None else start,
        option,
        generator,
        batch_size,
        seed,
        threads,
        device,
        save,
        as_json,
        overwrite,
    )


def _probe(net: Any, x: Any, y: Any, data: str) -> None:
    """Fail with one line when ``net`` cannot classify ``data``'s inputs (shape, channels, classes,
    device, what it returns)."""
    import torch

    if len(y) == 0:
        fail(f"no {data} points to attack (--n and --start select none)")
    try:
        with torch.no_grad():
            probe = net.eval()(x[:2])
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        fail(f"the model does not accept {data} images of shape {tuple(x.shape[1:])}: {reason}")
        return
    if not isinstance(probe, torch.Tensor):
        fail(f"the model must return one tensor of logits; it returned {type(probe).__name__}")
        return
    if probe.dim() != 2 or probe.shape[0] != min(2, len(y)):
        fail(
            f"the model must return logits of shape (batch, classes); for {min(2, len(y))} {data} inputs "
            f"it returned {tuple(probe.shape)}"
        )
    if not probe.is_floating_point():
        fail(f"the model must return floating-point logits; it returned dtype {probe.dtype}")
    if probe.shape[1] <= int(y.max()):
        fail(f"the model outputs {probe.shape[1]} classes per input, but {data} has labels up to {int(y.max())}")


def discrete_attack(attack: str | None, threat: str | None) -> str:
    """The attack to run: ``attack``, else pgd — or, for a discrete threat (``syn:2``, ``typo:1``),
    the first of its kind's evaluation attacks. A gradient attack asked for a discrete threat is a
    one-line ``ValueError`` naming the attacks that take it (it cannot take a step in a set of edits)."""
    from metaat.threats import ThreatModel

    kind = ThreatModel.parse(threat).kind if threat is not None else None
    if kind is None or kind.continuous:
        return attack or "pgd"
    names = list(dict.fromkeys(name for name, _ in kind.evaluation_attacks))
    if attack is None and names:
        return names[0]
    if attack is not None and attack in names:
        return attack
    raise ValueError(
        f"{attack or 'pgd'} attacks continuous threats, but {threat} is a discrete set of edits; "
        f"attack it with {', '.join(names) or 'a search attack'}"
    )


def _attack(
    model: str,
    attack: str | None,
    threat: str | None,
    data: str,
    data_dir: Path | None,
    n: int,
    start: int,
    option: list[str] | None,
    generator: Path | None,
    batch_size: int | None,
    seed: int,
    threads: int | None,
    device: str,
    save: Path | None,
    as_json: bool,
    overwrite: bool = False,
) -> None:
    import time

    import torch
    from rich.progress import Progress

    import metaat
    import metaat.attacks as attacks
    import metaat.data as datasets
    from metaat.attacks.base import chunks, name_points, predictions
    from metaat.models import locate_model, resolve_model
    from metaat.models.checkpoint import recorded_sha256
    from metaat.runtime import resolve_device, seed_everything, set_threads
    from metaat.threats import ThreatModel, in_threat, resolve_threat

    try:
        if save is not None:
            check_new_file(save, "--save", overwrite, suffix=".safetensors")
        set_threads(threads)
        dev = resolve_device(device)
        gen = seed_everything(seed)
        opts = parse_options(option)
        if generator is not None:
            opts["path"] = str(generator)
        if batch_size is not None:
            opts["batch_size"] = batch_size
        info = datasets.info(data)
        bounded = bool(getattr(attacks.ATTACKS.get(attack or "pgd"), "bounded", True))
        if bounded and threat is None:  # the documented default of --threat: the dataset's first threat
            threat = info.threats[0] if info.threats else "linf:0.1"
        if threat is not None:
            threat = resolve_threat(threat)  # a bare norm takes its default radius, as in train
        if threat is not None:
            check_threat_fits(threat, data, info.domain)
        attack = discrete_attack(attack, threat)
        if save is not None and not bounded:
            raise ValueError(f"--save keeps examples of an attack bounded by a threat model; {attack} takes none")
        if save is not None and info.domain != "images":
            raise ValueError(f"--save keeps image examples (pixels in [0, 1]); {data} is a {info.domain} dataset")
        # every threat lies inside the dataset's input box (pixels [0, 1]; a sensor's saturation range)
        bound = ThreatModel.parse(threat).with_box(*info.box) if threat is not None else None
        atk = attacks.create(attack, threat=bound, seed=seed, **opts)
        net = resolve_model(model).to(dev)  # after every argument check: those fail at once
        x, y = datasets.load(data, "test", data_dir=data_dir, n=n, start=start)
    except (ValueError, TypeError, KeyError, FileNotFoundError, RuntimeError) as err:
        fail(describe(err))
        return
    x, y = x.to(dev), y.to(dev)
    # A model built for other images (size, channels, classes) would fail mid-attack with a traceback.
    _probe(net, x, y, data)
    step = 250
    clean_ok = torch.zeros(len(y), dtype=torch.bool)
    robust_ok = torch.zeros(len(y), dtype=torch.bool)
    nonfinite = torch.zeros(len(y), dtype=torch.bool)
    kept: list[torch.Tensor] = []
    t0 = time.perf_counter()
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"{attack} {threat or ''}", total=len(y))
            for sl in chunks(len(y), step):
                xb, yb = x[sl], y[sl]
                with torch.no_grad():
                    pred = predictions(net.eval()(xb))
                if bool((pred < 0).any()):  # a model NaN on clean points has no accuracy to report
                    where = name_points(pred < 0, start + sl.start)
                    fail(f"the model returns non-finite logits (NaN or Inf) on {where}")
                clean_ok[sl] = (pred == yb).cpu()
                x_adv = atk(net, xb, yb, generator=gen if atk.takes_generator else None)
                if not bool(torch.isfinite(x_adv).all()):
                    fail(f"{attack} returned non-finite adversarial inputs (the model's gradients are NaN or Inf?)")
                with torch.no_grad():
                    pred_adv = predictions(net(x_adv))
                nonfinite[sl] = (pred_adv < 0).cpu()  # counted as broken, and reported
                robust_ok[sl] = (pred_adv == yb).cpu() & clean_ok[sl]
                if save is not None:
                    kept.append(x_adv.cpu())
                progress.advance(task, len(yb))
    except typer.Exit:
        raise
    except (ValueError, RuntimeError) as err:  # options only checkable against the data (a patch too big)
        fail(describe(err) if expected_failure(err) else f"{attack}: {describe(err)}")
        return
    clean_acc = clean_ok.float().mean().item()
    robust_acc = robust_ok.float().mean().item()
    seconds = round(time.perf_counter() - t0, 3)
    result: dict[str, Any] = {
        "model": str(model),
        "data": data,
        "n": int(len(y)),
        "start": start,
        "attack": repr(atk),
        "threat": threat,
        "clean": clean_acc,
        "robust": robust_acc,
        "seconds": seconds,
        "seed": seed,
        "nonfinite_adversarial": int(nonfinite.sum()),
    }
    if save is not None:
        from metaat.attacks.transfer import TOLERANCE, save_adversarial

        x_all = torch.cat(kept)
        within = bool(in_threat(x_all, x.cpu(), atk.threat, tol=TOLERANCE).all())
        meta = {
            "data": data,
            "split": "test",
            "threat": threat,
            "within_threat": within,
            "attack": repr(atk),
            "source_model": str(model),
            "source_sha256": recorded_sha256(locate_model(model)[0]),
            "seed": seed,
            "metaat_version": metaat.__version__,
        }
        try:
            index = torch.arange(start, start + len(y), dtype=torch.int64)
            path = save_adversarial(
                save, x_all, y.cpu(), index, meta=meta, source_clean=clean_ok, source_robust=robust_ok
            )
        except (ValueError, OSError) as err:
            fail(f"--save: {err}")
            return
        result.update(saved=str(path), within_threat=within)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(
            f"{attack}{' ' + threat if threat else ''} on {len(y)} points: clean {100 * clean_acc:.2f} %, "
            f"robust {100 * robust_acc:.2f} % ({seconds:.1f} s)"
        )
        if bool(nonfinite.any()):
            typer.echo(
                f"flagged: the model's outputs are NaN or Inf on {name_points(nonfinite, start)} after the attack; "
                "they are counted as broken"
            )
        if save is not None:
            inside = "every one inside" if result["within_threat"] else "not all inside"
            typer.echo(f"saved {len(y)} adversarial examples ({inside} {threat}) to {result['saved']}")


def _transfer(
    model: str,
    source: Path,
    data: str | None,
    data_dir: Path | None,
    batch_size: int | None,
    seed: int,
    threads: int | None,
    device: str,
    as_json: bool,
) -> None:
    import time

    from metaat.attacks.transfer import check_against, clean_points, load_adversarial, transfer_flags
    from metaat.models import resolve_model
    from metaat.runtime import resolve_device, seed_everything, set_threads

    try:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        set_threads(threads)
        dev = resolve_device(device)
        seed_everything(seed)
        adv = load_adversarial(source)
        if data is not None and data != adv.meta["data"]:
            raise ValueError(f"{source} holds {adv.meta['data']} examples, not {data}")
        x, y = clean_points(adv, data_dir)
        check_against(adv, x, y)
        net = resolve_model(model).to(dev)
    except (ValueError, TypeError, KeyError, FileNotFoundError, RuntimeError) as err:
        fail(describe(err))
        return
    name = str(adv.meta["data"])
    _probe(net, x.to(dev), y, name)
    t0 = time.perf_counter()
    clean_ok, robust_ok = transfer_flags(net, adv, x, chunk=batch_size or 256)
    clean_acc, robust_acc = clean_ok.float().mean().item(), robust_ok.float().mean().item()
    source_acc = adv.source_robust.float().mean().item()
    result = {
        "model": str(model),
        "data": name,
        "n": len(adv),
        "start": int(adv.index.min()),
        "attack": f"transfer: {adv.meta['attack']}",
        "threat": str(adv.meta["threat"]),
        "clean": clean_acc,
        "robust": robust_acc,
        "seconds": round(time.perf_counter() - t0, 3),
        "seed": seed,
        "transfer": str(source),
        "source_model": adv.meta.get("source_model") or "another model",
        "source_robust": source_acc,
    }
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(
            f"transfer of {result['threat']} examples from {result['source_model']} on {len(adv)} points: "
            f"clean {100 * clean_acc:.2f} %, robust {100 * robust_acc:.2f} % "
            f"(the source model: robust {100 * source_acc:.2f} %)"
        )


def register(app: typer.Typer) -> None:
    """Add ``attack`` to the ``metaat`` command."""
    app.command("attack")(guarded(attack_cmd))
