"""CIFAR-10 "python version" batches, read with a restricted unpickler."""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np

from metaat.data.base import DATASETS, ENV_VAR, DataError, Dataset, DatasetInfo, env_dirs

FOLDER = "cifar-10-batches-py"
BATCHES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}

# (module, name) pairs the unpickler may resolve: numpy's array reconstruction and nothing else.
_ALLOWED: dict[tuple[str, str], tuple[str, str]] = {
    ("numpy.core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
    # protocol-5 pickles written by numpy >= 1.16 rebuild arrays through ``_frombuffer``
    ("numpy.core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
    ("numpy", "ndarray"): ("", "ndarray"),
    ("numpy", "dtype"): ("", "dtype"),
}


def _numpy_attr(submodule: str, name: str) -> Any:
    if not submodule:
        return getattr(np, name)
    for prefix in ("numpy._core", "numpy.core"):  # numpy 2 renamed numpy.core to numpy._core
        try:
            return getattr(importlib.import_module(f"{prefix}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise AttributeError(f"numpy has no {submodule}.{name}")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only resolves numpy's array-reconstruction globals.

    Any other global (``os.system``, ``builtins.eval``, ...) raises :class:`DataError`, so a
    malicious file cannot run code while being read.
    """

    def __init__(self, file: IO[bytes], source: str = "<pickle>") -> None:
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED.get((module, name))
        if target is None:
            raise DataError(f"{self.source}: refusing to load global {module}.{name} from a pickle")
        return _numpy_attr(*target)


def restricted_load(path: Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; any failure is a :class:`DataError`."""
    try:
        with path.open("rb") as f:
            return RestrictedUnpickler(f, source=str(path)).load()
    except DataError:
        raise
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise DataError(f"{path}: not a readable CIFAR batch pickle ({type(exc).__name__}: {exc})") from exc


def read_batch(path: Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch as ``(uint8 images N x 3 x 32 x 32, int64 labels N)``."""
    obj = restricted_load(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, got {type(obj).__name__}")
    batch = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: missing 'data' or 'labels' entry (keys: {sorted(map(str, batch))})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072); got {shape}")
    try:
        labels = np.asarray(batch["labels"], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: 'labels' is not a list of integers ({exc})") from exc
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels must lie in [0, {num_classes}); got min {labels.min()} max {labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


@DATASETS.register("cifar10", help="CIFAR-10, 10 classes of 3x32x32 colour images (python batches)")
class CIFAR10(Dataset):
    """CIFAR-10 from the standard ``cifar-10-batches-py`` folder (50,000 train / 10,000 test)."""

    info = DatasetInfo(
        name="cifar10",
        num_classes=10,
        in_channels=3,
        image_size=32,
        class_names=(
            "airplane", "automobile", "bird", "cat", "deer",
            "dog", "frog", "horse", "ship", "truck",
        ),
    )  # fmt: skip

    def _locate(self, split: str, data_dir: Path | None) -> list[Path]:
        roots = [data_dir] if data_dir is not None else env_dirs("cifar10", FOLDER)
        candidates: list[Path] = []
        for root in roots:
            for folder in (root, root / FOLDER, root / "cifar10", root / "cifar10" / FOLDER):
                if folder not in candidates:
                    candidates.append(folder)
        for folder in candidates:
            files = [folder / name for name in BATCHES[split]]
            if all(f.is_file() for f in files):
                return files
        looked = ", ".join(str(c) for c in candidates) or f"nowhere ({ENV_VAR} is unset)"
        raise FileNotFoundError(
            f"cifar10 {split} batches ({', '.join(BATCHES[split])}) not found; looked in: {looked}. "
            f"Download the CIFAR-10 python version (cifar-10-python.tar.gz), unpack it and pass "
            f"--data-dir (data_dir=...) or set {ENV_VAR} to the folder holding {FOLDER}"
        )

    def arrays(self, split: str, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
        parts = [read_batch(f, self.info.num_classes) for f in self._locate(split, data_dir)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


__all__ = ["CIFAR10", "RestrictedUnpickler", "read_batch", "restricted_load"]
