"""MkDocs hooks for the API reference.

``<!-- catalog: metaat.attacks -->`` on a page becomes one mkdocstrings entry per module of that
package (its docstring: paper, threat model, options, example), found at build time, so a new attack
or defense file appears in the reference without editing the docs; and the Sphinx roles the
docstrings use (``:func:`x```) render as plain code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[2] / "src"
MARK = re.compile(r"^<!-- catalog: ([\w.]+) -->$", flags=re.M)
SKIP = {"base"}  # the package's own contract, documented with the package


def modules(package: str) -> list[str]:
    """The package's public, non-contract modules, by file name."""
    folder = SRC.joinpath(*package.split("."))
    names = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_") and p.stem not in SKIP)
    return [f"{package}.{name}" for name in names]


def entries(package: str) -> str:
    block = "    options:\n      heading_level: 3\n      members: false\n      show_root_full_path: true\n"
    return "\n".join(f"::: {module}\n{block}" for module in modules(package))


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return MARK.sub(lambda m: entries(m.group(1)), markdown)


ROLE = re.compile(r":(?:mod|func|class|meth|attr|data|obj|exc|py:\w+):(?=<code>)")


def on_page_content(html: str, **kwargs: Any) -> str:
    """Docstrings name objects with Sphinx roles (``:func:`x```); on this site they read as code."""
    return ROLE.sub("", html)
