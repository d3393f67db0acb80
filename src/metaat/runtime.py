"""Seeding, devices, threads, determinism, atomic file writes, digests and environment capture.

One ``seed_everything`` call at each entry point; everything random below it takes an explicit
``torch.Generator`` so that the same seed gives the same numbers. Every file metaat writes (models,
checkpoints, evaluation states, reports) goes through :func:`atomic_write`: a reader never sees a
half-written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import random
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


def check_out_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a folder metaat may write into (absent, or a writable directory, under a writable
    one); ``ValueError`` otherwise.

    Checked before any work, so a long run never ends on "File exists" at its first save.
    """
    out = Path(path)
    if not str(path).strip():
        raise ValueError("the output folder is empty; name a folder")
    for part in (out, *out.parents):
        if part.exists() or part.is_symlink():
            if not part.is_dir():
                where = "it is a file" if part == out else f"{part} is a file"
                raise ValueError(f"cannot write to the folder {out}: {where}")
            if not os.access(part, os.W_OK | os.X_OK):
                where = "it is not writable" if part == out else f"{part} is not writable"
                raise ValueError(f"cannot write to the folder {out}: {where}")
            break
    return out


LOCK_FILE = ".metaat.lock"


class FolderInUseError(ValueError):
    """Another process holds the folder's lock (one process at a time per run folder)."""


class FolderLock:
    """An exclusive OS lock (``fcntl.flock``) on ``folder/.metaat.lock``, held until :meth:`release`
    or the process ends (the kernel drops it then, so a killed run leaves no stale lock).

    The lock file holds the holder's pid, so the second process can say who has the folder.
    Taken without waiting: :class:`FolderInUseError` at once if another process holds it.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise FolderInUseError(
                f"{self.folder} is in use by another metaat process (pid {holder}, lock {self.path}); "
                "wait for it to finish or choose another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def owned_folder(path: str | os.PathLike[str], *, written: Callable[[Path], bool]) -> Iterator[Path]:
    """Hold ``path``'s :class:`FolderLock` for the block: the folder is checked
    (:func:`check_out_dir`), created, and locked at once (:class:`FolderInUseError` when another
    process holds it). If the block fails before ``written(folder)`` is true, the lock file goes, and
    the folder too when this call created it and it is empty: a refused or failed start leaves nothing.
    """
    out = check_out_dir(path)
    created = not out.exists()
    lock_existed = (out / LOCK_FILE).exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        lock = FolderLock(out).acquire()
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    try:
        yield out
    except BaseException:
        if not lock_existed and not written(out):
            lock.release()
            (out / LOCK_FILE).unlink(missing_ok=True)
            if created and not any(out.iterdir()):
                out.rmdir()
        raise
    finally:
        lock.release()


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


# -- keyed digests: tampering, not only accidents ------------------------------------------------------

HMAC_ENV = "METAAT_HMAC_KEY"
"""Environment variable holding the key that signs and verifies state files and saved sets."""
HMAC_FIELD = "hmac_sha256"
"""The entry holding a file's keyed digest (next to its plain ``sha256``)."""


def hmac_key() -> bytes | None:
    """The signing key from :data:`HMAC_ENV` (UTF-8 bytes), or None when it is unset or empty.

    A plain SHA-256 stored in a file detects corruption (a flipped bit, a truncation, a careless
    edit), not tampering: whoever edits the file can recompute it. A digest keyed with a secret
    (HMAC-SHA256, RFC 2104) can only be recomputed by someone holding the key.
    """
    key = os.environ.get(HMAC_ENV, "")
    return key.encode("utf-8") if key else None


def sign_digest(digest: str, key: bytes) -> str:
    """HMAC-SHA256 (hex) of a content digest ``digest`` under ``key``.

    >>> sign_digest("ab" * 32, b"k") == sign_digest("ab" * 32, b"k") != sign_digest("ab" * 32, b"j")
    True
    """
    import hmac

    return hmac.new(key, digest.encode("ascii"), hashlib.sha256).hexdigest()


def signature_problem(digest: str, signature: Any, key: bytes | None) -> str | None:
    """Why a file whose content digest is ``digest`` and whose stored keyed digest is ``signature``
    is not trusted under ``key``; None when it is (or when no key is set: nothing to check)."""
    import hmac

    if key is None:
        return None
    if signature is None:
        return f"it is not signed, but {HMAC_ENV} is set (only files signed with the key are trusted)"
    if not isinstance(signature, str) or not hmac.compare_digest(signature, sign_digest(digest, key)):
        return f"its {HMAC_FIELD} does not match {HMAC_ENV} (the file was changed, or signed with another key)"
    return None
