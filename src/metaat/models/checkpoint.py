"""Model checkpoints: weights in safetensors, architecture spec in a JSON sidecar. No pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from metaat.models.modules import unwrap
from metaat.registry import UnknownNameError
from metaat.runtime import atomic_write, file_sha256, is_sha256

WEIGHTS_NAME = "model.safetensors"
SPEC_NAME = "model.json"
FORMAT = "metaat.model"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be used (corrupt, truncated, or not matching its architecture)."""


def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(weights, sidecar)`` for ``path``: a folder (``model.safetensors`` + ``model.json``), or a
    ``.safetensors`` file (or its ``.json``) with the other next to it under the same stem."""
    p = Path(path).expanduser()
    if p.suffix == ".safetensors":
        return p, p.with_suffix(".json")
    if p.suffix == ".json":
        return p.with_suffix(".safetensors"), p
    if p.is_file():
        raise FileNotFoundError(
            f"{p} is a file, not a model: give a model folder ({WEIGHTS_NAME} + {SPEC_NAME}), a run folder "
            f"or the {WEIGHTS_NAME} file"
        )
    return p / WEIGHTS_NAME, p / SPEC_NAME


def get_spec(model: nn.Module) -> dict[str, Any]:
    """The constructor spec :func:`metaat.models.create` attached to ``model``."""
    spec = getattr(unwrap(model), "metaat_spec", None)
    if not isinstance(spec, dict):
        raise ValueError("model has no metaat_spec; build it with metaat.models.create() to save it")
    return spec


def save_model(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Save ``model``'s state dict to safetensors and its spec to a JSON sidecar, atomically.

    ``path`` is a folder (created if needed; holds ``model.safetensors`` and ``model.json``) or a
    ``.safetensors`` file (the sidecar gets the same stem with ``.json``). Returns the weights path.
    """
    inner = unwrap(model)
    spec = get_spec(inner)
    try:
        spec_json = json.dumps(spec, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model spec is not JSON-serialisable: {exc}") from exc
    weights, sidecar = checkpoint_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in inner.state_dict().items()}
    # One metadata entry: safetensors writes its metadata map in a per-process random order, so two
    # entries would give identical weights different bytes (and checksums) from run to run.
    atomic_write(weights, lambda tmp: save_file(state, tmp, metadata={"metaat_spec": spec_json}))
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "spec": spec,
        "weights": weights.name,
        "sha256": file_sha256(weights),
        "num_parameters": sum(p.numel() for p in inner.parameters()),
    }

    def write_json(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    atomic_write(sidecar, write_json)
    return weights


def _describe(spec: dict[str, Any]) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in sorted((spec.get("kwargs") or {}).items()))
    details = (
        f"num_classes={spec.get('num_classes')}, in_channels={spec.get('in_channels')}, "
        f"image_size={spec.get('image_size')}, normalize={'yes' if spec.get('normalize') else 'no'}"
    )
    return f"{spec.get('name')!r} ({details}{', ' + extra if extra else ''})"


def _keys(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def check_state_dict(state: dict[str, torch.Tensor], model: nn.Module, spec: dict[str, Any], source: str) -> None:
    """Raise :class:`CheckpointError` naming the differing keys when ``state`` does not fit ``model``."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k} (checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)})"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_keys(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_keys(shapes, 4)}")
    if problems:
        raise CheckpointError(f"{source} does not match architecture {_describe(spec)}: " + "; ".join(problems))


def recorded_sha256(path: str | os.PathLike[str]) -> str | None:
    """The weights' SHA-256 that the JSON sidecar of the model at ``path`` (see :func:`checkpoint_paths`)
    records, without reading the weights; None when the sidecar is missing or unreadable."""
    try:
        meta = json.loads(checkpoint_paths(path)[1].read_text(encoding="utf-8"))
        return str(meta["sha256"]) if is_sha256(meta.get("sha256")) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved by :func:`save_model` at ``path`` and load its weights.

    Returns the model on ``device`` in eval mode (a ``.keras`` file loads as a Keras model). Raises
    ``FileNotFoundError`` when a file is missing and :class:`CheckpointError` for an unreadable sidecar,
    a corrupt or truncated safetensors file, or weights that do not match the architecture (naming the
    differing keys).
    """
    from metaat.models import create_from_spec  # the package imports this module

    if Path(path).suffix == ".keras":  # a Keras 3 model file, weights included
        from metaat.models.keras_model import load_keras

        return load_keras(path).to(device).eval()
    weights, sidecar = checkpoint_paths(path)
    for file, what in ((weights, "model weights"), (sidecar, "model spec")):
        if not file.is_file():
            hint = f" (a checkpoint folder holds {WEIGHTS_NAME} and {SPEC_NAME})" if file.parent.is_dir() else ""
            raise FileNotFoundError(f"no {what} at {file}{hint}")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{sidecar}: not a readable metaat model spec ({exc})") from exc
    spec = meta.get("spec") if isinstance(meta, dict) else None
    if not isinstance(spec, dict) or "name" not in spec:
        raise CheckpointError(f"{sidecar}: no model spec (expected a JSON object with a 'spec' entry)")
    try:
        model = create_from_spec(spec)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        hint = ""
        if isinstance(exc, UnknownNameError):  # a model a plugin registered (metaat.plugins)
            hint = " (a model from a plugin: name its module in METAAT_PLUGINS, or import it first)"
        raise CheckpointError(f"{sidecar}: cannot rebuild the model from its spec: {exc}{hint}") from exc
    digest = meta.get("sha256")
    if not is_sha256(digest):
        raise CheckpointError(
            f"{sidecar}: no valid sha256 of the weights (got {digest!r}); without it a corrupt weights file "
            "would load silently. Re-save the model with metaat.models.save_model"
        )
    if file_sha256(weights) != digest:
        raise CheckpointError(
            f"{weights}: checksum mismatch with {sidecar.name} (the weights file is corrupt, truncated "
            f"or from another save)"
        )
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{weights}: not a readable safetensors file (corrupt or truncated?): {exc}") from exc
    check_state_dict(state, model, spec, str(weights))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
