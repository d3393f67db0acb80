"""Seeding, devices, threads, determinism and environment capture.

One ``seed_everything`` call at each entry point; everything random below it takes an explicit
``torch.Generator`` so that the same seed gives the same numbers.
"""

from __future__ import annotations

import os
import platform
import random
import sys
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
    from metaat import __version__

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
