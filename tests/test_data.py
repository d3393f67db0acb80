"""Tests for metaat.data: IDX / CIFAR loaders, the synthetic dataset and validate_batch."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from metaat import data
from metaat.data import DATASETS, DataError, DatasetInfo, validate_batch
from metaat.data import idx as idx_module
from metaat.data.cifar import read_batch
from metaat.registry import UnknownNameError

FMNIST_DIR = idx_module.debian_dir() or idx_module.DEBIAN_DEFAULT_DIR
HAVE_FMNIST = (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file()


# --------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Encode a uint8 array as an IDX file (magic 0x0000 08 ndim unless overridden)."""
    array = np.asarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def write_split(
    folder: Path,
    images: np.ndarray,
    labels: np.ndarray,
    split: str = "train",
    gz: bool = True,
) -> tuple[Path, Path]:
    """Write an images/labels IDX pair for ``split`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, array in zip(idx_module.FILES[split], (images, labels), strict=True):
        raw = idx_bytes(array)
        path = folder / (stem + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(raw) if gz else raw)
        paths.append(path)
    return paths[0], paths[1]


def tiny(n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METAAT_DATA", raising=False)


# --------------------------------------------------------------------------- registry / info


def test_registry_lists_datasets() -> None:
    assert {"fashion-mnist", "mnist", "cifar10", "synthetic"} <= set(DATASETS.available())


def test_unknown_dataset_lists_valid_ones() -> None:
    with pytest.raises(UnknownNameError) as err:
        data.load("imagenet")
    msg = str(err.value)
    assert "imagenet" in msg and "fashion-mnist" in msg and "cifar10" in msg


def test_info() -> None:
    fm = data.info("fashion-mnist")
    assert isinstance(fm, DatasetInfo)
    assert (fm.num_classes, fm.in_channels, fm.image_size) == (10, 1, 28)
    assert fm.class_names[0] == "T-shirt/top" and len(fm.class_names) == 10
    assert data.info("cifar10").in_channels == 3 and data.info("cifar10").image_size == 32
    assert data.info("synthetic", channels=3, image_size=8).in_channels == 3
    with pytest.raises(AttributeError):
        fm.num_classes = 3  # type: ignore[misc]  # frozen


def test_bad_split_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="train, test"):
        data.load("synthetic", "validation")


# --------------------------------------------------------------------------- real Fashion-MNIST


@pytest.mark.skipif(not HAVE_FMNIST, reason=f"Debian package dataset-fashion-mnist not installed ({FMNIST_DIR})")
def test_real_fashion_mnist() -> None:
    for split, size in (("train", 60000), ("test", 10000)):
        x, y = data.load("fashion-mnist", split)
        assert x.shape == (size, 1, 28, 28) and x.dtype == torch.float32
        assert y.shape == (size,) and y.dtype == torch.int64
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        assert torch.bincount(y, minlength=10).tolist() == [size // 10] * 10
        validate_batch(x[:512], y[:512], num_classes=10, in_channels=1)


@pytest.mark.skipif(not HAVE_FMNIST, reason=f"Debian package dataset-fashion-mnist not installed ({FMNIST_DIR})")
def test_real_fashion_mnist_subset_and_too_many() -> None:
    x, y = data.load("fashion-mnist", "test", n=100)
    assert x.shape == (100, 1, 28, 28) and y.shape == (100,)
    with pytest.raises(ValueError, match=r"20000.*10000"):
        data.load("fashion-mnist", "test", n=20000)


# --------------------------------------------------------------------------- IDX files built here


def test_idx_gz_and_plain_load(tmp_path: Path) -> None:
    images, labels = tiny(6)
    write_split(tmp_path / "gz", images, labels)
    write_split(tmp_path / "plain", images, labels, gz=False)
    for folder in ("gz", "plain"):
        x, y = data.load("mnist", "train", data_dir=tmp_path / folder)
        assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32
        assert torch.equal(x[:, 0], torch.from_numpy(images).float() / 255)
        assert y.tolist() == labels.tolist() and y.dtype == torch.int64


def test_data_dir_subfolder_named_after_dataset(tmp_path: Path) -> None:
    write_split(tmp_path / "fashion-mnist", *tiny(4), split="test")
    x, _ = data.load("fashion-mnist", "test", data_dir=tmp_path)
    assert len(x) == 4


@pytest.mark.parametrize("sub", ["", "fashion-mnist"])
def test_metaat_data_env_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sub: str) -> None:
    write_split(tmp_path / sub if sub else tmp_path, *tiny(3), split="test")
    monkeypatch.setenv("METAAT_DATA", str(tmp_path))
    x, y = data.load("fashion-mnist", "test")
    assert x.shape == (3, 1, 28, 28) and y.tolist() == [0, 1, 2]


def test_missing_files_say_where_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idx_module, "debian_dir", lambda: None)
    monkeypatch.setattr(idx_module, "DEBIAN_DEFAULT_DIR", tmp_path / "nowhere")
    monkeypatch.setenv("METAAT_DATA", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError) as err:
        data.load("fashion-mnist", "train")
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "METAAT_DATA" in msg
    assert str(tmp_path / "env") in msg and str(tmp_path / "nowhere") in msg
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        data.load("mnist", "test", data_dir=tmp_path / "empty")


def test_corrupt_gzip(tmp_path: Path) -> None:
    images, labels = write_split(tmp_path, *tiny())
    images.write_bytes(b"\x1f\x8b\x08\x00 this is not really gzip data at all")
    with pytest.raises(DataError, match=images.name):
        data.load("mnist", data_dir=tmp_path)


def test_truncated_gzip(tmp_path: Path) -> None:
    images, _ = write_split(tmp_path, *tiny(), split="test")
    raw = images.read_bytes()
    images.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=images.name) as err:
        data.load("mnist", "test", data_dir=tmp_path)
    assert "gzip" in str(err.value)


def test_truncated_payload(tmp_path: Path) -> None:
    images, _ = write_split(tmp_path, *tiny(), gz=False)
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match=images.name) as err:
        data.load("mnist", data_dir=tmp_path)
    assert "declares" in str(err.value)


def test_wrong_magic(tmp_path: Path) -> None:
    x, y = tiny()
    _, labels = write_split(tmp_path, x, y)
    labels.write_bytes(gzip.compress(idx_bytes(y, magic=2051)))
    with pytest.raises(DataError, match=labels.name) as err:
        data.load("mnist", data_dir=tmp_path)
    assert "magic" in str(err.value) and "2049" in str(err.value)


def test_count_mismatch(tmp_path: Path) -> None:
    x, y = tiny(6)
    images, labels = write_split(tmp_path, x, y[:5])
    with pytest.raises(DataError) as err:
        data.load("mnist", data_dir=tmp_path)
    assert images.name in str(err.value) and labels.name in str(err.value)


def test_label_out_of_range(tmp_path: Path) -> None:
    x, y = tiny(4)
    y[2] = 10
    _, labels = write_split(tmp_path, x, y)
    with pytest.raises(DataError, match=labels.name) as err:
        data.load("mnist", data_dir=tmp_path)
    assert "max 10" in str(err.value)


def test_data_error_is_value_error() -> None:
    assert issubclass(DataError, ValueError)


def test_bad_n(tmp_path: Path) -> None:
    write_split(tmp_path, *tiny(5))
    with pytest.raises(ValueError, match=r"n=6.*5"):
        data.load("mnist", data_dir=tmp_path, n=6)
    with pytest.raises(ValueError, match="positive"):
        data.load("mnist", data_dir=tmp_path, n=0)


def test_start_picks_a_slice_and_bad_starts_are_refused(tmp_path: Path) -> None:
    write_split(tmp_path, *tiny(5))
    x, y = data.load("mnist", data_dir=tmp_path)
    xs, ys = data.load("mnist", data_dir=tmp_path, n=2, start=3)
    assert torch.equal(xs, x[3:5]) and torch.equal(ys, y[3:5])
    xs, ys = data.load("mnist", data_dir=tmp_path, start=1)  # to the end
    assert torch.equal(xs, x[1:]) and torch.equal(ys, y[1:])
    with pytest.raises(ValueError, match=r"n=3 examples from index 3 .* only 5"):
        data.load("mnist", data_dir=tmp_path, n=3, start=3)
    with pytest.raises(ValueError, match=r"start=5 is past the end .* \(5 examples\)"):
        data.load("mnist", data_dir=tmp_path, start=5)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="start must be a non-negative integer"):
            data.load("mnist", data_dir=tmp_path, start=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- CIFAR-10


_PurePythonPickler: Any = pickle._Pickler  # type: ignore[attr-defined]


class Py2Pickler(_PurePythonPickler):
    """Writes ``bytes`` the way Python 2 wrote ``str`` (SHORT_BINSTRING / BINSTRING), as in the
    real CIFAR-10 python batches, instead of Python 3's protocol-2 ``_codecs.encode`` call."""

    dispatch = _PurePythonPickler.dispatch.copy()

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def py2_dumps(obj: object) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def write_cifar(folder: Path, per_batch: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": b"synthetic",
            b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, size=per_batch)],
            b"filenames": [b"x.png"] * per_batch,
        }
        (folder / name).write_bytes(py2_dumps(batch))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_cifar_loads_well_formed_batches(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar-10-batches-py")
    x, y = data.load("cifar10", "train", data_dir=tmp_path)
    assert x.shape == (15, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    raw = read_batch(tmp_path / "cifar-10-batches-py" / "data_batch_1")[0]
    assert raw.shape == (3, 3, 32, 32)
    assert torch.equal(x[:3], torch.from_numpy(raw).float() / 255)  # CHW order: R plane first
    xt, _ = data.load("cifar10", "test", data_dir=tmp_path / "cifar-10-batches-py")
    assert xt.shape == (3, 3, 32, 32)
    validate_batch(x, y, num_classes=10, in_channels=3)


@pytest.mark.parametrize("protocol", ["py2", 3, 4, 5])
def test_cifar_accepts_numpy_pickles(tmp_path: Path, protocol: str | int) -> None:
    path = tmp_path / "batch"
    arr = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    batch = {b"data": arr, b"labels": [3, 9]}
    path.write_bytes(py2_dumps(batch) if protocol == "py2" else pickle.dumps(batch, protocol=int(protocol)))
    x, y = read_batch(path)
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [3, 9]
    assert np.array_equal(x.reshape(2, 3072), arr)


def test_cifar_refuses_malicious_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": []}))
    monkeypatch.setenv("METAAT_DATA", str(tmp_path))
    with pytest.raises(DataError, match="test_batch") as err:
        data.load("cifar10", "test")
    assert "system" in str(err.value)
    assert not marker.exists()


def test_cifar_bad_labels_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 10]}))
    with pytest.raises(DataError, match="test_batch"):
        data.load("cifar10", "test", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        data.load("cifar10", "train", data_dir=tmp_path)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_determinism_and_splits() -> None:
    x, y = data.load("synthetic", "train", n=200)
    assert x.shape == (200, 1, 12, 12) and x.dtype == torch.float32 and y.dtype == torch.int64
    validate_batch(x, y, num_classes=10, in_channels=1)
    x2, y2 = data.load("synthetic", "train", n=200)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    xt, _ = data.load("synthetic", "test", n=200)
    assert not torch.equal(x, xt)
    x3, _ = data.load("synthetic", "train", n=200, seed=1)
    assert not torch.equal(x, x3)
    xs, ys = data.load("synthetic", "train", n=50)
    assert torch.equal(xs, x[:50]) and torch.equal(ys, y[:50])
    xc, yc = data.load("synthetic", "test", n=10, channels=3, image_size=8, num_classes=4)
    assert xc.shape == (10, 3, 8, 8) and int(yc.max()) < 4


def test_synthetic_is_learnable() -> None:
    torch.manual_seed(0)
    x, y = data.load("synthetic", "train", n=2000)
    xt, yt = data.load("synthetic", "test", n=500)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        for i in range(0, len(x), 100):
            loss = torch.nn.functional.cross_entropy(model(x[i : i + 100]), y[i : i + 100])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    assert acc > 0.9


# --------------------------------------------------------------------------- validate_batch


def test_validate_batch_accepts_good_batch() -> None:
    validate_batch(torch.rand(4, 1, 5, 5), torch.tensor([0, 1, 2, 9]), num_classes=10, in_channels=1)
    validate_batch(torch.zeros(0, 3, 2, 2), torch.zeros(0, dtype=torch.int64), num_classes=10)


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "message"),
    [
        (torch.rand(2, 25), None, {}, "4-D"),
        (torch.rand(2, 5, 5), None, {"ndim": 4}, "4-D"),
        (torch.randint(0, 2, (2, 1, 3, 3)), None, {}, "floating"),
        (
            torch.tensor([float("nan"), 0.5, float("nan"), 0.1]).view(1, 1, 2, 2),
            None,
            {},
            "x has 2 NaN values",
        ),
        (torch.tensor([float("inf"), 0.5, 0.1, 0.1]).view(1, 1, 2, 2), None, {}, "1 infinite"),
        (torch.tensor([-0.2, 0.5, 1.0, 0.1]).view(1, 1, 2, 2), None, {}, r"\[0, 1\]; got min -0.2 max 1"),
        (torch.rand(2, 3, 4, 4), None, {"in_channels": 1}, r"expected 1 channel\(s\), got 3"),
        (torch.rand(2, 1, 4, 4), torch.tensor([0.0, 1.0]), {}, "integer"),
        (torch.rand(2, 1, 4, 4), torch.tensor([[0, 1]]), {}, "1-D"),
        (torch.rand(2, 1, 4, 4), torch.tensor([0, 1, 2]), {}, "3 labels but x has 2"),
        (torch.rand(2, 1, 4, 4), torch.tensor([0, 12]), {"num_classes": 10}, r"\[0, 10\); got max 12"),
        (torch.rand(2, 1, 4, 4), torch.tensor([-1, 2]), {"num_classes": 10}, "got min -1"),
    ],
)
def test_validate_batch_errors(x: torch.Tensor, y: torch.Tensor | None, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_batch(x, y, **kwargs)


def test_validate_batch_tolerance() -> None:
    validate_batch(torch.full((1, 1, 2, 2), 1.0 + 5e-7))
    with pytest.raises(ValueError):
        validate_batch(torch.full((1, 1, 2, 2), 1.0 + 1e-4))
