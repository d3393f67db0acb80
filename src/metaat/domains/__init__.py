"""The built-in domains beyond images: ``sensors`` (motion-sensor signals) and ``text``.

A domain is a package that registers its datasets, models, threat kinds and attacks into the core
registries when imported; the core never imports a domain by name in code (the registries call
:func:`metaat.registry.load_domains` before they report a name as unknown). Importing this package
imports every built-in domain listed in :data:`BUILTIN`.
"""

from __future__ import annotations

import importlib

BUILTIN: tuple[str, ...] = ("sensors", "text")
"""The built-in domain packages, imported in this order."""

for _name in BUILTIN:
    importlib.import_module(f"metaat.domains.{_name}")
