"""Atomic training checkpoints: safetensors for tensors, JSON for everything else. Never pickle.

A run folder holds ``checkpoint/`` — the latest complete checkpoint — and ``checkpoint.prev/``, the
one before it::

    checkpoint/model.safetensors   model weights  } exactly what metaat.models.save_model writes,
    checkpoint/model.json          model spec     } so load_model(run_dir / "checkpoint") works
    checkpoint/state.safetensors   optimizer state tensors, defense modules and their optimizers,
                                   RNG states (torch CPU/CUDA and the attack generators, uint8)
    checkpoint/state.json          config, epoch/step, optimizer hyper-state, numpy/python RNG,
                                   cost meter, defense state, sha256 of both safetensors files
                                   and of its own content

A new checkpoint is written to a temporary folder, every file fsync'ed, then rotated in with
``os.replace`` (``checkpoint`` → ``checkpoint.prev``, temporary → ``checkpoint``): at every instant
a complete checkpoint exists on disk. Reading verifies checksums; a corrupt or truncated file is a
:class:`~metaat.models.CheckpointError` naming it, and nothing on disk is touched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from metaat.models import CheckpointError, get_spec, save_model, unwrap
from metaat.runtime import file_sha256, json_digest

CHECKPOINT = "checkpoint"
PREVIOUS = "checkpoint.prev"
MODEL_WEIGHTS = "model.safetensors"
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
FORMAT = "metaat.train-checkpoint"
FORMAT_VERSION = 1
STATE_DIGEST = "state_sha256"  # over state.json's own content: a hand edit or a flipped byte is refused


@dataclasses.dataclass
class LoadedCheckpoint:
    """What :func:`read_checkpoint` returns: JSON state, state tensors and model weights."""

    path: Path
    state: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    model_state: dict[str, torch.Tensor]


# -- files -----------------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def clean_stale_temporaries(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove what a killed run left half-written in ``run_dir``: temporary checkpoint folders
    (``.checkpoint.tmp-<pid>``) and temporary files of atomic writes (``.<name>.*.tmp``,
    ``metrics.jsonl.tmp``); return what was removed. Call it only while holding the run's lock.
    """
    root = Path(run_dir)
    if not root.is_dir():
        return []
    removed = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.is_symlink() and child.name.startswith(f".{CHECKPOINT}.tmp-"):
            shutil.rmtree(child)
            removed.append(child)
        elif child.is_file() and (
            (child.name.startswith(".") and child.name.endswith(".tmp")) or child.name == "metrics.jsonl.tmp"
        ):
            child.unlink()
            removed.append(child)
    return removed


def has_checkpoint(run_dir: str | os.PathLike[str]) -> bool:
    """Whether ``run_dir`` holds a checkpoint (latest or previous)."""
    root = Path(run_dir)
    return (root / CHECKPOINT / STATE_JSON).exists() or (root / PREVIOUS / STATE_JSON).exists()


def write_checkpoint(
    run_dir: str | os.PathLike[str],
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> Path:
    """Write a complete checkpoint to ``run_dir/checkpoint`` atomically; return its path."""
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{CHECKPOINT}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        weights = tmp / MODEL_WEIGHTS
        try:
            get_spec(model)
            save_model(model, tmp)
        except ValueError:  # a model not built by metaat.models.create: weights only
            save_file(_cpu(unwrap(model).state_dict()), str(weights))
        save_file(_cpu(tensors), str(tmp / STATE_TENSORS))
        files = {MODEL_WEIGHTS: file_sha256(weights), STATE_TENSORS: file_sha256(tmp / STATE_TENSORS)}
        payload = {"format": FORMAT, "version": FORMAT_VERSION, **state, "files": files}
        payload[STATE_DIGEST] = state_digest(payload)
        (tmp / STATE_JSON).write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        for child in tmp.iterdir():
            _fsync(child)
        _fsync(tmp)
        final, previous = root / CHECKPOINT, root / PREVIOUS
        if final.exists():
            if previous.exists():
                shutil.rmtree(previous)
            os.replace(final, previous)
        os.replace(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def checkpoint_dir(path: str | os.PathLike[str]) -> Path:
    """The checkpoint folder for ``path``: a run folder or a checkpoint folder itself.

    A run folder whose ``checkpoint/`` is missing while ``checkpoint.prev/`` exists (a crash between
    the two renames of a rotation) resolves to ``checkpoint.prev/``, the last complete one.
    """
    p = Path(path)
    if (p / STATE_JSON).exists():
        return p
    if (p / CHECKPOINT).exists():
        return p / CHECKPOINT
    if (p / PREVIOUS / STATE_JSON).exists():
        return p / PREVIOUS
    raise FileNotFoundError(f"no checkpoint in {p} (expected {p / CHECKPOINT / STATE_JSON})")


def read_checkpoint(path: str | os.PathLike[str]) -> LoadedCheckpoint:
    """Read and verify the checkpoint at ``path`` (a run folder or a checkpoint folder)."""
    folder = checkpoint_dir(path)
    hint = _previous_hint(folder)
    state_file = folder / STATE_JSON
    if not state_file.is_file():
        raise FileNotFoundError(f"no checkpoint state at {state_file}{hint}")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{state_file}: not a readable checkpoint state (corrupt or truncated?): {err}{hint}"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{state_file}: not a metaat training checkpoint{hint}")
    if state.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{state_file}: checkpoint format version {state.get('version')} is not supported")
    # Checkpoints written before the digest existed have none; every checkpoint written now has one.
    if STATE_DIGEST in state and state[STATE_DIGEST] != state_digest(state):
        raise CheckpointError(
            f"{state_file}: its content does not match its {STATE_DIGEST} (edited by hand or corrupt){hint}"
        )
    problem = state_problem(state)
    if problem:
        raise CheckpointError(f"{state_file}: not a usable checkpoint state ({problem}){hint}")
    loaded: dict[str, dict[str, torch.Tensor]] = {}
    for name in (MODEL_WEIGHTS, STATE_TENSORS):
        file = folder / name
        if not file.is_file():
            raise FileNotFoundError(f"checkpoint file {file} is missing{hint}")
        expected = state.get("files", {}).get(name)
        if expected is not None and file_sha256(file) != expected:
            raise CheckpointError(f"{file}: checksum mismatch (the file is corrupt or truncated){hint}")
        try:
            loaded[name] = load_file(str(file), device="cpu")
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(
                f"{file}: not a readable safetensors file (corrupt or truncated?): {err}{hint}"
            ) from err
    return LoadedCheckpoint(folder, state, loaded[STATE_TENSORS], loaded[MODEL_WEIGHTS])


def state_digest(payload: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's JSON state without its own digest."""
    return json_digest(payload, STATE_DIGEST)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def state_problem(state: dict[str, Any]) -> str | None:
    """What makes a checkpoint's JSON state unusable for resuming; None when its fields are sound."""
    for key in ("epoch", "step_in_epoch", "global_step", "steps_per_epoch", "world_size", "metrics_lines"):
        if not _count(state.get(key)):
            return f"{key} must be a non-negative integer; got {state.get(key)!r}"
    if state["steps_per_epoch"] < 1 or state["world_size"] < 1:
        return "steps_per_epoch and world_size must be >= 1"
    if state["step_in_epoch"] > state["steps_per_epoch"]:
        return f"step_in_epoch {state['step_in_epoch']} exceeds steps_per_epoch {state['steps_per_epoch']}"
    for key in ("config", "optimizer", "defense", "cost", "accumulators", "guard", "last_metrics", "files"):
        if not isinstance(state.get(key), dict):
            return f"{key} must be an object; got {type(state.get(key)).__name__}"
    if not isinstance(state.get("rng"), list):
        return f"rng must be a list; got {type(state.get('rng')).__name__}"
    epochs = state["config"].get("epochs")
    if _count(epochs) and state["epoch"] > epochs:
        return f"epoch {state['epoch']} is past the run's {epochs} epochs"
    return None


def _previous_hint(folder: Path) -> str:
    previous = folder.parent / PREVIOUS
    if folder.name == CHECKPOINT and (previous / STATE_JSON).exists():
        return f" — the previous checkpoint {previous} is kept; move it to {folder} to resume from it"
    return ""


# -- optimizers --------------------------------------------------------------------------------------


def optimizer_state(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``opt.state_dict()`` into tensors (``prefix.<param>.<key>``) and JSON hyper-state."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{pid}.{key}"] = value.detach().clone()
            else:
                other.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "state": other, "params": sorted(map(int, sd["state"]))}


def load_optimizer_state(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str
) -> None:
    """Inverse of :func:`optimizer_state`."""
    state: dict[int, dict[str, Any]] = {int(pid): dict(values) for pid, values in meta["state"].items()}
    for pid in meta["params"]:
        state.setdefault(int(pid), {})
    marker = f"{prefix}."
    for name, value in tensors.items():
        if name.startswith(marker):
            pid, key = name[len(marker) :].split(".", 1)
            state.setdefault(int(pid), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def module_tensors(modules: dict[str, nn.Module], prefix: str) -> dict[str, torch.Tensor]:
    """State dicts of named modules, flattened to ``prefix.<module>.<key>``."""
    return {f"{prefix}.{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}


def load_module_tensors(modules: dict[str, nn.Module], tensors: dict[str, torch.Tensor], prefix: str) -> None:
    for name, m in modules.items():
        marker = f"{prefix}.{name}."
        sd = {k[len(marker) :]: v for k, v in tensors.items() if k.startswith(marker)}
        try:
            m.load_state_dict(sd, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"checkpoint does not match defense module {name!r}: {err}") from err


# -- random number generators ------------------------------------------------------------------------


def rng_state(
    generators: dict[str, torch.Generator], *, cuda: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Torch (CPU, and CUDA when ``cuda``) and named generator states as uint8 tensors; numpy and
    python as JSON.

    ``cuda`` is the caller's choice (training on CUDA), never whether CUDA happens to be initialised:
    under DDP every rank must hold the same keys, and on a GPU machine a CPU run's rank 0 initialises
    CUDA (reading the GPU's name for the run's environment) while the other ranks do not.
    """
    tensors = {"rng.torch": torch.get_rng_state()}
    if cuda:
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    for name, gen in generators.items():
        tensors[f"rng.gen.{name}"] = gen.get_state()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    version, internal, gauss_next = random.getstate()
    meta = {
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss_next],
    }
    return tensors, meta


def load_rng_state(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], generators: dict[str, torch.Generator]
) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    for name, gen in generators.items():
        key = f"rng.gen.{name}"
        if key not in tensors:
            raise CheckpointError(f"checkpoint has no state for generator {name!r}")
        gen.set_state(tensors[key])
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))
