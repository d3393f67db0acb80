"""A small, deterministic generated dataset for unit tests and smoke runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metaat.data.base import DATASETS, Dataset, DatasetInfo

_SPLIT_STREAM = {"train": 1, "test": 2}


@DATASETS.register("synthetic", help="generated class patterns + noise (default 10 classes, 1x12x12)")
class Synthetic(Dataset):
    """Class-dependent blocky patterns plus Gaussian noise, clipped to [0, 1].

    Each class has a fixed prototype (a random 4x4 grid of intensities upsampled to the image
    size, per channel); an example is ``clip(prototype + noise, 0, 1)``. Prototypes depend only on
    ``seed``; train and test draw their noise and labels from different streams, so they are
    different samples of the same distribution. A small model learns it to > 90 % in seconds.
    The whole split is generated, then its first ``n`` examples are taken, so a smaller ``n``
    is always a prefix of a larger one.
    """

    def __init__(
        self,
        image_size: int = 12,
        channels: int = 1,
        num_classes: int = 10,
        seed: int = 0,
        noise: float = 0.25,
        train_size: int = 4000,
        test_size: int = 1000,
    ) -> None:
        for label, value in (
            ("image_size", image_size),
            ("channels", channels),
            ("num_classes", num_classes),
            ("train_size", train_size),
            ("test_size", test_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{label} must be a positive integer; got {value!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2; got {num_classes}")
        if noise < 0:
            raise ValueError(f"noise must be >= 0; got {noise}")
        self.seed = int(seed)
        self.noise = float(noise)
        self.sizes = {"train": train_size, "test": test_size}
        self.info = DatasetInfo(
            name="synthetic",
            num_classes=num_classes,
            in_channels=channels,
            image_size=image_size,
            class_names=tuple(f"class-{k}" for k in range(num_classes)),
        )

    def prototypes(self) -> np.ndarray:
        """The class prototypes, float32 of shape ``(num_classes, C, H, W)`` in [0, 1]."""
        info = self.info
        rng = np.random.default_rng([self.seed, 0])
        grid = rng.random((info.num_classes, info.in_channels, 4, 4))
        idx = np.arange(info.image_size) * 4 // info.image_size
        return grid[:, :, idx][:, :, :, idx].astype(np.float32)

    def arrays(self, split: str, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
        info, size = self.info, self.sizes[split]
        rng = np.random.default_rng([self.seed, _SPLIT_STREAM[split]])
        labels = rng.permutation(np.arange(size) % info.num_classes)
        shape = (size, info.in_channels, info.image_size, info.image_size)
        noise = rng.normal(0.0, self.noise, size=shape).astype(np.float32)
        x = np.clip(self.prototypes()[labels] + noise, 0.0, 1.0)
        return x, labels.astype(np.int64)


__all__ = ["Synthetic"]
