"""Shared pieces of the data package: the error type, dataset metadata and the registry."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaat.registry import Registry

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""The split names a dataset may offer (``DatasetInfo.splits`` says which ones it does)."""

ENV_VAR = "METAAT_DATA"
"""Environment variable naming a folder that holds datasets (or one dataset's files)."""


class DataError(ValueError):
    """A data file exists but cannot be used (corrupt, truncated, inconsistent); the message names it."""


DOMAIN_RANKS: dict[str, int] = {"images": 2, "sensors": 1, "text": 0}
"""Spatial rank of one example per domain: images ``(C, H, W)``, signals ``(C, T)``, token ids ``(L,)``."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset before seeing it.

    ``image_size`` is the spatial size: the side of a square image, the length ``T`` of a signal or
    the number ``L`` of tokens. ``box`` is the valid range of input values (pixels ``[0, 1]``; a
    sensor's saturation range in units of each channel's standard deviation), which every threat
    of this dataset is intersected with. ``splits`` names the splits the dataset offers;
    ``threats`` the threats ``metaat eval`` uses when none are given.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    class_names: tuple[str, ...]
    box: tuple[float, float] = (0.0, 1.0)
    domain: str = "images"
    splits: tuple[str, ...] = ("train", "test")
    threats: tuple[str, ...] = ()
    """The domain's standard evaluation threats, radii in its own units (empty: the pixel defaults)."""
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    """Arguments every model built for this dataset gets (text: ``("vocab", "mr")``)."""

    def __post_init__(self) -> None:
        if self.domain not in DOMAIN_RANKS:
            raise ValueError(f"unknown domain {self.domain!r}; valid domains: {', '.join(DOMAIN_RANKS)}")
        unknown = [s for s in self.splits if s not in SPLITS]
        if unknown:
            raise ValueError(f"unknown split(s) {unknown}; valid splits: {', '.join(SPLITS)}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example: ``(C, H, W)`` images, ``(C, T)`` signals, ``(L,)`` token ids."""
        rank = DOMAIN_RANKS[self.domain]
        if rank == 0:
            return (self.image_size,)
        return (self.in_channels, *([self.image_size] * rank))


_UINT8_TO_UNIT = np.arange(256, dtype=np.float32) / np.float32(255.0)  # exact k/255, as a lookup table


class Dataset(ABC):
    """A registered dataset: static metadata plus a loader for its splits.

    Subclasses set :attr:`info` and implement :meth:`arrays`; :meth:`load` checks the split and
    ``n``, slices, and returns ``(x, y)`` with ``x`` float32 NCHW in [0, 1] and ``y`` int64.
    """

    info: DatasetInfo

    @abstractmethod
    def arrays(self, split: str, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
        """The whole ``split`` as numpy arrays: NCHW images (uint8 0..255 or float32 in [0, 1]), labels."""

    def load(
        self,
        split: str = "train",
        data_dir: str | os.PathLike[str] | None = None,
        n: int | None = None,
        start: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Load ``split``, optionally only the ``n`` examples from index ``start`` on (default: its
        first ``n``)."""
        check_split(split, self.info.splits, self.info.name)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
            raise ValueError(f"n must be a positive integer or None; got {n!r}")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be a non-negative integer; got {start!r}")
        x, y = self.arrays(split, Path(data_dir).expanduser() if data_dir is not None else None)
        if start >= len(y):
            raise ValueError(f"start={start} is past the end of the {self.info.name} {split} split ({len(y)} examples)")
        stop = len(y) if n is None else start + n
        if stop > len(y):
            what = f"n={n} examples from index {start}" if start else f"n={n} examples"
            raise ValueError(f"asked for {what} but the {self.info.name} {split} split holds only {len(y)}")
        x, y = x[start:stop], y[start:stop]
        if x.dtype == np.uint8:
            xt = torch.from_numpy(_UINT8_TO_UNIT[x])
        elif np.issubdtype(x.dtype, np.integer):  # token ids stay integers
            xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64).copy())
        else:
            xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).copy())
        yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64).copy())
        from metaat.data.validate import validate_batch

        try:  # NaN, values outside the box, labels out of range: named here, not blamed on a model later
            validate_batch(xt, yt, num_classes=self.info.num_classes, box=self.info.box)
        except ValueError as err:
            raise ValueError(f"dataset {self.info.name} ({split} split): {err}") from None
        return xt, yt


def check_split(split: str, valid: tuple[str, ...] = SPLITS, dataset: str | None = None) -> None:
    """Raise ``ValueError`` listing the valid splits when ``split`` is not one of ``valid``."""
    if split not in valid:
        where = f" of {dataset}" if dataset else ""
        raise ValueError(f"unknown split {split!r}{where}; valid splits: {', '.join(valid)}")


DATASETS: Registry[Dataset] = Registry[Dataset]("dataset")
"""Dataset registry: ``DATASETS.create(name, **config)`` returns a :class:`Dataset`."""


def env_dirs(*names: str) -> list[Path]:
    """Candidate folders under ``$METAAT_DATA``: the folder itself, then ``$METAAT_DATA/<name>``."""
    root = os.environ.get(ENV_VAR, "").strip()
    if not root:
        return []
    base = Path(root).expanduser()
    return [base, *(base / name for name in names)]
