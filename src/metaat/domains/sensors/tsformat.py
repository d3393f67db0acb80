"""A reader for the ``.ts`` time-series format of the UEA & UCR archives (the sktime/aeon format).

A ``.ts`` file is a header of ``@key value`` lines (``@problemName``, ``@timeStamps``,
``@univariate``, ``@dimensions``, ``@equalLength``, ``@seriesLength``, ``@classLabel true <labels>``)
followed by ``@data`` and one line per series: the channels separated by ``:``, each a
comma-separated list of values (``?`` or ``NaN`` = missing), the class label last. Lines starting
with ``#`` are comments. Series may differ in length (JapaneseVowels, PLAID): each is returned at its
own length, trailing missing values removed, for the caller to resample.

This is also the reader for a user's own copy of the full UEA archive (UCI HAR and the other sets
that cannot be fetched offline are distributed in this format): see ``docs/domains/sensors.md``.
Time-stamped series (``@timeStamps true``) are not supported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class TsFormatError(ValueError):
    """A ``.ts`` file that does not follow the format; the message names the file and line."""


@dataclass(frozen=True)
class TsData:
    """The contents of one ``.ts`` file: ``series[i]`` is a float64 ``(C, T_i)`` array."""

    series: tuple[np.ndarray, ...]
    labels: tuple[str, ...]
    class_labels: tuple[str, ...]
    problem: str

    @property
    def num_channels(self) -> int:
        return int(self.series[0].shape[0])

    def lengths(self) -> np.ndarray:
        return np.array([s.shape[1] for s in self.series], dtype=np.int64)


def _values(text: str, where: str) -> np.ndarray:
    items = text.split(",")
    try:
        return np.array([np.nan if v.strip() in ("?", "") else float(v) for v in items], dtype=np.float64)
    except ValueError as err:
        raise TsFormatError(f"{where}: not a comma-separated list of numbers ({err})") from err


def parse_ts(text: str, source: str = "<text>") -> TsData:
    """Parse the text of a ``.ts`` file (``source`` names it in error messages)."""
    header: dict[str, str] = {}
    series: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}, line {number}"
        if not in_data:
            if not line.startswith("@"):
                raise TsFormatError(f"{where}: expected a '@key value' header line or '@data'")
            key, _, value = line[1:].partition(" ")
            key = key.lower()
            if key == "data":
                in_data = True
                continue
            header[key] = value.strip()
            continue
        *channels, label = line.split(":")
        if not channels:
            raise TsFormatError(f"{where}: a series needs at least one channel and a class label ('v,v,...:label')")
        if header.get("timestamps", "false").lower() == "true" or "(" in channels[0]:
            raise TsFormatError(f"{where}: time-stamped series are not supported")
        rows = [_values(c, where) for c in channels]
        length = max(len(r) for r in rows)
        arr = np.full((len(rows), length), np.nan)
        for i, r in enumerate(rows):
            arr[i, : len(r)] = r
        keep = ~np.isnan(arr).all(axis=0)  # drop trailing all-missing steps (padding of unequal lengths)
        last = int(np.nonzero(keep)[0].max()) + 1 if keep.any() else 0
        if last == 0:
            raise TsFormatError(f"{where}: the series has no values")
        series.append(arr[:, :last])
        labels.append(label.strip())
    if not in_data:
        raise TsFormatError(f"{source}: no '@data' line")
    if not series:
        raise TsFormatError(f"{source}: no series after '@data'")
    channels_seen = {s.shape[0] for s in series}
    if len(channels_seen) != 1:
        raise TsFormatError(f"{source}: series have different numbers of channels {sorted(channels_seen)}")
    declared = header.get("classlabel", "").split()
    class_labels = tuple(declared[1:]) if declared and declared[0].lower() == "true" else ()
    if not class_labels:
        class_labels = tuple(sorted(set(labels)))
    unknown = sorted(set(labels) - set(class_labels))
    if unknown:
        raise TsFormatError(f"{source}: labels {unknown} are not among the declared classes {list(class_labels)}")
    return TsData(tuple(series), tuple(labels), class_labels, header.get("problemname", Path(source).stem))


def read_ts(path: str | Path) -> TsData:
    """Read and parse a ``.ts`` file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TsFormatError(f"{p}: not a UTF-8 text file") from err
    return parse_ts(text, str(p))


def resample(series: np.ndarray, length: int) -> np.ndarray:
    """Linear interpolation of a ``(C, T)`` series onto ``length`` evenly spaced points spanning the
    same interval (first and last samples kept); interior missing values are filled by interpolation
    from their neighbours in the same channel first."""
    c, t = series.shape
    out = np.empty((c, length), dtype=np.float64)
    src = np.arange(t, dtype=np.float64)
    dst = np.linspace(0.0, t - 1.0, length) if t > 1 else np.zeros(length)
    for i in range(c):
        row = series[i]
        ok = ~np.isnan(row)
        if not ok.any():
            out[i] = 0.0
            continue
        out[i] = np.interp(dst, src[ok], row[ok])
    return out
