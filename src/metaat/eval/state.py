"""Resumable evaluation state: a JSON file (never pickle), rewritten atomically after every chunk.

The file records a fingerprint of the evaluation (model weights, data, threats, suite, seed, chunk
size, ...), the clean flags, and per threat the robust flags of every finished chunk of points;
finished sections (unseen attacks, checks, examples) are stored as their JSON results. An
interrupted evaluation given the same file continues where it stopped; a file from a different
evaluation is refused with the list of what differs.

The file's ``sha256`` detects corruption, not tampering (whoever edits the file can recompute it).
With ``METAAT_HMAC_KEY`` set, the file is also signed (``hmac_sha256``, HMAC-SHA256 of its digest
under that key) and a file without a matching signature is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metaat.runtime import HMAC_FIELD, atomic_write_text, hmac_key, json_digest, sign_digest, signature_problem

FORMAT = "metaat.eval-state"
VERSION = 1
DIGEST = "sha256"  # over the file's own content: a flipped byte or a careless edit is refused
# The sha256 detects corruption, not tampering: anyone who edits the file can recompute it. With
# METAAT_HMAC_KEY set, every save also writes HMAC_FIELD, a keyed digest only the key's holder can
# recompute, and every load requires it.


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 of the tensors' values (dtype, shape and bytes), on CPU."""
    digest = hashlib.sha256()
    for t in tensors:
        c = t.detach().to("cpu").contiguous()
        digest.update(f"{c.dtype}{tuple(c.shape)}".encode())
        digest.update(c.numpy().tobytes() if c.dtype != torch.bfloat16 else c.float().numpy().tobytes())
    return digest.hexdigest()


def model_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names and values)."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor_digest(value).encode())
    return digest.hexdigest()


def flags_to_text(flags: torch.Tensor) -> str:
    """Bool tensor → compact '0'/'1' string (JSON-friendly, 1 byte a point)."""
    return "".join("1" if v else "0" for v in flags.tolist())


def flags_from_text(text: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in text], dtype=torch.bool)


def content_digest(data: dict[str, Any]) -> str:
    """SHA-256 of a state file's content without its own digests (plain and keyed)."""
    return json_digest({k: v for k, v in data.items() if k != HMAC_FIELD}, DIGEST)


def _is_flags(value: Any) -> bool:
    return isinstance(value, str) and set(value) <= {"0", "1"}


def state_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with a state file's fields; None when they are sound."""
    if not isinstance(data.get("fingerprint", {}), dict):
        return "fingerprint must be an object"
    if data.get("clean") is not None and not _is_flags(data["clean"]):
        return "clean must be a string of 0/1 flags"
    threats, sections = data.get("threats", {}), data.get("sections", {})
    if not isinstance(threats, dict) or not isinstance(sections, dict):
        return "threats and sections must be objects"
    for name, entry in threats.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("chunks", {}), dict):
            return f"threat {name} must hold an object of chunks"
        if not all(_is_flags(v) for v in entry.get("chunks", {}).values()):
            return f"threat {name}: every chunk must be a string of 0/1 flags"
        if not isinstance(entry.get("seconds", 0.0), (int, float)):
            return f"threat {name}: seconds must be a number"
    return None


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A state file's content, after checking its format, its digest and its fields (ValueError,
    naming the file and what is wrong, otherwise)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{p}: not a readable evaluation state file ({err})") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{p}: not a metaat evaluation state file (format {found!r})")
    # Files written before the digest existed have none (their fields are still checked).
    if DIGEST in data and data[DIGEST] != content_digest(data):
        raise ValueError(f"{p}: its content does not match its {DIGEST} (edited by hand or corrupt); delete it")
    signed = signature_problem(content_digest(data), data.get(HMAC_FIELD), hmac_key())
    if signed:
        raise ValueError(f"{p}: not trusted: {signed}; delete it")
    problem = state_problem(data)
    if problem:
        raise ValueError(f"{p}: a damaged evaluation state file ({problem}); delete it")
    return data


class StateMismatchError(ValueError):
    """The state file belongs to a different evaluation (the message lists what differs)."""


@dataclass
class EvalState:
    """In-memory view of the state file; ``path=None`` keeps everything in memory only."""

    fingerprint: dict[str, Any]
    path: Path | None = None
    clean: str | None = None
    threats: dict[str, dict[str, Any]] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None, fingerprint: dict[str, Any]) -> EvalState:
        """Load ``path`` when it exists (refusing a different evaluation's file), else start fresh."""
        if path is None:
            return cls(fingerprint)
        p = Path(path).expanduser()
        if not p.exists():
            state = cls(fingerprint, p)
            state.save()
            return state
        data = read_state(p)
        old = data.get("fingerprint", {})
        differs = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        if differs:
            raise StateMismatchError(
                f"{p} belongs to a different evaluation (differs in: {', '.join(differs)}); "
                "delete it or choose another state file"
            )
        return cls(fingerprint, p, data.get("clean"), data.get("threats", {}), data.get("sections", {}))

    def save(self) -> None:
        if self.path is None:
            return
        data = {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": self.fingerprint,
            "clean": self.clean,
            "threats": self.threats,
            "sections": self.sections,
        }
        digest = content_digest(data)
        data[DIGEST] = digest
        key = hmac_key()
        if key is not None:
            data[HMAC_FIELD] = sign_digest(digest, key)
        atomic_write_text(self.path, json.dumps(data, sort_keys=True))

    # --- per-threat chunks -------------------------------------------------------------------
    def threat_entry(self, threat: str, pending: torch.Tensor) -> dict[str, Any]:
        """The record for ``threat``; its pending points must match a resumed record's."""
        key = tensor_digest(pending)
        entry = self.threats.get(threat)
        if entry is None or entry.get("pending") != key:
            entry = {"pending": key, "chunks": {}, "seconds": 0.0}
            self.threats[threat] = entry
        return entry

    def chunk(self, threat: str, index: int) -> torch.Tensor | None:
        text = self.threats.get(threat, {}).get("chunks", {}).get(str(index))
        return None if text is None else flags_from_text(text)

    def record_chunk(self, threat: str, index: int, flags: torch.Tensor, seconds: float) -> None:
        entry = self.threats[threat]
        entry["chunks"][str(index)] = flags_to_text(flags)
        entry["seconds"] = float(entry.get("seconds", 0.0)) + seconds
        self.save()

    def record_section(self, name: str, value: Any) -> None:
        self.sections[name] = value
        self.save()


def jsonable(value: Any) -> Any:
    """Round-trip through JSON types (tuples → lists) so a fingerprint compares equal after loading."""
    return json.loads(json.dumps(value))
