"""Models: a registry of classifiers taking [0, 1] NCHW images and returning logits.

Registered: ``mlp``, ``cnn-small`` (the benchmark CNN), ``lenet``, ``preact-resnet18`` and
``wrn-28-10``. :func:`create` builds one, optionally prepends a :class:`Normalize` layer, and
records the constructor arguments in ``model.metaat_spec`` so that :func:`save_model` /
:func:`load_model` can rebuild it from safetensors weights plus a JSON sidecar.

>>> model = create("cnn-small")
>>> count_parameters(model)
413782
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metaat.models import keras_model, resnet, small, wideresnet  # noqa: F401  (registers the models)
from metaat.models.base import MODELS, Normalize
from metaat.models.checkpoint import CheckpointError, get_spec, load_model, save_model
from metaat.models.modules import count_parameters, model_device, unwrap


def _canonical(name: str) -> str:
    MODELS.get(name)  # raises UnknownNameError listing the valid names
    return name.strip().lower().replace("_", "-")


def _positive(label: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{label} must be a positive integer; got {value!r}")
    return value


def create(
    name: str,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 28,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    box: tuple[float, float] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build model ``name`` for ``in_channels x image_size x image_size`` inputs and ``num_classes``
    (a 1-d model, whose factory sets ``input_rank = 1``, takes ``in_channels x image_size`` signals;
    a text model, ``input_rank = 0``, takes ``image_size`` token ids).

    ``normalize=(mean, std)`` prepends a :class:`Normalize` layer (one value per channel, or one
    for all); the result is then ``nn.Sequential(normalize=..., net=...)``. ``kwargs`` go to the
    model's factory (e.g. ``depth`` / ``widen_factor`` for ``wrn-28-10``). ``box`` records the valid
    input range of a non-image domain (evaluation intersects every threat with it). The constructor
    arguments are stored as ``model.metaat_spec``. A ``name`` ending in ``.keras`` is a Keras model file
    (:mod:`metaat.models.keras_model`; its spec records the architecture, not the path).
    """
    if str(name).endswith(keras_model.KERAS_SUFFIX):
        name, kwargs = keras_model.KERAS_NAME, {**kwargs, "path": str(name)}
    keras = name == keras_model.KERAS_NAME  # not in the registry: it needs a file or a checkpoint's config
    key = name if keras else _canonical(name)
    num_classes = _positive("num_classes", num_classes)
    in_channels = _positive("in_channels", in_channels)
    image_size = _positive("image_size", image_size)
    norm_spec: list[list[float]] | None = None
    if normalize is not None:
        try:
            mean, std = normalize
        except (TypeError, ValueError) as exc:
            raise ValueError(f"normalize must be a (mean, std) pair; got {normalize!r}") from exc
        norm_spec = [[float(m) for m in mean], [float(s) for s in std]]
        if len(norm_spec[0]) not in (1, in_channels):
            raise ValueError(f"normalize needs 1 or {in_channels} value(s) per statistic; got {len(norm_spec[0])}")
    net: nn.Module
    if keras:
        wrapped = keras_model.keras_factory(num_classes, in_channels, image_size, **kwargs)
        net, rank = wrapped, len(wrapped.input_shape) - 1
    else:
        net = MODELS.create(key, num_classes, in_channels, image_size, **kwargs)
        rank = int(getattr(MODELS.get(key), "input_rank", 2))  # 2: images, 1: signals, 0: token ids
    input_shape = [image_size] if rank == 0 else [in_channels, *([image_size] * rank)]
    model: nn.Module = net
    if norm_spec is not None:
        model = nn.Sequential(OrderedDict([("normalize", Normalize(*norm_spec)), ("net", net)]))
    spec = {
        "name": key,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": image_size,
        "input_shape": input_shape,
        "normalize": norm_spec,
        "kwargs": dict(getattr(net, "spec_kwargs", kwargs)),
    }
    if box is not None and tuple(box) != (0.0, 1.0):  # the valid input range, where not pixels
        spec["box"] = [float(box[0]), float(box[1])]
    setattr(model, "metaat_spec", spec)  # noqa: B010  (nn.Module.__setattr__ is typed for tensors)
    return model


def create_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild an (untrained) model from a ``metaat_spec`` dictionary."""
    normalize = spec.get("normalize")
    return create(
        spec["name"],
        num_classes=spec.get("num_classes", 10),
        in_channels=spec.get("in_channels", 1),
        image_size=spec.get("image_size", 28),
        normalize=(normalize[0], normalize[1]) if normalize else None,
        box=(spec["box"][0], spec["box"][1]) if spec.get("box") else None,
        **(spec.get("kwargs") or {}),
    )


def locate_model(path: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """``(model path, run folder or None)`` for a run folder, a checkpoint folder or a weights file.

    A run folder (``runs/NAME``) resolves to its ``final/`` model when training finished, else to
    its latest ``checkpoint/``; the run folder is the one holding ``config.yaml`` or ``metrics.jsonl``.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"no model at {p} (expected a run folder, a checkpoint folder or a .safetensors file)")
    if p.is_dir() and not (p / "model.json").is_file():
        for sub in ("final", "checkpoint"):
            if (p / sub / "model.json").is_file():
                return p / sub, p
        raise FileNotFoundError(
            f"{p} holds no model (expected model.json + model.safetensors, or a final/ or checkpoint/ folder)"
        )
    folder = p if p.is_dir() else p.parent
    run = folder.parent if any((folder.parent / f).is_file() for f in ("config.yaml", "metrics.jsonl")) else None
    return p, run


def resolve_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """Load a model from a run folder, a checkpoint folder or a ``.safetensors`` file (see :func:`locate_model`)."""
    return load_model(locate_model(path)[0], device=device)


def available() -> list[str]:
    """Registered model names."""
    return MODELS.available()


__all__ = [
    "MODELS",
    "CheckpointError",
    "Normalize",
    "available",
    "count_parameters",
    "create",
    "create_from_spec",
    "get_spec",
    "load_model",
    "locate_model",
    "model_device",
    "resolve_model",
    "save_model",
    "unwrap",
]
