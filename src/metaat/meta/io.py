"""Saving and loading generators: weights in safetensors, kind + architecture spec in a JSON sidecar.

A saved generator is a folder holding ``generator.safetensors`` and ``generator.json``; the JSON
records ``kind`` (``attacker`` or ``noise``), the architecture ``spec``, the weights' SHA-256 and
free-form ``metadata`` (how it was trained). :func:`load_generator` also finds the attacker inside
a training run folder (``runs/<name>/``) or its ``checkpoint/``, where the defenses record the
spec in their JSON state. No pickle anywhere.

A channel-shared attacker (:mod:`metaat.meta.shared`, made by ``metaat meta-pretrain --tasks``) is
saved the same way (kind ``attacker-shared``); :func:`load_attacker` returns a plain
:class:`~metaat.meta.generators.LearnedAttacker` for given input channels and rank from either kind,
checking the artifact's domain, rank and channels, each mismatch a one-line ``ValueError``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from metaat.meta.generators import LearnedAttacker, build_generator
from metaat.meta.shared import SHARED_KIND, ChannelSharedAttacker, build_shared
from metaat.runtime import file_sha256, is_sha256

WEIGHTS_NAME = "generator.safetensors"
SPEC_NAME = "generator.json"
FORMAT = "metaat.generator"
FORMAT_VERSION = 1


def generator_record(gen: nn.Module) -> dict[str, Any]:
    """``{"kind": ..., "spec": {...}}`` — enough to rebuild ``gen``'s architecture."""
    kind = getattr(gen, "kind", None)
    spec = getattr(gen, "spec", None)
    if not isinstance(kind, str) or spec is None or not hasattr(spec, "to_dict"):
        raise ValueError(f"{type(gen).__name__} is not a metaat generator (no kind/spec)")
    return {"kind": kind, "spec": spec.to_dict()}


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_generator(gen: nn.Module, out_dir: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> Path:
    """Save ``gen`` into folder ``out_dir`` (created); return the folder."""
    folder = Path(out_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    record = generator_record(gen)
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in gen.state_dict().items()}
    weights = folder / WEIGHTS_NAME
    _atomic(weights, lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        **record,
        "weights": WEIGHTS_NAME,
        "sha256": file_sha256(weights),
        "num_parameters": sum(p.numel() for p in gen.parameters()),
        "metadata": metadata or {},
    }
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    _atomic(folder / SPEC_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return folder


def rebuild(record: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """A generator from its record and weights; a mismatch is a one-line ``ValueError``."""
    try:
        if record.get("kind") == SHARED_KIND:
            gen: nn.Module = build_shared(dict(record["spec"]))
        else:
            gen = build_generator(str(record["kind"]), dict(record["spec"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{source}: cannot rebuild the generator: {err}") from err
    expected = set(gen.state_dict())
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(
            f"{source}: weights do not match the {record['kind']} spec (missing {missing[:4]}, unexpected {extra[:4]})"
        )
    try:
        gen.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{source}: weights do not match the {record['kind']} spec: {str(err).splitlines()[0]}"
        ) from err
    return gen.eval()


def read_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``metadata`` of the generator saved at ``path`` (``{}`` for a run folder or no sidecar)."""
    p = Path(path).expanduser()
    sidecar = (p.parent if p.suffix in (".json", ".safetensors") else p) / SPEC_NAME
    if not sidecar.is_file():
        return {}
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{sidecar}: not a readable generator spec ({err})") from err
    found = meta.get("metadata") if isinstance(meta, dict) else None
    return found if isinstance(found, dict) else {}


def load_attacker(
    path: str | os.PathLike[str],
    in_channels: int,
    rank: int,
    *,
    domain: str | None = None,
    device: str | torch.device = "cpu",
) -> LearnedAttacker:
    """A :class:`LearnedAttacker` for ``(B, in_channels, ...)`` inputs of spatial ``rank`` (2 images,
    1 signals) from a saved attacker or a run; a channel-shared attacker is specialised to
    ``in_channels``. Refused with one line: another kind of generator, another rank, another channel
    count (a plain attacker) or, when ``domain`` is given and the card records one, another domain."""
    gen = load_generator(path)
    if isinstance(gen, ChannelSharedAttacker):
        card = read_card(path).get("cross_task", {})
        recorded = card.get("domain") if isinstance(card, dict) else None
        if domain is not None and recorded is not None and recorded != domain:
            raise ValueError(f"{path}: attacker pretrained on the {recorded} domain, not {domain}")
        if gen.spec.rank != rank:
            raise ValueError(f"{path}: attacker built for rank-{gen.spec.rank} inputs, data has rank {rank}")
        return gen.specialise(in_channels).to(device)
    if not isinstance(gen, LearnedAttacker):
        raise ValueError(f"{path} holds a {getattr(gen, 'kind', '?')} generator, not a learned attacker")
    if gen.spec.rank != rank:
        raise ValueError(f"{path}: attacker built for rank-{gen.spec.rank} inputs, data has rank {rank}")
    if gen.spec.in_channels != in_channels:
        raise ValueError(f"{path}: attacker built for {gen.spec.in_channels} channels, data has {in_channels}")
    return gen.to(device)


def load_generator(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """Load a generator saved by :func:`save_generator` (folder, its JSON or safetensors file) or
    the learned attacker of a training run (run folder or its ``checkpoint/``)."""
    p = Path(path).expanduser()
    if p.suffix in (".json", ".safetensors"):
        p = p.parent
    if not p.exists():
        raise FileNotFoundError(f"no generator at {p}")
    sidecar = p / SPEC_NAME
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{sidecar}: not a readable generator spec ({err})") from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise ValueError(f"{sidecar}: not a metaat generator spec (format {found!r})")
        weights = p / str(meta.get("weights", WEIGHTS_NAME))
        if not weights.is_file():
            raise FileNotFoundError(f"no generator weights at {weights}")
        if not is_sha256(meta.get("sha256")):
            raise ValueError(
                f"{sidecar}: no valid sha256 of the weights (got {meta.get('sha256')!r}); re-save the generator"
            )
        if file_sha256(weights) != meta["sha256"]:
            raise ValueError(f"{weights}: checksum mismatch with {SPEC_NAME} (corrupt or from another save)")
        try:
            state = load_file(str(weights), device="cpu")
        except Exception as err:  # safetensors raises its own types for corrupt files
            raise ValueError(f"{weights}: not a readable safetensors file: {err}") from err
        return rebuild(meta, state, str(weights)).to(device)
    from metaat.meta.runs import load_from_run

    return load_from_run(p).to(device)
