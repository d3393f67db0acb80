"""IDX files (MNIST, Fashion-MNIST): parsing with numpy, validation, folder search, caching."""

from __future__ import annotations

import functools
import gzip
import subprocess
import zlib
from pathlib import Path

import numpy as np

from metaat.data.base import DATASETS, ENV_VAR, DataError, Dataset, DatasetInfo, env_dirs

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when its name ends in ``.gz``."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc})") from exc
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip file ({exc})") from exc


def parse_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file whose magic number must be ``magic``.

    The header is big-endian: a 4-byte magic (``0x0000 08 ndim``) then ``ndim`` 4-byte sizes.
    Raises :class:`DataError` naming ``path`` when the header or payload is inconsistent.
    """
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: file too short for an IDX header ({len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{path}: wrong IDX magic number {found} (expected {magic})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    declared = int(np.prod(dims, dtype=np.int64))
    payload = len(data) - header
    if payload != declared:
        raise DataError(f"{path}: header declares {declared} bytes of data (shape {dims}) but the file holds {payload}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


@functools.lru_cache(maxsize=16)
def _load_pair_cached(
    images: Path, labels: Path, _stamp: tuple[int, int, int, int], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    x = parse_idx(images, IMAGES_MAGIC)
    y = parse_idx(labels, LABELS_MAGIC)
    if x.ndim != 3:
        raise DataError(f"{images}: expected a 3-D image array, got shape {x.shape}")
    if len(x) != len(y):
        raise DataError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels")
    if len(y) and int(y.max()) >= num_classes:
        raise DataError(f"{labels}: labels must lie in [0, {num_classes}); got max {int(y.max())}")
    return x, y


def load_idx_pair(images: Path, labels: Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Parse and cross-check an images/labels IDX pair (uint8 arrays, cached per resolved path)."""
    images, labels = images.resolve(), labels.resolve()
    si, sl = images.stat(), labels.stat()
    stamp = (si.st_mtime_ns, si.st_size, sl.st_mtime_ns, sl.st_size)
    return _load_pair_cached(images, labels, stamp, num_classes)


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def _find_pair(folder: Path, split: str) -> tuple[Path, Path] | None:
    images, labels = (_find_file(folder, stem) for stem in FILES[split])
    return (images, labels) if images is not None and labels is not None else None


@functools.lru_cache(maxsize=1)
def debian_dir() -> Path | None:
    """The folder where Debian's ``dataset-fashion-mnist`` package put its files, via ``dpkg -L``."""
    try:
        out = subprocess.run(["dpkg", "-L", DEBIAN_PACKAGE], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    for line in out.stdout.splitlines():
        path = Path(line.strip())
        if path.name == FILES["train"][0] + ".gz":
            return path.parent
    return None


class IdxDataset(Dataset):
    """A dataset stored as the four standard IDX files (gzipped or not)."""

    def _system_candidates(self) -> list[Path]:
        return []

    def _install_hint(self) -> str:
        return f"pass --data-dir (data_dir=...) or set {ENV_VAR} to a folder holding them"

    def _locate(self, split: str, data_dir: Path | None) -> tuple[Path, Path]:
        name = self.info.name
        if data_dir is not None:
            candidates = [data_dir, data_dir / name]
        else:
            candidates = [*env_dirs(name), *self._system_candidates()]
        for folder in candidates:
            pair = _find_pair(folder, split)
            if pair is not None:
                return pair
        wanted = " and ".join(f"{stem}[.gz]" for stem in FILES[split])
        looked = ", ".join(str(c) for c in candidates) or f"nowhere ({ENV_VAR} is unset)"
        raise FileNotFoundError(
            f"{name} {split} files ({wanted}) not found; looked in: {looked}. To install: {self._install_hint()}"
        )

    def arrays(self, split: str, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
        images, labels = self._locate(split, data_dir)
        x, y = load_idx_pair(images, labels, self.info.num_classes)
        return x[:, None], y


@DATASETS.register("fashion-mnist", help="Fashion-MNIST (Zalando), 10 classes of 1x28x28 clothing images")
class FashionMNIST(IdxDataset):
    """Fashion-MNIST: 60,000 train / 10,000 test grey 28x28 images, 10 classes."""

    info = DatasetInfo(
        name="fashion-mnist",
        num_classes=10,
        in_channels=1,
        image_size=28,
        class_names=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
    )  # fmt: skip

    def _system_candidates(self) -> list[Path]:
        found = debian_dir()
        dirs = [found] if found is not None else []
        if DEBIAN_DEFAULT_DIR not in dirs:
            dirs.append(DEBIAN_DEFAULT_DIR)
        return dirs

    def _install_hint(self) -> str:
        return f"`apt-get install {DEBIAN_PACKAGE}`, or " + super()._install_hint()


@DATASETS.register("mnist", help="MNIST handwritten digits, 10 classes of 1x28x28 images")
class MNIST(IdxDataset):
    """MNIST: 60,000 train / 10,000 test grey 28x28 digit images."""

    info = DatasetInfo(
        name="mnist",
        num_classes=10,
        in_channels=1,
        image_size=28,
        class_names=tuple(str(d) for d in range(10)),
    )


__all__ = ["FashionMNIST", "MNIST", "IdxDataset", "debian_dir", "load_idx_pair", "parse_idx"]
