"""metaat: meta adversarial training, the attacks, and an evaluation you can trust.

>>> import metaat
>>> metaat.ThreatModel.parse("linf:0.1")
ThreatModel(norm='linf', eps=0.1)

Top-level shortcuts (imported lazily): ``metaat.evaluate``, ``metaat.TrainConfig``, ``metaat.load_model``,
``metaat.attacks``, ``metaat.data``, ``metaat.models``, ``metaat.defenses``, ``metaat.meta``, ``metaat.train``.
"""

from __future__ import annotations

import importlib
from typing import Any

from metaat._version import __version__
from metaat.threats import ThreatModel

_LAZY = {
    "evaluate": ("metaat.eval", "evaluate"),
    "TrainConfig": ("metaat.train", "TrainConfig"),
    "load_model": ("metaat.models", "resolve_model"),
}
_SUBMODULES = ("attacks", "data", "models", "defenses", "meta", "eval", "train", "losses", "threats", "runtime")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _SUBMODULES:
        return importlib.import_module(f"metaat.{name}")
    raise AttributeError(f"module 'metaat' has no attribute {name!r}")


__all__ = ["ThreatModel", "__version__", *_LAZY, *_SUBMODULES]
