"""A validation split carved from a training split: its last ``holdout`` examples.

Fashion-MNIST ships train and test splits only. To choose a recipe, an option or a default without
reading the test points, the last ``holdout`` training examples are held out of training
(``TrainConfig.train_holdout``) and serve as validation points; the test points are then read once
per final candidate. The *last* examples are held out so that a training subset keeps its meaning
(the first ``n`` training examples) and a held-out run trains on exactly the first
``total - holdout`` examples, in their order.

>>> holdout_slice(60_000, 5_000, "train")
(0, 55000)
>>> holdout_slice(60_000, 5_000, "val", n=1_000, start=200)
(55200, 1000)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from metaat.data.base import DATASETS

PARTS: tuple[str, ...] = ("train", "val")
"""``train``: the examples a held-out run trains on; ``val``: the held-out ones."""


def holdout_slice(total: int, holdout: int, part: str, n: int | None = None, start: int = 0) -> tuple[int, int]:
    """``(first index, count)`` in a training split of ``total`` examples of the ``n`` examples of
    ``part`` from its index ``start`` on (all of them when ``n`` is None); ``ValueError`` naming the
    bounds otherwise."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; valid parts: {', '.join(PARTS)}")
    for name, value, low in (("holdout", holdout, 0), ("start", start, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    if holdout >= total:
        raise ValueError(f"holdout={holdout} leaves nothing to train on: the training split holds {total} examples")
    if part == "val" and holdout == 0:
        raise ValueError("no validation points: holdout is 0 (hold out the last examples of the training split)")
    first, size = (0, total - holdout) if part == "train" else (total - holdout, holdout)
    what = f"the first {size} training examples" if part == "train" else f"the {size} held-out examples"
    if start >= size:
        raise ValueError(f"start={start} is past the end of {what}")
    count = size - start if n is None else n
    if start + count > size:
        raise ValueError(f"asked for n={n} examples from index {start} of {what} (the last {holdout} are held out)")
    return first + start, count


def load_holdout(
    name: str,
    part: str,
    holdout: int,
    data_dir: str | os.PathLike[str] | None = None,
    n: int | None = None,
    start: int = 0,
    **config: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``part`` (``train`` or ``val``) of dataset ``name``'s training split with its last ``holdout``
    examples held out: ``n`` examples from the part's index ``start`` on, as :func:`metaat.data.load`
    returns them. ``holdout=0`` and ``part="train"`` is exactly ``load(name, "train", data_dir, n, start)``."""
    dataset = DATASETS.create(name, **config)
    if holdout == 0 and part == "train":
        return dataset.load("train", data_dir=data_dir, n=n, start=start)
    folder = Path(data_dir).expanduser() if data_dir is not None else None
    total = len(dataset.arrays("train", folder)[1])
    first, count = holdout_slice(total, holdout, part, n=n, start=start)
    return dataset.load("train", data_dir=data_dir, n=count, start=first)


__all__ = ["PARTS", "holdout_slice", "load_holdout"]
