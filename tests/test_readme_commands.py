"""Every ``metaat`` command line the README shows names a real subcommand and real options, so the
front door cannot drift from the CLI."""

from __future__ import annotations

import importlib
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import typer

from metaat import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def command_lines(page: Path = README) -> list[list[str]]:
    """The words of every command line in a page's bash blocks that runs ``metaat`` (directly, after
    environment assignments such as ``METAAT_PLUGINS=...``, or as ``-m metaat.cli`` under torchrun),
    comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
    out = []
    for line in (ln for block in blocks for ln in logical_lines(block)):
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            words = words[1:]
        if words[:1] == ["metaat"]:
            out.append(words[1:])
        elif "metaat.cli" in words:
            out.append(words[words.index("metaat.cli") + 1 :])
    return out


def logical_lines(block: str) -> list[str]:
    """A shell block's lines with backslash continuations joined."""
    return re.sub(r"\\\n\s*", " ", block).splitlines()


def readme_command_lines() -> list[list[str]]:
    return command_lines(README)


def test_the_readme_shows_the_cli() -> None:
    subcommands = {words[0] for words in readme_command_lines()}
    assert {"train", "eval", "attack", "compare", "list"} <= subcommands


def full_cli() -> typer.Typer:
    """A copy of ``metaat``'s app with every command module registered (the CLI may register them
    lazily in ``main``, from the modules listed in ``_COMMAND_MODULES``)."""
    app = typer.Typer()
    app.registered_commands = list(cli.app.registered_commands)
    for name in getattr(cli, "_COMMAND_MODULES", ()):
        importlib.import_module(name).register(app)
    return app


DOC_PAGES = [README, *sorted((README.parent / "docs").rglob("*.md"))]


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: p.name)
def test_every_documented_command_uses_a_real_subcommand_and_real_options(page: Path) -> None:
    root = typer.main.get_command(full_cli())
    assert hasattr(root, "commands")
    for words in command_lines(page):
        command = root.commands.get(words[0])
        assert command is not None, f"{page.name} runs `metaat {words[0]}`; valid: {sorted(root.commands)}"
        known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        for word in words[1:]:
            if word.startswith("--"):
                assert word.split("=")[0] in known, f"{page.name}: `metaat {' '.join(words)}`: {word} is not an option"


ROOT = README.parent
BENCHMARK_PAGES = [README, ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def benchmark_command_lines() -> list[tuple[str, list[str]]]:
    """(page, words) of every ``python benchmarks/<script>.py ...`` command the README,
    benchmarks/README.md and the docs show, in backticks or bash blocks; comments and placeholders dropped."""
    out = []
    for page in BENCHMARK_PAGES:
        text = page.read_text(encoding="utf-8")
        blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        inline = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]  # may wrap lines
        spans = blocks + inline
        for line in (ln for span in spans for ln in logical_lines(span)):
            for part in re.split(r"\s&\s|&&|;", line):
                if not part.strip().startswith("python benchmarks/"):
                    continue
                words = shlex.split(re.sub(r"<[^>]*>", "X", part), comments=True)  # <folder>: a placeholder
                if len(words) > 1:
                    out.append((page.relative_to(ROOT).as_posix(), words[1:]))
    return out


def test_every_benchmark_command_in_the_docs_names_a_real_script_and_real_options(
    load_benchmark: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commands that reproduce the documented numbers cannot drift from the scripts: each names a
    script in benchmarks/ and only options its parser defines (spelled out, not abbreviated)."""
    import argparse

    class Parsed(Exception):
        pass

    def capture(self: argparse.ArgumentParser, *a: object, **k: object) -> None:
        raise Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    commands = benchmark_command_lines()
    assert len(commands) > 20, "the docs' benchmark commands were not found"
    options: dict[str, set[str]] = {}
    for page, (script, *args) in commands:
        name = Path(script).stem
        assert (README.parent / script).is_file(), f"{page} runs `{script}`, which does not exist"
        if name not in options:
            with pytest.raises(Parsed) as got:
                load_benchmark(name).main([])
            parser = got.value.args[0]
            options[name] = set(parser._option_string_actions)
        for word in args:
            if word.startswith("--"):
                assert word.split("=")[0] in options[name], f"{page}: `{script} {' '.join(args)}`: no option {word}"
