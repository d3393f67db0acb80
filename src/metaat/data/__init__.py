"""Datasets: a registry of loaders returning ``(x, y)`` tensors in metaat's input contract.

``x`` is float32 NCHW with pixels in [0, 1]; ``y`` is int64. Registered: ``fashion-mnist``,
``mnist`` (IDX files), ``cifar10`` (python batches, read with a restricted unpickler) and
``synthetic`` (generated, for tests). :func:`load_holdout` carves a validation split from a
training split (its last examples), for datasets without one of their own.

>>> x, y = load("synthetic", "test", n=8)
>>> tuple(x.shape), x.dtype, y.dtype
((8, 1, 12, 12), torch.float32, torch.int64)
"""

from __future__ import annotations

import os
from typing import Any

import torch

from metaat.data import cifar, idx, synthetic  # noqa: F401  (registers the datasets)
from metaat.data.base import DATASETS, ENV_VAR, SPLITS, DataError, Dataset, DatasetInfo, check_split
from metaat.data.cifar import RestrictedUnpickler
from metaat.data.holdout import holdout_slice, load_holdout
from metaat.data.validate import validate_batch


def load(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    n: int | None = None,
    start: int = 0,
    **config: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load ``split`` ("train", "test", or "val" where the dataset has one) of dataset ``name``,
    optionally only ``n`` examples, from index ``start`` on (default: the first ones).

    ``config`` goes to the dataset's constructor (only ``synthetic`` takes any: ``image_size``,
    ``channels``, ``num_classes``, ``seed``, ...). Returns float32 NCHW images in [0, 1] and
    int64 labels. Raises ``ValueError`` for a bad split, ``n`` or ``start``, ``UnknownNameError`` for an
    unknown name, ``FileNotFoundError`` (saying where it looked) for missing files and
    :class:`DataError` for unusable ones.
    """
    return DATASETS.create(name, **config).load(split, data_dir=data_dir, n=n, start=start)


def info(name: str, **config: Any) -> DatasetInfo:
    """Static metadata (classes, channels, image size) of dataset ``name``; reads no files."""
    return DATASETS.create(name, **config).info


def available() -> list[str]:
    """Registered dataset names."""
    return DATASETS.available()


__all__ = [
    "DATASETS",
    "ENV_VAR",
    "SPLITS",
    "check_split",
    "DataError",
    "Dataset",
    "DatasetInfo",
    "RestrictedUnpickler",
    "available",
    "holdout_slice",
    "info",
    "load",
    "load_holdout",
    "validate_batch",
]
