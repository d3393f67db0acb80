"""The import layering (``[tool.importlinter]`` in pyproject.toml, run by ``make lint``): kept by the
source tree, and broken — caught — when a library module imports one above it or the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(
    not LINT_IMPORTS.exists(), reason="import-linter is not installed (pip install -e '.[test]')"
)


def lint_layers(src: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports --contract layers`` on the ``metaat`` package found in ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--contract", "layers", str(ROOT / "pyproject.toml")],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_source_tree_keeps_the_layers() -> None:
    run = lint_layers(ROOT / "src")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "metaat layers (top to bottom) KEPT" in run.stdout


def test_a_library_module_importing_the_cli_or_a_higher_layer_breaks_them(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "src" / "metaat", tmp_path / "metaat", ignore=shutil.ignore_patterns("__pycache__"))
    with (tmp_path / "metaat" / "attacks" / "pgd.py").open("a", encoding="utf-8") as f:
        f.write("\nfrom metaat.eval.union import predict  # noqa: E402,F401\n")
    with (tmp_path / "metaat" / "train" / "monitor.py").open("a", encoding="utf-8") as f:
        f.write("\nimport metaat.cli  # noqa: E402,F401\n")
    run = lint_layers(tmp_path)
    assert run.returncode != 0
    assert "metaat layers (top to bottom) BROKEN" in run.stdout
    assert "metaat.attacks is not allowed to import metaat.eval" in run.stdout
    assert "metaat.train is not allowed to import metaat.cli" in run.stdout
