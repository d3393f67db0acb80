"""Named training recipes: ``configs/presets/<name>.yaml``, each a full :class:`TrainConfig` (every
field and every defense option spelled out) whose name says what it trains and never changes meaning;
``default`` is a link to the preset of metaat's default recipe.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from metaat.train.config import TrainConfig

ENV = "METAAT_PRESETS"


def presets_dir() -> Path:
    """``$METAAT_PRESETS``, else the source checkout's ``configs/presets``."""
    env = os.environ.get(ENV)
    return Path(env) if env else Path(__file__).resolve().parents[3] / "configs" / "presets"


def available() -> list[str]:
    """The presets' names (``default`` included: the link to metaat's default recipe)."""
    folder = presets_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def preset_path(name: str) -> Path:
    """The preset's file; ``ValueError`` listing the presets when ``name`` is none of them."""
    path = presets_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no preset {name!r} in {presets_dir()}; presets: {', '.join(available()) or 'none'}")
    return path


def describe(name: str) -> str:
    """The first sentence of the preset's leading comment (``default``: the preset it links to)."""
    path = preset_path(name)
    if path.is_symlink():
        return f"-> {path.resolve().stem}"
    lines = [ln[1:].strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith("#")]
    text = " ".join(lines)
    return text.split(". ")[0].rstrip(".") if text else ""


def load_preset(name: str, **overrides: Any) -> TrainConfig:
    """The ``TrainConfig`` of preset ``name``, with ``overrides`` applied."""
    return TrainConfig.from_yaml(preset_path(name), **overrides)


__all__ = ["available", "describe", "load_preset", "preset_path", "presets_dir"]
