"""Type checks for the options of attacks and defenses, read off their config dataclasses.

Options arrive from Python calls and from the command line's ``-o key=value`` (parsed as YAML), so
``steps=1.5``, ``step_size=nan``, ``random_start=maybe`` or ``loss=[ce]`` can reach a config. Each is
refused here with a one-line error naming the option and the type it takes, before any work is
done. Floats must be finite: a NaN or infinite step size or loss weight would train or attack with
NaN silently. Values are checked, never converted, so a saved config reads back unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from collections.abc import Mapping
from typing import Any


def _describe_mismatch(value: Any, hint: Any) -> str | None:
    """What ``value`` should have been for annotation ``hint``; None when it fits (or the hint is unchecked)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        problems = [_describe_mismatch(value, a) for a in args if a is not type(None)]
        if any(p is None for p in problems):
            return None
        return " or ".join(p for p in problems if p) + (" (or null)" if type(None) in args else "")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            return "a list"
        if len(args) == 2 and args[1] is Ellipsis:
            for item in value:
                inner = _describe_mismatch(item, args[0])
                if inner is not None:
                    return f"a list of {inner.removeprefix('a ').removeprefix('an ')}s"
        return None
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "a finite number"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    return None  # threat models, dicts, callables: their own __post_init__ checks them


def _field_hints(config_class: type) -> dict[str, Any]:
    """Each dataclass field's resolved annotation; a field whose annotation cannot be resolved is left out."""
    try:
        return typing.get_type_hints(config_class)
    except Exception:  # an annotation naming a type only imported for type checking
        module = sys.modules.get(config_class.__module__)
        namespace = dict(vars(module)) if module else {}
        hints: dict[str, Any] = {}
        for f in dataclasses.fields(config_class):
            try:
                hints[f.name] = eval(f.type, namespace) if isinstance(f.type, str) else f.type  # noqa: S307
            except Exception:
                continue
        return hints


def check_options(owner: str, config_class: type, options: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` when an option's value does not fit its field's annotation."""
    hints = _field_hints(config_class)
    for name, value in options.items():
        hint = hints.get(name)
        if hint is None:
            continue
        wanted = _describe_mismatch(value, hint)
        if wanted is not None:
            raise ValueError(f"{owner}: option {name} must be {wanted}; got {value!r}")


__all__ = ["check_options"]
