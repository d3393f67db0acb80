"""Attacks: ``create(name, threat=..., **options)`` then ``x_adv = attack(model, x, y)``.

Every attack honours the contract in :mod:`metaat.attacks.base`. Every module of this package is
imported here, so a new attack registers itself by being a file in this folder.
"""

import importlib
import pkgutil

from metaat.attacks.base import ATTACKS, Attack, AttackConfig, attack_mode, available, create

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["ATTACKS", "Attack", "AttackConfig", "attack_mode", "available", "create"]
