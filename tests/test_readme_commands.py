"""Every ``metaat`` command line the README shows names a real subcommand and real options, so the
front door cannot drift from the CLI."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import typer

from metaat import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_command_lines() -> list[list[str]]:
    """The words of every command line in the README's bash blocks that runs ``metaat`` (directly or
    as ``-m metaat.cli`` under torchrun), comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    out = []
    for line in (ln for block in blocks for ln in block.splitlines()):
        words = shlex.split(line, comments=True)
        if words[:1] == ["metaat"]:
            out.append(words[1:])
        elif "metaat.cli" in words:
            out.append(words[words.index("metaat.cli") + 1 :])
    return out


def test_the_readme_shows_the_cli() -> None:
    subcommands = {words[0] for words in readme_command_lines()}
    assert {"train", "eval", "attack", "compare", "list"} <= subcommands


def full_cli() -> typer.Typer:
    """A copy of ``metaat``'s app with every command module registered (the real one registers them
    lazily in ``main``)."""
    app = typer.Typer()
    app.registered_commands = list(cli.app.registered_commands)
    for name in cli._COMMAND_MODULES:
        importlib.import_module(name).register(app)
    return app


def test_every_readme_command_uses_a_real_subcommand_and_real_options() -> None:
    root = typer.main.get_command(full_cli())
    assert hasattr(root, "commands")
    for words in readme_command_lines():
        command = root.commands.get(words[0])
        assert command is not None, f"README runs `metaat {words[0]}`; valid: {sorted(root.commands)}"
        known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        for word in words[1:]:
            if word.startswith("--"):
                assert word.split("=")[0] in known, f"`metaat {' '.join(words)}`: {word} is not an option"
