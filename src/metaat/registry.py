"""A tiny name -> factory registry (the timm pattern: ``register`` / ``create`` / ``available``).

Every pluggable family in metaat (datasets, models, attacks, defenses, meta-learners) is a
``Registry``. The CLI is generated from them, and an unknown name is always an error that lists
the valid ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

DOMAINS_PACKAGE = "metaat.domains"
"""Package whose import registers the built-in domains (sensors, text) into every registry."""
LATE_PACKAGES: tuple[str, ...] = ("metaat.meta", DOMAINS_PACKAGE)
"""Packages above the registries' owners that register names into them (the ``learned`` attack lives
in ``metaat.meta``, the domains' names in ``metaat.domains``): imported on the first miss."""
_domains_state = {"loaded": False}


def load_domains() -> None:
    """Import :data:`LATE_PACKAGES` once, so that the names they register (the built-in domains'
    datasets, models, threats and attacks; the learned attack) are known; a registry calls this
    before it reports a name as unknown. Imported by name, because those packages sit above the
    registries' owners and register themselves into them."""
    if _domains_state["loaded"]:
        return
    _domains_state["loaded"] = True
    for package in LATE_PACKAGES:
        try:
            importlib.import_module(package)
        except ModuleNotFoundError as exc:
            if exc.name != package:
                raise


class UnknownNameError(KeyError, ValueError):
    """Raised for a name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Maps names to factories of ``T``.

    >>> models = Registry[object]("model")
    >>> @models.register("identity")
    ... def _identity() -> object:
    ...     return object()
    >>> models.available()
    ['identity']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.plural = kind + ("es" if kind.endswith("s") else "s")
        self._factories: dict[str, Callable[..., T]] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``factory`` under ``name`` (lower case, ``-`` separated)."""

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            doc = help or (factory.__doc__ or "").strip().splitlines()
            self._help[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered under ``name``; unknown names list the valid ones."""
        key = name.strip().lower().replace("_", "-")
        if key not in self._factories:
            load_domains()
        if key not in self._factories:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid {self.plural}: {', '.join(self.available())}")
        return self._factories[key]

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        """Build the object registered under ``name``."""
        return self.get(name)(*args, **kwargs)

    def available(self) -> list[str]:
        """Sorted registered names (the built-in domains' included)."""
        load_domains()
        return sorted(self._factories)

    def describe(self, name: str) -> str:
        """One-line description of a registered name."""
        self.get(name)
        return self._help[name.strip().lower().replace("_", "-")]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.strip().lower().replace("_", "-")
        if key not in self._factories:
            load_domains()
        return key in self._factories

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.available())

    def __len__(self) -> int:
        load_domains()
        return len(self._factories)
