"""Seeding, devices, threads, determinism, atomic file writes, digests and environment capture.

One ``seed_everything`` call at each entry point; everything random below it takes an explicit
``torch.Generator`` so that the same seed gives the same numbers. Every file metaat writes (models,
checkpoints, evaluation states, reports) goes through :func:`atomic_write`: a reader never sees a
half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def check_out_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a folder metaat may write into (absent, or a directory); ``ValueError`` otherwise.

    Checked before any work, so a long run never ends on "File exists" at its first save.
    """
    out = Path(path)
    for part in (out, *out.parents):
        if part.exists() or part.is_symlink():
            if not part.is_dir():
                where = "it is a file" if part == out else f"{part} is a file"
                raise ValueError(f"cannot write to the folder {out}: {where}")
            break
    return out


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a fresh CPU generator seeded with ``seed``."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return make_generator(seed)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def derive_seed(*parts: object, scheme: str = "blake2b") -> int:
    """A 63-bit seed for the random stream named by ``parts``, e.g. ``(seed, threat, "pgd", point)``.

    Streams named apart never share random numbers, and a stream does not depend on what else was
    drawn before it (a point's attack is the same in any chunk, a resumed run redraws nothing).
    ``scheme="blake2b"``: BLAKE2b-64 of the parts joined by ``|``, shifted to 63 bits — evaluation
    and everything else. ``scheme="sha256"``: the first 8 bytes (little-endian) of SHA-256 of the
    parts joined by ``/``, masked to 63 bits — the training loop's streams (data order, attack
    generator, per-epoch evaluation). Both stay as they are: saved checkpoints and evaluation
    states resume on them.

    >>> derive_seed(0, "linf:0.1", "pgd", 7) == derive_seed(0, "linf:0.1", "pgd", 7)
    True
    >>> derive_seed("data", 0, 1, scheme="sha256") < 2**63
    True
    """
    if scheme == "blake2b":
        text = "|".join(map(str, parts))
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1
    if scheme == "sha256":
        digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
        return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
    raise ValueError(f"unknown seed scheme {scheme!r}; valid schemes: blake2b, sha256")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available, then CPU; anything else is parsed by torch."""
    if isinstance(device, torch.device):
        return device
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here")
    return dev


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count (None leaves it); return the count in force."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def set_deterministic(flag: bool = True) -> None:
    """Ask torch for deterministic kernels (bit-exact resume on CPU relies on this)."""
    torch.use_deterministic_algorithms(flag, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = not flag
        torch.backends.cudnn.deterministic = flag


def hardware_summary() -> str:
    """A short human-readable description of where this runs, for reports."""
    cpu = platform.processor() or platform.machine()
    text = f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` says. Kernels differ by CPU
    (AVX2 against AVX-512 paths), so float results, and a retrained model, can differ with it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Versions and hardware recorded with every run and report."""
    from metaat._version import __version__

    env: dict[str, Any] = {
        "metaat": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "hardware": hardware_summary(),
        "cpu": cpu_model(),
        "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)(),
        "threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
    try:
        import pyautoattack

        env["pyautoattack"] = getattr(pyautoattack, "__version__", "unknown")
    except ImportError:  # pragma: no cover - it is a core dependency
        env["pyautoattack"] = None
    return env


# -- files: atomic writes and digests --------------------------------------------------------------


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_name)`` on a temporary file next to ``path``, then rename it onto ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; models, states and reports are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, creating its folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(path, write)


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def json_digest(data: dict[str, Any], without: str) -> str:
    """SHA-256 of a JSON document's content, leaving out its own digest entry ``without``.

    Taken through JSON and back first (int keys become strings, tuples lists), so the digest is the
    same before a save and after the load, whatever the in-memory types were; keys are sorted.

    >>> json_digest({"a": (1, 2), "sha256": "x"}, "sha256") == json_digest({"a": [1, 2]}, "sha256")
    True
    """
    plain = json.loads(json.dumps({k: v for k, v in data.items() if k != without}))
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode("utf-8")).hexdigest()


def is_sha256(value: Any) -> bool:
    """True for a SHA-256 hex digest (64 lowercase hex characters), as every save writes."""
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
