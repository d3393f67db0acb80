"""The ``metaat`` command, generated from the registries (typer + rich).

This package is the only place that imports typer, and nothing in the library imports it. Each
command lives in its own module here (``attack``, ``train``, ``eval``/``compare``, ``meta-pretrain``,
``demo``, ``export``) exposing ``register(app)``; adding an algorithm to a registry never needs a CLI edit.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console

app = typer.Typer(
    name="metaat",
    help="Meta adversarial training: learned attackers, multi-threat robust training, trustworthy evaluation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)

# Modules exposing ``register(app: typer.Typer) -> None``.
_COMMAND_MODULES: list[str] = [
    "metaat.cli.attack",
    "metaat.cli.train",
    "metaat.cli.eval",
    "metaat.cli.meta",
    "metaat.cli.demo",
    "metaat.cli.export",
]


class Family(str, Enum):
    datasets = "datasets"
    models = "models"
    attacks = "attacks"
    defenses = "defenses"
    losses = "losses"
    presets = "presets"


def error_line(message: str) -> None:
    """One-line error on stderr (line breaks in ``message`` become spaces; no markup is read in it)."""
    console.print("[bold red]error:[/] ", end="", highlight=False, soft_wrap=True)
    console.print(" ".join(message.split()), markup=False, emoji=False, highlight=False, soft_wrap=True)


def describe(err: BaseException) -> str:
    """The one line that tells a user what went wrong: :func:`expected_failure`'s, else the message
    (a ``KeyError``'s without its quotes), else the exception's type."""
    line = expected_failure(err)
    if line is not None:
        return line
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return text.strip() or type(err).__name__


def fail(message: str) -> None:
    """One-line error on stderr and exit status 2."""
    error_line(message)
    raise typer.Exit(2)


def registry_of(family: str) -> Any:
    if family == "datasets":
        from metaat.data import DATASETS

        return DATASETS
    if family == "models":
        from metaat.models import MODELS

        return MODELS
    if family == "attacks":
        import metaat.meta  # noqa: F401  (registers the learned attack)
        from metaat.attacks import ATTACKS

        return ATTACKS
    if family == "defenses":
        import metaat.defenses  # noqa: F401  (registers every defense)
        from metaat.defenses.base import DEFENSES

        return DEFENSES
    from metaat.losses import LOSSES

    return LOSSES


@app.command("list")
def list_cmd(family: Annotated[Family, typer.Argument(help="what to list")]) -> None:
    """List the registered datasets, models, attacks, defenses or losses, or the training presets."""
    if family.value == "presets":
        from metaat.train.presets import available, describe

        names = available()
        width = max((len(n) for n in names), default=0)
        for name in names:
            typer.echo(f"{name:{width}s}  {describe(name)}")
        return
    reg = registry_of(family.value)
    for name in reg.available():
        typer.echo(f"{name:18s} {reg.describe(name)}")


def parse_options(items: list[str] | None, flag: str = "--option") -> dict[str, Any]:
    """``--option key=value`` pairs; values parsed as YAML scalars (numbers, bools, lists).

    ``ValueError`` (one line, naming the pair) for a missing ``=``, an empty key or a value that is
    not valid YAML.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{flag} must look like key=value, got {item!r}")
        key, value = item.split("=", 1)
        if not key.strip():
            raise ValueError(f"{flag} {item!r} has no key (key=value)")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as err:
            reason = " ".join(str(getattr(err, "problem", None) or "not valid YAML").split())
            raise ValueError(f"{flag} {item!r}: the value is not valid YAML ({reason})") from None
        if isinstance(parsed, dict):
            raise ValueError(f"{flag} {item!r}: the value must be a number, a string, a bool or a list, not a mapping")
        out[key.strip().replace("-", "_")] = tuple(parsed) if isinstance(parsed, list) else parsed
    return out


def require_nonempty(flag: str, value: str | None) -> str | None:
    """``value`` unless it is given but empty or blank (``--attack ''``): then ``ValueError`` naming
    ``flag`` — an empty value must not silently stand for the default."""
    if value is not None and not value.strip():
        raise ValueError(f"{flag} is empty; give a value or leave the option out for its default")
    return value


def check_threat_fits(threat: str, data: str, domain: str) -> None:
    """``ValueError`` naming both when ``threat`` cannot perturb ``data``'s inputs: a continuous set
    (``linf:0.1``, ``spike:5,2``) has no meaning on token ids, and word edits (``syn:2``) none on
    pixels or signals."""
    from metaat.threats import ThreatModel

    continuous = ThreatModel.parse(threat).continuous
    if domain == "text" and continuous:
        raise ValueError(
            f"{threat} is a continuous threat, but {data} is a text dataset of token ids; "
            "give a set of edits such as syn:2 or typo:1"
        )
    if domain != "text" and not continuous:
        raise ValueError(f"{threat} is a set of word edits, but {data} is not a text dataset ({domain})")


def check_new_file(path: Path, flag: str, overwrite: bool, *, suffix: str | None = None) -> Path:
    """``path`` as a file ``flag`` may write: the right suffix, a writable folder, and no existing
    file unless ``overwrite`` (``ValueError`` otherwise, naming ``flag`` and the path)."""
    import os

    if suffix is not None and path.suffix != suffix:
        raise ValueError(f"{flag} writes a {suffix} file; got {path.name!r}")
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder, not a file")
    if path.exists() and not overwrite:
        raise ValueError(f"{flag} {path} already exists; pass --overwrite to replace it")
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    if not folder.is_dir():
        raise ValueError(f"{flag} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: the folder {folder} is not writable")
    return path


def expected_failure(exc: BaseException) -> str | None:
    """One line for a failure a user can cause and fix (permissions, disk, memory, bad YAML, bad
    shapes); None for a bug."""
    import errno

    import yaml

    if isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and ("can't allocate" in str(exc) or "out of memory" in str(exc).lower())
    ):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "MemoryError"
        return (
            f"not enough memory: {first} — the model or the batch is too large for this machine "
            "(try a smaller --batch-size, --n or model)"
        )
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            return f"no space left on the device writing{where}"
        if isinstance(exc, PermissionError):
            return f"permission denied:{where or ' ' + str(exc)}"
        if exc.strerror:
            return f"{exc.strerror}:{where}" if where else str(exc.strerror)
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, yaml.YAMLError):
        mark = getattr(exc, "problem_mark", None)
        name = getattr(mark, "name", None)
        at = f" in {name} line {mark.line + 1}" if mark is not None and name else ""
        return f"malformed YAML{at}: {' '.join(str(getattr(exc, 'problem', None) or exc).split())}"
    if isinstance(exc, RuntimeError) and any(
        k in str(exc) for k in ("shape", "size mismatch", "must match the size", "Expected", "expected")
    ):
        return f"the model cannot take this input: {str(exc).strip().splitlines()[0]}"
    return None


def log_traceback(exc: BaseException) -> Path:
    """Write ``exc``'s traceback to a new file under the temporary folder; return its path."""
    import tempfile
    import traceback

    folder = Path(tempfile.gettempdir()) / "metaat-errors"
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix="metaat-", suffix=".log")
    with open(fd, "w", encoding="utf-8") as f:
        f.write(f"metaat {' '.join(sys.argv[1:])}\n")
        f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return Path(name)


def guarded(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with no traceback reaching the user: an expected failure becomes one line and
    exit status 1; anything else one line plus the path of a log file holding the traceback."""
    import functools

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.ClickException, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - the last line of defence before the user
            line = expected_failure(exc)
            if line is None:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                line = f"unexpected {type(exc).__name__}{': ' + first if first else ''}"
                try:
                    line += f" (traceback in {log_traceback(exc)}; please report it)"
                except OSError:
                    pass
            error_line(line)
            raise typer.Exit(1) from None

    run.metaat_guarded = True  # type: ignore[attr-defined]
    return run


def _load_command_modules() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(app)
    for info in app.registered_commands:  # a command registered without guarded() gets it here
        if info.callback is not None and not getattr(info.callback, "metaat_guarded", False):
            info.callback = guarded(info.callback)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    from metaat.plugins import PluginError, load_plugins

    try:
        load_plugins()  # third-party registry entries (METAAT_PLUGINS, entry points) before the arguments
    except PluginError as exc:  # before the app runs, so fail()'s typer.Exit has no one to catch it
        error_line(str(exc))
        raise SystemExit(2) from None
    _load_command_modules()
    try:
        code = app(args=argv if argv is not None else sys.argv[1:], standalone_mode=False)
    except (typer.TyperException, click.ClickException) as exc:  # a usage error: one line, not a framed panel
        ctx = getattr(exc, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else ""
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        error_line(f"{where}{message}{hint}")
        raise SystemExit(getattr(exc, "exit_code", 2)) from None
    except (KeyboardInterrupt, typer.Abort, click.Abort):  # pragma: no cover
        console.print("interrupted")
        raise SystemExit(130) from None
    raise SystemExit(code if isinstance(code, int) else 0)
