"""Small models for 28x28 / 32x32 images: ``mlp``, ``cnn-small`` and ``lenet``."""

from __future__ import annotations

from typing import Any

from torch import nn

from metaat.models.base import MODELS, flat_features


def _too_small(name: str, image_size: int, minimum: int) -> None:
    if image_size < minimum:
        raise ValueError(f"{name} needs images of at least {minimum}x{minimum}; got {image_size}")


@MODELS.register("mlp", help="flatten + 2 hidden layers of 256 units (ReLU)")
def mlp(num_classes: int, in_channels: int, image_size: int, hidden: int = 256, **kwargs: Any) -> nn.Module:
    """Multi-layer perceptron: flatten, two hidden ReLU layers of ``hidden`` units, linear head.

    269,322 parameters for 1x28x28 input and 10 classes.
    """
    _no_kwargs("mlp", kwargs)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


@MODELS.register("cnn-small", help="the benchmark CNN: 3 conv + 2 FC, 413,782 parameters on 1x28x28")
def cnn_small(num_classes: int, in_channels: int, image_size: int, **kwargs: Any) -> nn.Module:
    """The benchmark CNN::

        Conv(in, 32, 3) - ReLU - Conv(32, 64, 3) - ReLU - MaxPool(2)
        - Conv(64, 128, 3) - ReLU - MaxPool(2) - Flatten - FC(., 100) - ReLU - FC(100, num_classes)

    413,782 parameters for 1x28x28 input and 10 classes (555,158 for 3x32x32); the first FC
    layer adapts to the image size.
    """
    _no_kwargs("cnn-small", kwargs)
    _too_small("cnn-small", image_size, 12)
    features = nn.Sequential(
        nn.Conv2d(in_channels, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    width = flat_features(features, in_channels, image_size)
    return nn.Sequential(
        *features,
        nn.Linear(width, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


@MODELS.register("lenet", help="LeNet-5 with ReLU and max-pooling")
def lenet(num_classes: int, in_channels: int, image_size: int, **kwargs: Any) -> nn.Module:
    """LeNet-5 with ReLU and max-pooling::

        Conv(in, 6, 5, pad 2) - ReLU - MaxPool(2) - Conv(6, 16, 5) - ReLU - MaxPool(2)
        - FC(., 120) - ReLU - FC(120, 84) - ReLU - FC(84, num_classes)

    61,706 parameters for 1x28x28 input; the first FC layer adapts to the image size.
    """
    _no_kwargs("lenet", kwargs)
    _too_small("lenet", image_size, 12)
    features = nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    width = flat_features(features, in_channels, image_size)
    return nn.Sequential(
        *features,
        nn.Linear(width, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def _no_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise TypeError(f"model {name!r} takes no extra options; got {', '.join(sorted(kwargs))}")
