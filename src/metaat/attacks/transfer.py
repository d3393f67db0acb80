"""Saved adversarial examples and transfer attacks.

Adversarial examples crafted on one model (the *source*) often fool another (Papernot, McDaniel,
Goodfellow 2016, "Transferability in Machine Learning: from Phenomena to Black-Box Attacks using
Adversarial Samples", arXiv:1605.07277). Scoring a model on examples transferred from a surrogate is
one of the checks Athalye, Carlini & Wagner (2018, "Obfuscated Gradients Give a False Sense of
Security", ICML) and Carlini et al. (2019, "On Evaluating Adversarial Robustness") ask for: if
transferred examples break more points than white-box attacks on the model itself, its gradients
mislead the attacks.

A saved set is one ``.safetensors`` file, no pickle:

* tensors ``x_adv`` (float32, N×C×H×W, pixels in [0, 1]), ``y`` (int64 labels), ``index`` (int64,
  the points' indices in the dataset split), ``source_clean`` / ``source_robust`` (uint8 0/1: the
  source model's outcome per point);
* one metadata entry ``metaat_adversarial``, a JSON object: ``format``, ``version``, ``data``,
  ``split``, ``threat``, ``within_threat`` (every ``x_adv`` lies in the threat's ball around its clean
  point — false for spatial, patch and corruption attacks), ``attack``, ``source_model``, ``seed``,
  ``metaat_version`` and ``sha256``, a digest of the tensors' names, dtypes, shapes and bytes and of
  the rest of the metadata, so a flipped bit is caught, in the images or in the header, as well as a
  truncation. The sha256 detects corruption, not tampering: whoever edits the file can recompute it.
  With ``METAAT_HMAC_KEY`` set, ``hmac_sha256`` (HMAC-SHA256 of that digest under the key) signs the
  file, and a file without a matching one is refused.

Clean images are not stored: :func:`check_against` re-reads them from the dataset and checks the
labels and, when the file claims it, every perturbation's norm, so a file cannot smuggle in
examples outside the threat model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from metaat.attacks.base import chunks, predictions
from metaat.data.validate import validate_batch
from metaat.models import model_device
from metaat.runtime import HMAC_FIELD, atomic_write, hmac_key, is_sha256, sign_digest, signature_problem
from metaat.threats import ThreatModel, in_threat, lp_norm

FORMAT = "metaat.adversarial"
FORMAT_VERSION = 2  # 2: the digest covers the metadata too
META_KEY = "metaat_adversarial"
TENSORS = {
    "x_adv": torch.float32,
    "y": torch.int64,
    "index": torch.int64,
    "source_clean": torch.uint8,
    "source_robust": torch.uint8,
}
REQUIRED_META = ("data", "split", "threat", "within_threat", "attack")
TOLERANCE = 1e-4  # of the ball check, relative and absolute: float32 L1 sums over many pixels round


class AdversarialFileError(ValueError):
    """A saved adversarial set exists but cannot be used (corrupt, truncated, inconsistent)."""


@dataclasses.dataclass(frozen=True)
class AdversarialSet:
    """Adversarial examples with the indices of their clean points and how they came about."""

    x_adv: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    source_clean: torch.Tensor
    source_robust: torch.Tensor
    meta: Mapping[str, Any]

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel.parse(str(self.meta["threat"]))

    def __len__(self) -> int:
        return int(self.y.shape[0])


def tensors_digest(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> str:
    """SHA-256 over each tensor's name, dtype, shape and bytes, in name order, then over ``meta``'s
    canonical JSON (sorted keys) without its own ``sha256`` entry."""
    digest = hashlib.sha256()
    if meta is not None:
        digest.update(
            json.dumps({k: v for k, v in meta.items() if k not in ("sha256", HMAC_FIELD)}, sort_keys=True).encode()
        )
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _flags(t: torch.Tensor | None, n: int, name: str) -> torch.Tensor:
    if t is None:
        return torch.zeros(n, dtype=torch.uint8)
    if t.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},); got {tuple(t.shape)}")
    return t.detach().to("cpu").to(torch.uint8)


def _check_index(index: torch.Tensor, n: int, where: str) -> None:
    if n == 0:
        raise ValueError("the set holds no examples")
    if index.dtype != torch.int64 or index.shape != (n,):
        raise ValueError(f"{where}index must be int64 of shape ({n},); got {index.dtype} {tuple(index.shape)}")
    if n and int(index.min()) < 0:
        raise ValueError(f"{where}index holds a negative entry ({int(index.min())})")
    if int(torch.unique(index).numel()) != n:
        raise ValueError(f"{where}index repeats a point")


def _check_meta(meta: Mapping[str, Any]) -> None:
    """The required entries' types: strings, ``within_threat`` a bool, a parseable threat."""
    for key in ("data", "split", "threat", "attack"):
        if not isinstance(meta.get(key), str):
            raise ValueError(f"metadata {key!r} must be a string; got {meta.get(key)!r}")
    if not isinstance(meta.get("within_threat"), bool):
        raise ValueError(f"metadata 'within_threat' must be true or false; got {meta.get('within_threat')!r}")
    ThreatModel.parse(meta["threat"])


def save_adversarial(
    path: str | os.PathLike[str],
    x_adv: torch.Tensor,
    y: torch.Tensor,
    index: torch.Tensor,
    *,
    meta: Mapping[str, Any],
    source_clean: torch.Tensor | None = None,
    source_robust: torch.Tensor | None = None,
) -> Path:
    """Write an adversarial set to ``path`` (a ``.safetensors`` file), atomically; returns the path.

    ``meta`` must hold ``data``, ``split``, ``threat``, ``within_threat`` and ``attack``; any other
    JSON-serialisable entries are kept. ``format``, ``version`` and ``sha256`` are filled in here.
    """
    p = Path(path).expanduser()
    if p.suffix != ".safetensors":
        raise ValueError(f"an adversarial set is saved as a .safetensors file; got {p.name!r}")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"meta lacks {', '.join(missing)}")
    validate_batch(x_adv, y)
    n = int(y.shape[0])
    _check_index(index, n, "")
    tensors = {
        "x_adv": x_adv.detach().to("cpu", torch.float32).contiguous(),
        "y": y.detach().to("cpu").contiguous(),
        "index": index.detach().to("cpu").contiguous(),
        "source_clean": _flags(source_clean, n, "source_clean"),
        "source_robust": _flags(source_robust, n, "source_robust"),
    }
    header = {**dict(meta), "format": FORMAT, "version": FORMAT_VERSION}
    _check_meta(header)
    try:
        header["sha256"] = tensors_digest(tensors, header)
        key = hmac_key()
        if key is not None:
            header[HMAC_FIELD] = sign_digest(header["sha256"], key)
        text = json.dumps(header, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta is not JSON-serialisable: {exc}") from exc
    p.parent.mkdir(parents=True, exist_ok=True)
    # one metadata entry: safetensors orders several in a per-process random order (bytes would differ)
    atomic_write(p, lambda tmp: save_file(tensors, tmp, metadata={META_KEY: text}))
    return p


def load_adversarial(path: str | os.PathLike[str]) -> AdversarialSet:
    """Read a set written by :func:`save_adversarial`, checking everything a file can get wrong.

    Raises ``FileNotFoundError`` for a missing file and :class:`AdversarialFileError` (one line,
    naming the file) for anything else: not safetensors, truncated, another format or version,
    missing or mistyped tensors, a checksum mismatch, NaN/Inf or pixels outside [0, 1].
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"no adversarial set at {p}")

    def bad(why: str) -> AdversarialFileError:
        return AdversarialFileError(f"{p}: {why}")

    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise bad(f"not a readable safetensors file (corrupt or truncated?): {exc}") from exc
    try:
        meta = json.loads(header[META_KEY])
    except (KeyError, json.JSONDecodeError) as exc:
        raise bad(f"not a metaat adversarial set (no readable {META_KEY!r} metadata)") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise bad(f"not a metaat adversarial set (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise bad(f"format version {meta.get('version')!r}; this metaat reads version {FORMAT_VERSION}")
    missing = [k for k in (*REQUIRED_META, "sha256") if k not in meta]
    if missing:
        raise bad(f"metadata lacks {', '.join(missing)}")
    absent = [k for k in TENSORS if k not in tensors]
    if absent:
        raise bad(f"missing tensor(s) {', '.join(absent)}")
    for name, dtype in TENSORS.items():
        if tensors[name].dtype != dtype:
            raise bad(f"tensor {name} has dtype {tensors[name].dtype}, expected {dtype}")
    try:
        digest = tensors_digest({k: tensors[k] for k in TENSORS}, meta)
    except (TypeError, ValueError) as exc:
        raise bad(f"unreadable metadata ({exc})") from exc
    if not is_sha256(meta["sha256"]) or digest != meta["sha256"]:
        raise bad("checksum mismatch (the file is corrupt or was edited)")
    signed = signature_problem(digest, meta.get(HMAC_FIELD), hmac_key())
    if signed:
        raise bad(f"not trusted: {signed}")
    try:
        _check_meta(meta)
        validate_batch(tensors["x_adv"], tensors["y"])
        n = int(tensors["y"].shape[0])
        _check_index(tensors["index"], n, "")
        for name in ("source_clean", "source_robust"):
            if tensors[name].shape != (n,) or (n and int(tensors[name].max()) > 1):
                raise ValueError(f"{name} must hold one 0/1 flag per point")
    except ValueError as exc:
        raise bad(str(exc)) from exc
    return AdversarialSet(
        x_adv=tensors["x_adv"],
        y=tensors["y"],
        index=tensors["index"],
        source_clean=tensors["source_clean"].bool(),
        source_robust=tensors["source_robust"].bool(),
        meta=meta,
    )


def clean_points(
    adv: AdversarialSet, data_dir: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean images and labels at ``adv.index`` in the dataset split the set names."""
    import metaat.data as datasets

    lo, hi = int(adv.index.min()), int(adv.index.max())
    x, y = datasets.load(str(adv.meta["data"]), str(adv.meta["split"]), data_dir=data_dir, n=hi - lo + 1, start=lo)
    return x[adv.index - lo], y[adv.index - lo]


def check_against(adv: AdversarialSet, x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``(x, y)``, the clean points at ``adv.index``, fit the set: same
    shapes, same labels, and — when the set says so — every example inside its threat's ball."""
    if x.shape != adv.x_adv.shape:
        raise ValueError(f"the clean points have shape {tuple(x.shape)}, the saved examples {tuple(adv.x_adv.shape)}")
    differ = int((y.cpu() != adv.y).sum())
    if differ:
        raise ValueError(f"{differ} of the {len(adv)} saved labels differ from the dataset's at their indices")
    if adv.meta.get("within_threat"):
        inside = in_threat(adv.x_adv, x.cpu(), adv.threat, tol=TOLERANCE)
        if not bool(inside.all()):
            worst = float(lp_norm(adv.x_adv - x.cpu(), adv.threat.norm).max())
            raise ValueError(
                f"{int((~inside).sum())} saved example(s) lie outside {adv.threat} around their clean points "
                f"(largest {adv.threat.norm} norm {worst:.4g}), though the file says they lie inside"
            )


@torch.no_grad()
def transfer_flags(
    model: nn.Module, adv: AdversarialSet, x: torch.Tensor, chunk: int = 256, *, clean: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(clean, robust)`` per point for ``model``: right on the clean point; right on both.
    ``clean``: those flags when the caller already has them (several sets on the same points), so
    that only the adversarial examples go through the model."""
    known = clean is not None
    if clean is None:
        clean = torch.zeros(len(adv), dtype=torch.bool)
    elif clean.shape != (len(adv),):
        raise ValueError(f"clean must hold one flag per point ({len(adv)}); got shape {tuple(clean.shape)}")
    else:
        clean = clean.cpu().bool()
    device = model_device(model)
    was_training = model.training
    model.eval()
    robust = torch.zeros(len(adv), dtype=torch.bool)
    try:
        for sl in chunks(len(adv), chunk):
            yb = adv.y[sl].to(device)
            if not known:
                clean[sl] = (predictions(model(x[sl].to(device))) == yb).cpu()
            robust[sl] = (predictions(model(adv.x_adv[sl].to(device))) == yb).cpu() & clean[sl]
    finally:
        model.train(was_training)
    return clean, robust


__all__ = [
    "TOLERANCE",
    "AdversarialFileError",
    "AdversarialSet",
    "check_against",
    "clean_points",
    "load_adversarial",
    "save_adversarial",
    "tensors_digest",
    "transfer_flags",
]
