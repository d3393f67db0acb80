"""Finding the generator inside a training run's checkpoint (``runs/<name>/checkpoint/``).

The training loop stores a defense's modules in ``state.safetensors`` under some key prefix and
the defense's JSON state in ``state.json``. The ``l2l`` / ``metaat`` / ``mng`` defenses put their
generator's record (``{"kind", "spec"}``) in that JSON state; the weights are then the tensors
whose names end with the generator's own state-dict keys under one common prefix. Reading only
these two files (safetensors + JSON), nothing here depends on the loop's internal layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from metaat.meta.generators import build_generator

STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"


def _checkpoint_folder(path: Path) -> Path:
    for candidate in (path, path / "checkpoint", path / "checkpoint.prev"):
        if (candidate / STATE_JSON).is_file() and (candidate / STATE_TENSORS).is_file():
            return candidate
    raise FileNotFoundError(
        f"no generator at {path}: expected generator.json (metaat.meta.save_generator) or a run folder "
        f"with checkpoint/{STATE_JSON}"
    )


def _records(node: Any) -> list[dict[str, Any]]:
    """Every ``{"kind": str, "spec": dict}`` found in a JSON tree."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if isinstance(node.get("kind"), str) and isinstance(node.get("spec"), dict):
            found.append(node)
        for value in node.values():
            found.extend(_records(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_records(value))
    return found


def _match_prefix(gen: nn.Module, tensors: dict[str, torch.Tensor]) -> str | None:
    """The prefix ``P`` such that ``P + key`` holds every one of ``gen``'s tensors, shapes matching."""
    expected = gen.state_dict()
    anchor = next(iter(expected))
    for name in tensors:
        if not name.endswith(anchor):
            continue
        prefix = name[: len(name) - len(anchor)]
        if all(prefix + k in tensors and tensors[prefix + k].shape == v.shape for k, v in expected.items()):
            return prefix
    return None


def load_from_run(path: Path) -> nn.Module:
    """The generator (learned attacker preferred) saved in the run or checkpoint folder ``path``."""
    folder = _checkpoint_folder(path)
    try:
        state = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{folder / STATE_JSON}: not a readable checkpoint state ({err})") from err
    records = sorted(_records(state), key=lambda r: r["kind"] != "attacker")
    if not records:
        raise ValueError(f"{folder}: this run's defense has no generator (train with l2l, metaat or mng)")
    try:
        tensors = load_file(str(folder / STATE_TENSORS), device="cpu")
    except Exception as err:  # safetensors raises its own types for corrupt files
        raise ValueError(f"{folder / STATE_TENSORS}: not a readable safetensors file: {err}") from err
    for record in records:
        gen = build_generator(record["kind"], dict(record["spec"]))
        prefix = _match_prefix(gen, tensors)
        if prefix is not None:
            gen.load_state_dict({k: tensors[prefix + k] for k in gen.state_dict()}, strict=True)
            return gen.eval()
    raise ValueError(f"{folder}: the checkpoint names a generator but holds no matching weights")
