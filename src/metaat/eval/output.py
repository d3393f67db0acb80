"""Writing an evaluation report or a leaderboard to its files (JSON, Markdown, HTML), atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from metaat.eval.compare import render_leaderboard_markdown
from metaat.eval.html import render_html, render_leaderboard_html
from metaat.eval.report import render_markdown
from metaat.runtime import atomic_write_text


def write_reports(report: dict[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.html`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    atomic_write_text(paths["json"], json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(paths["md"], render_markdown(report))
    atomic_write_text(paths["html"], render_html(report))
    return paths


def write_leaderboard(board: dict[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``leaderboard.md`` and ``leaderboard.html`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    paths = {"md": out / "leaderboard.md", "html": out / "leaderboard.html"}
    atomic_write_text(paths["md"], render_leaderboard_markdown(board))
    atomic_write_text(paths["html"], render_leaderboard_html(board))
    return paths


__all__ = ["write_leaderboard", "write_reports"]
