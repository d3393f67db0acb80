"""Third-party additions to metaat's registries: models, attacks, defenses, datasets, losses.

A plugin is an importable Python module that registers names when it is imported::

    # mynets.py
    from torch import nn
    from metaat.models import MODELS

    @MODELS.register("my-net", help="my architecture")
    def my_net(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))

The ``metaat`` command imports, before it reads its arguments,

* every module named in the ``METAAT_PLUGINS`` environment variable (comma-separated), and
* every entry point of the ``metaat.plugins`` group of the installed packages (in a package's
  ``pyproject.toml``: ``[project.entry-points."metaat.plugins"]`` ``mynets = "mynets"``; an entry
  point that names a function is called once),

so ``METAAT_PLUGINS=mynets metaat list models`` shows ``my-net`` and ``train --model my-net``,
``eval`` and ``attack`` take it, under ``torchrun`` too (every process runs the same command). A run
saved with a plugin's model needs the plugin again to be loaded. In Python, import the module (or
call :func:`load_plugins`). Importing a plugin runs its code: name only modules you trust, as with
``pip install``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from types import ModuleType

ENV = "METAAT_PLUGINS"
GROUP = "metaat.plugins"
_called: set[str] = set()  # entry points that named a function: called once per process


class PluginError(RuntimeError):
    """A plugin named by ``METAAT_PLUGINS`` or an entry point could not be loaded."""


def plugin_names(value: str | None = None) -> list[str]:
    """The module names in ``METAAT_PLUGINS`` (or ``value``): comma-separated, blanks ignored."""
    raw = os.environ.get(ENV, "") if value is None else value
    names = [part.strip() for part in raw.split(",")]
    bad = [n for n in names if n and not all(p.isidentifier() for p in n.split("."))]
    if bad:
        raise PluginError(f"{ENV} must name importable modules (e.g. mypkg.models), comma-separated; got {bad}")
    return [n for n in names if n]


def load_plugins(value: str | None = None) -> list[str]:
    """Import every plugin (``METAAT_PLUGINS``, or ``value``, then the ``metaat.plugins`` entry
    points); return what was loaded. A plugin that fails is a :class:`PluginError` naming it."""
    loaded = []
    for name in plugin_names(value):
        try:
            importlib.import_module(name)
        except Exception as exc:  # the plugin's own code may raise anything
            raise PluginError(f"{ENV} names {name!r}, which failed to import: {type(exc).__name__}: {exc}") from exc
        loaded.append(name)
    for ep in importlib.metadata.entry_points(group=GROUP):
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, ModuleType) and ep.value not in _called:
                _called.add(ep.value)
                obj()
        except Exception as exc:
            raise PluginError(
                f"the {GROUP} entry point {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        loaded.append(ep.value)
    return loaded
