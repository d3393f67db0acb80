"""The ``metaat`` command, generated from the registries (typer + rich).

This package is the only place that imports typer, and nothing in the library imports it. Each
command lives in its own module here (``attack``, ``train``, ``eval``/``compare``, ``meta-pretrain``,
``demo``) exposing ``register(app)``; adding an algorithm to a registry never needs a CLI edit.
"""

from __future__ import annotations

import importlib
import sys
from enum import Enum
from typing import Annotated, Any

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
]


class Family(str, Enum):
    datasets = "datasets"
    models = "models"
    attacks = "attacks"
    defenses = "defenses"
    losses = "losses"
    presets = "presets"


def error_line(message: str) -> None:
    """One-line error on stderr."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


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


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``--option key=value`` pairs; values parsed as YAML scalars (numbers, bools, lists)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--option must look like key=value, got {item!r}")
        key, value = item.split("=", 1)
        parsed = yaml.safe_load(value)
        out[key.strip().replace("-", "_")] = tuple(parsed) if isinstance(parsed, list) else parsed
    return out


def _load_command_modules() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(app)


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
        app(args=argv if argv is not None else sys.argv[1:], standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover
        console.print("interrupted")
        raise SystemExit(130) from None
