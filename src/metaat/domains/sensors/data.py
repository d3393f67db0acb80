"""Sensor datasets: the smartwatch IMU exercises (``watch``) and six UEA/UCR archive sets.

Every dataset returns float32 ``(N, C, T)`` signals standardised per channel with statistics of its
own training split only (``(x - mean_c) / std_c``, over every training sample of channel ``c``), so
one unit is one training standard deviation (σ) of that channel, and then clipped to the saturation
range ``BOX = (-8, 8)`` σ — the valid input range every threat of the domain is intersected with
(on the watch data it clips about 0.02 % of the samples, nearly all on one gyroscope axis).

``watch`` (seglearn's smartwatch data: 140 recordings, 10 subjects, 6 channels = 3-axis
accelerometer ``ax ay az`` + gyroscope ``wx wy wz`` at 50 Hz, 7 shoulder-rehabilitation exercises):

* windows of 2 s = 100 samples; stride 50 (50 % overlap) in ``train``, 100 (no overlap, every sample
  counted once) in ``val`` and ``test``; a window's label is its recording's exercise;
* split by subject, fixed: ``train`` = subjects 1–6, ``val`` = subject 7 (every choice of recipe,
  option or default is made on it), ``test`` = subjects 8, 9, 10 (never used for any choice).

The archive sets keep the archive's TRAIN/TEST split; ``val`` is a fixed, stratified 20 % of the
archive's TRAIN file (the same for everyone: a permutation seeded with 0, at least one series per
class), and ``train`` is the rest. Series of unequal length are linearly resampled to the fixed length
``T`` given in :data:`UEA_SETS` (equal-length sets keep theirs).

The data files come from ``make data`` (:mod:`metaat.domains.sensors.fetch`); each is checked against
its pinned sha256 when first read, and a changed file is refused with a one-line :class:`DataError`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metaat.data.base import DATASETS, DataError, Dataset, DatasetInfo, env_dirs
from metaat.domains.sensors.sources import DEFAULT_OUT, DOMAIN, PINNED, WATCH_NPZ, sha256_file
from metaat.domains.sensors.tsformat import TsFormatError, read_ts, resample

BOX: tuple[float, float] = (-8.0, 8.0)
"""Saturation range in σ units: standardised signals are clipped to it, and it is every threat's box."""
THREATS: tuple[str, ...] = ("linf:0.25", "l2:3", "spike:5,2", "drift:0.5")
"""The sensor benchmark's threats (σ units), evaluated by default (``metaat eval`` without ``--threat``)."""

WINDOW = 100
TRAIN_STRIDE = 50
EVAL_STRIDE = 100
WATCH_SUBJECTS: dict[str, tuple[int, ...]] = {"train": (1, 2, 3, 4, 5, 6), "val": (7,), "test": (8, 9, 10)}
WATCH_CHANNELS: tuple[str, ...] = ("ax", "ay", "az", "wx", "wy", "wz")
WATCH_CLASSES: tuple[str, ...] = ("PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW")
VAL_FRACTION = 0.2
SPLITS: tuple[str, ...] = ("train", "val", "test")
MAKE_HINT = "run `make data` (or python -m metaat.domains.sensors.fetch --out DIR)"


def search_dirs(data_dir: Path | None) -> list[Path]:
    """Where the sensor files are looked for, in order: ``data_dir`` (and ``data_dir/sensors``),
    ``$METAAT_DATA`` (and ``$METAAT_DATA/sensors``), ``~/.cache/metaat/sensors``."""
    dirs: list[Path] = []
    if data_dir is not None:
        dirs += [data_dir, data_dir / DOMAIN]
    dirs += env_dirs(DOMAIN)
    dirs.append(DEFAULT_OUT.expanduser())
    return dirs


def find_file(name: str, data_dir: Path | None) -> Path:
    """The first ``name`` in :func:`search_dirs`; a file ``make data`` fetches is checked against its
    pinned sha256."""
    dirs = search_dirs(data_dir)
    for folder in dirs:
        path = folder / name
        if path.is_file():
            if name in PINNED:  # a user's own archive files carry no pin
                _check_sha256(path, path.stat().st_size, path.stat().st_mtime_ns)
            return path
    raise FileNotFoundError(f"sensor data file {name} not found in {', '.join(str(d) for d in dirs)}; {MAKE_HINT}")


@functools.lru_cache(maxsize=64)
def _check_sha256(path: Path, size: int, mtime_ns: int) -> None:
    """Hash once per (file, size, mtime); a changed file is refused with one line."""
    expected = PINNED.get(path.name)
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(
            f"{path}: sha256 {actual[:16]}… is not the pinned {str(expected)[:16]}…; refusing it ({MAKE_HINT})"
        )


def standardise(train: np.ndarray, *others: np.ndarray, box: tuple[float, float] = BOX) -> tuple[np.ndarray, ...]:
    """Per-channel ``(x - mean) / std`` with ``train``'s statistics (axes all but the channel axis 1),
    clipped to ``box``; returns float32 arrays in the order given."""
    axes = tuple(i for i in range(train.ndim) if i != 1)
    mean = train.mean(axis=axes, keepdims=True)
    std = train.std(axis=axes, keepdims=True)
    std = np.where(std > 0, std, 1.0)
    return tuple(np.clip((a - mean) / std, box[0], box[1]).astype(np.float32) for a in (train, *others))


def windows(signal: np.ndarray, length: int, stride: int) -> np.ndarray:
    """``(S, C)`` recording -> ``(W, C, length)`` windows starting at 0, stride, 2·stride, … that fit."""
    starts = np.arange(0, signal.shape[0] - length + 1, stride)
    return (
        np.stack([signal[s : s + length].T for s in starts]) if len(starts) else np.empty((0, signal.shape[1], length))
    )


@functools.lru_cache(maxsize=4)
def _watch_splits(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            signal, offsets, label, subject = z["signal"], z["offsets"], z["label"], z["subject"]
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{path}: not a readable watch.npz ({err}); {MAKE_HINT}") from err
    recordings = [signal[offsets[i] : offsets[i + 1]] for i in range(len(label))]
    train_signal = np.concatenate([r for r, s in zip(recordings, subject, strict=True) if s in WATCH_SUBJECTS["train"]])
    mean, std = train_signal.mean(axis=0), train_signal.std(axis=0)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, subjects in WATCH_SUBJECTS.items():
        stride = TRAIN_STRIDE if split == "train" else EVAL_STRIDE
        xs, ys = [], []
        for rec, lab, subj in zip(recordings, label, subject, strict=True):
            if subj in subjects:
                w = windows((rec - mean) / std, WINDOW, stride)
                xs.append(w)
                ys.append(np.full(len(w), lab, dtype=np.int64))
        x = np.clip(np.concatenate(xs), BOX[0], BOX[1]).astype(np.float32)
        out[split] = (x, np.concatenate(ys))
    return out


@DATASETS.register("watch", help="smartwatch IMU exercises (seglearn): 6 × 100 windows, 7 classes, split by subject")
class Watch(Dataset):
    """Smartwatch accelerometer + gyroscope, 2-second windows; subjects 1–6 train, 7 val, 8–10 test."""

    info = DatasetInfo(
        name="watch",
        num_classes=len(WATCH_CLASSES),
        in_channels=len(WATCH_CHANNELS),
        image_size=WINDOW,
        class_names=WATCH_CLASSES,
        box=BOX,
        threats=THREATS,
        domain="sensors",
        splits=SPLITS,
    )

    def arrays(self, split: str, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
        return _watch_splits(find_file(WATCH_NPZ, data_dir))[split]


@dataclass(frozen=True)
class UeaSet:
    """One UEA/UCR archive problem: registry name, archive name, fixed length, description."""

    name: str
    problem: str
    length: int
    help: str


UEA_SETS: tuple[UeaSet, ...] = (
    UeaSet("basic-motions", "BasicMotions", 100, "BasicMotions: accelerometer + gyroscope, 6 × 100, 4 classes"),
    UeaSet("japanese-vowels", "JapaneseVowels", 29, "JapaneseVowels: 12 LPC cepstra, lengths 7–29 → 29, 9 speakers"),
    UeaSet(
        "pickup-gesture",
        "PickupGestureWiimoteZ",
        256,
        "PickupGestureWiimoteZ: Wii remote z-axis, lengths 29–361 → 256, 10 gestures",
    ),
    UeaSet("gun-point", "GunPoint", 150, "GunPoint: hand position x, 1 × 150, 2 classes"),
    UeaSet("acsf1", "ACSF1", 1460, "ACSF1: appliance power, 1 × 1460, 10 classes"),
    UeaSet("plaid", "PLAID", 512, "PLAID: appliance current, lengths 100–1344 → 512, 11 classes"),
)


def val_indices(labels: np.ndarray, fraction: float = VAL_FRACTION, seed: int = 0) -> np.ndarray:
    """Fixed stratified validation indices: per class, the first ``max(1, round(fraction · n_c))`` of a
    permutation seeded with ``seed`` (sorted)."""
    perm = np.random.default_rng(seed).permutation(len(labels))
    chosen: list[int] = []
    for c in np.unique(labels):
        members = perm[labels[perm] == c]
        chosen += members[: max(1, round(fraction * len(members)))].tolist()
    return np.sort(np.array(chosen, dtype=np.int64))


def _series_array(series: tuple[np.ndarray, ...], length: int) -> np.ndarray:
    same = all(s.shape[1] == length and not np.isnan(s).any() for s in series)
    return np.stack([s if same else resample(s, length) for s in series])


@functools.lru_cache(maxsize=8)
def _uea_splits(
    train_path: Path, test_path: Path, length: int, class_names: tuple[str, ...]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        train, test = read_ts(train_path), read_ts(test_path)
    except TsFormatError as err:
        raise DataError(str(err)) from err
    if train.class_labels != class_names:
        raise DataError(f"{train_path}: classes {list(train.class_labels)} are not the expected {list(class_names)}")
    classes = {c: i for i, c in enumerate(train.class_labels)}
    y_all = np.array([classes[c] for c in train.labels], dtype=np.int64)
    y_test = np.array([classes[c] for c in test.labels], dtype=np.int64)
    x_all, x_test = _series_array(train.series, length), _series_array(test.series, length)
    val = val_indices(y_all)
    fit = np.setdiff1d(np.arange(len(y_all)), val)
    x_train, x_val, x_te = standardise(x_all[fit], x_all[val], x_test)
    return {"train": (x_train, y_all[fit]), "val": (x_val, y_all[val]), "test": (x_te, y_test)}


class UeaDataset(Dataset):
    """An archive set read from its ``<Problem>_TRAIN.ts`` / ``<Problem>_TEST.ts`` files."""

    spec: UeaSet

    def arrays(self, split: str, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
        train = find_file(f"{self.spec.problem}_TRAIN.ts", data_dir)
        test = find_file(f"{self.spec.problem}_TEST.ts", data_dir)
        return _uea_splits(train, test, self.spec.length, self.info.class_names)[split]


_UEA_SHAPES: dict[str, tuple[int, tuple[str, ...]]] = {
    "BasicMotions": (6, ("Standing", "Running", "Walking", "Badminton")),
    "JapaneseVowels": (12, tuple(str(i) for i in range(1, 10))),
    "PickupGestureWiimoteZ": (1, tuple(str(i) for i in range(1, 11))),
    "GunPoint": (1, ("1", "2")),
    "ACSF1": (1, tuple(str(i) for i in range(10))),
    "PLAID": (1, tuple(str(i) for i in range(11))),
}


def register_ts_dataset(spec: UeaSet, in_channels: int, class_names: tuple[str, ...]) -> type[UeaDataset]:
    """Register a dataset read from ``<problem>_TRAIN.ts`` / ``<problem>_TEST.ts`` in the sensor
    data folders (``--data-dir``, ``$METAAT_DATA``, ``~/.cache/metaat/sensors``): how a user with the
    full UEA archive (or UCI HAR converted to ``.ts``) adds a set. ``class_names`` must be the file's
    ``@classLabel`` list, in order. Files not fetched by ``make data`` carry no pinned sha256."""
    info = DatasetInfo(
        spec.name, len(class_names), in_channels, spec.length, class_names, BOX, "sensors", SPLITS, THREATS
    )
    cls = type(f"Ts{spec.problem}", (UeaDataset,), {"spec": spec, "info": info, "__doc__": spec.help})
    DATASETS.register(spec.name, help=spec.help)(cls)
    return cls


for _spec in UEA_SETS:
    register_ts_dataset(_spec, *_UEA_SHAPES[_spec.problem])
