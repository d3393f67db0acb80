"""Defenses (training objectives): ``create(name, threats, **options)`` then
``loss, metrics = defense(model, x, y, ctx)``.

Every defense honours the contract in :mod:`metaat.defenses.base`. Every module of this package
is imported here, so a new defense registers itself by being a file in this folder.
"""

import importlib
import pkgutil

from metaat.defenses.base import (
    DEFENSES,
    Defense,
    DefenseConfig,
    TrainContext,
    available,
    create,
    pgd_attack,
)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["DEFENSES", "Defense", "DefenseConfig", "TrainContext", "available", "create", "pgd_attack"]
