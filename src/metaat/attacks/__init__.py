"""Attacks: ``create(name, threat=..., **options)`` then ``x_adv = attack(model, x, y)``.

Every attack honours the contract in :mod:`metaat.attacks.base`.
"""

from metaat.attacks import autoattack, fgsm, pgd  # noqa: F401  (registration)
from metaat.attacks.base import ATTACKS, Attack, AttackConfig, attack_mode, available, create

__all__ = ["ATTACKS", "Attack", "AttackConfig", "attack_mode", "available", "create"]
