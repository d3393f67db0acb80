"""Keras 3 models as metaat models: a Keras model on the PyTorch backend, wrapped as an ``nn.Module``.

Keras 3 (Chollet et al., https://keras.io/keras_3/) runs on PyTorch when ``KERAS_BACKEND=torch``:
its variables are then ``torch.nn.Parameter`` objects and its layers torch operations, so gradients
flow from the logits to the input and to the weights like in any PyTorch model. :class:`KerasModule`
closes the remaining gaps between Keras and metaat's contracts:

- **train/eval mode**: Keras ignores ``nn.Module.train()``; the wrapper passes ``training=self.training``
  on every call, so BatchNormalization uses batch statistics (and updates its moving averages) in
  training and the moving averages under ``model.eval()`` (every attack and evaluation).
- **parameters**: every Keras variable is registered once under its Keras path without the
  model's name (``conv2d/kernel``), so ``parameters()``, ``state_dict()``, optimizers and safetensors
  checkpoints see each weight once. Non-trainable variables (BatchNorm moving statistics, a Dropout
  seed) are parameters with ``requires_grad=False``: optimizers skip them (their gradient stays None).
- **look-ahead defenses**: under ``torch.func.functional_call`` the wrapper points the Keras variables
  at the substituted tensors for the call, so a look-ahead sees ``θ'``.
- **layout**: metaat's inputs are channels first (images ``(B, C, H, W)``, signals ``(B, C, T)``);
  a channels-last Keras model (Keras's default) gets ``(B, H, W, C)`` / ``(B, T, C)``. Token ids
  ``(B, T)`` pass unchanged.
- **dtype**: Keras casts inputs to each layer's compute dtype (float32 by default).

The checkpoint spec records the Keras model's JSON config (not the file's path), so a trained run
reloads from its ``model.safetensors`` + ``model.json`` alone.

>>> import keras  # doctest: +SKIP
>>> net = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])  # doctest: +SKIP
>>> model = wrap(net)  # doctest: +SKIP
>>> model(torch.rand(2, 1, 28, 28)).shape  # doctest: +SKIP
torch.Size([2, 10])
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

KERAS_SUFFIX = ".keras"
KERAS_NAME = "keras"
"""The spec name of a Keras model (``metaat.models.create`` handles it; it is not in the registry,
since it needs a file or a checkpoint's config)."""
EXTRA_HINT = "pip install 'metaat[keras]'"


class KerasError(ValueError):
    """Keras is missing, runs on another backend, or a Keras model cannot be used as a metaat model."""


def import_keras() -> Any:
    """The ``keras`` module on the PyTorch backend (``KERAS_BACKEND=torch`` is set before the first
    import); :class:`KerasError` when keras is not installed or was imported with another backend."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    try:
        import keras
    except ImportError as exc:
        raise KerasError(f"Keras models need Keras 3 ({EXTRA_HINT}): {exc}") from None
    backend = keras.backend.backend()
    if backend != "torch":
        raise KerasError(
            f"keras was imported with the {backend} backend; metaat runs Keras models on PyTorch: "
            "set KERAS_BACKEND=torch before importing keras (or import metaat's Keras support first)"
        )
    return keras


def _channels_last(net: Any) -> bool:
    """Whether ``net`` reads its features last: the first layer that states a ``data_format`` decides,
    else Keras's global ``image_data_format``."""
    for layer in getattr(net, "_flatten_layers", lambda: [])():
        fmt = getattr(layer, "data_format", None)
        if fmt in ("channels_last", "channels_first"):
            return bool(fmt == "channels_last")
    return bool(import_keras().config.image_data_format() == "channels_last")


def _shapes(net: Any, channels_last: bool) -> tuple[list[int], int]:
    """``(metaat input shape without the batch, number of classes)`` of a built Keras model."""
    try:
        shape = [int(d) for d in tuple(net.inputs[0].shape)[1:]]
        classes = int(tuple(net.outputs[0].shape)[-1])
    except (AttributeError, IndexError, TypeError, ValueError):
        raise KerasError(
            "the Keras model has no fixed input and output shape; build it on keras.Input((...)) with every size given"
        ) from None
    if len(shape) > 1 and channels_last:
        shape = [shape[-1], *shape[:-1]]  # metaat's (C, H, W) / (C, T)
    return shape, classes


class KerasModule(nn.Module):
    """A Keras 3 model (PyTorch backend) as an ``nn.Module`` taking metaat's channels-first inputs and
    returning logits ``(B, num_classes)``. Build it with :func:`wrap` or :func:`load_keras`."""

    keras_model: Any

    def __init__(self, net: Any, channels_last: bool | None = None) -> None:
        super().__init__()
        keras = import_keras()
        if not isinstance(net, keras.Model):
            raise KerasError(f"expected a keras.Model, got {type(net).__name__}")
        object.__setattr__(self, "keras_model", net)  # not a submodule: its own state_dict repeats every weight
        self.channels_last = _channels_last(net) if channels_last is None else bool(channels_last)
        self.input_shape, self.num_classes = _shapes(net, self.channels_last)
        self._names: list[tuple[str, Any]] = []
        seeds = 0
        for var in net.variables:
            # A variable's Keras path starts with the model's name only when the model was built in this
            # session, and a Dropout's seed generator is named by a per-process counter: neither survives
            # a reload, so the names drop the first and number the second.
            name = str(var.path).removeprefix(f"{net.name}/")
            if name.startswith("seed_generator"):
                name, seeds = f"seed_generator_{seeds}/state", seeds + 1
            name = name.replace(".", "_")
            value = var.value
            if not isinstance(value, nn.Parameter):
                raise KerasError(f"Keras variable {var.path} is not a torch Parameter; is KERAS_BACKEND=torch?")
            if name in self._parameters:
                raise KerasError(f"two Keras variables share the path {var.path}; give the layers distinct names")
            self.register_parameter(name, value)
            self._names.append((name, var))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x`` (channels first, or ``(B, T)`` token ids)."""
        if self.channels_last and x.dim() >= 3:
            x = x.movedim(1, -1)
        swapped = []
        for name, var in self._names:  # torch.func.functional_call substitutes the wrapper's attributes
            current = getattr(self, name)
            if current is not var._value:
                swapped.append((var, var._value))
                var._value = current
        try:
            out = self.keras_model(x, training=self.training)
        finally:
            for var, value in swapped:
                var._value = value
        return out

    def config_json(self) -> str:
        """The Keras model's architecture as JSON (what a checkpoint records to rebuild it)."""
        try:
            return str(self.keras_model.to_json())
        except Exception as exc:  # noqa: BLE001 - Keras raises NotImplementedError / TypeError / ValueError
            raise KerasError(
                f"the Keras model cannot describe its architecture ({type(exc).__name__}: {exc}); "
                "a subclassed model needs get_config() and @keras.saving.register_keras_serializable"
            ) from None

    def extra_repr(self) -> str:
        layout = "channels_last" if self.channels_last else "channels_first"
        return f"{self.keras_model.name}, input {self.input_shape}, {self.num_classes} classes, {layout}"


def _spec(module: KerasModule) -> dict[str, Any]:
    shape = module.input_shape
    if len(shape) == 3 and shape[1] != shape[2]:
        raise KerasError(f"metaat's images are square; the Keras model takes {shape[1]}x{shape[2]} images")
    return {
        "name": KERAS_NAME,
        "num_classes": module.num_classes,
        "in_channels": 1 if len(shape) == 1 else shape[0],
        "image_size": shape[-1] if len(shape) < 3 else shape[1],
        "input_shape": list(shape),
        "normalize": None,
        "kwargs": {"config": module.config_json(), "channels_last": module.channels_last},
    }


def wrap(net: Any, channels_last: bool | None = None) -> KerasModule:
    """``net`` (a built Keras model) as a metaat model, with the spec a checkpoint needs to rebuild it."""
    module = KerasModule(net, channels_last)
    setattr(module, "metaat_spec", _spec(module))  # noqa: B010
    return module


def load_keras(path: str | os.PathLike[str]) -> KerasModule:
    """The Keras model saved at ``path`` (a ``.keras`` file, weights included) as a metaat model."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"no Keras model at {p}")
    keras = import_keras()
    try:
        net = keras.saving.load_model(str(p), compile=False)
    except Exception as exc:  # noqa: BLE001 - zip, JSON, h5 and deserialisation errors all mean "unusable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KerasError(f"{p}: not a readable Keras model ({first})") from None
    return wrap(net)


def keras_factory(
    num_classes: int,
    in_channels: int = 1,
    image_size: int = 28,
    *,
    path: str | None = None,
    config: str | None = None,
    channels_last: bool | None = None,
    **ignored: Any,
) -> KerasModule:
    """A Keras model from a ``.keras`` file (``path``, with its weights) or from a checkpoint's JSON
    ``config`` (fresh weights, to be overwritten by the checkpoint's). ``ValueError`` when it does not
    fit ``in_channels`` x ``image_size`` inputs and ``num_classes`` classes."""
    if path is not None:
        module = load_keras(path)
    elif config is not None:
        keras = import_keras()
        try:
            net = keras.models.model_from_json(config)
        except Exception as exc:  # noqa: BLE001
            raise KerasError(f"cannot rebuild the Keras model from its config: {exc}") from None
        module = wrap(net, channels_last)
    else:
        raise KerasError("the keras model needs path=<file.keras>: give --model path/to/model.keras")
    spec = _spec(module)
    got = (spec["in_channels"], spec["image_size"], spec["num_classes"])
    if got != (in_channels, image_size, num_classes):
        raise KerasError(
            f"the Keras model takes input {module.input_shape} (channels first) with {got[2]} classes, but the data "
            f"has {in_channels} channel(s) of size {image_size} and {num_classes} classes"
        )
    module.spec_kwargs = spec["kwargs"]  # what create() records: the architecture, not the file's path
    return module


__all__ = [
    "KERAS_NAME",
    "KERAS_SUFFIX",
    "KerasError",
    "KerasModule",
    "import_keras",
    "keras_factory",
    "load_keras",
    "wrap",
]
