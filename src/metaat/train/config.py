"""The typed, frozen configuration of one training run and its YAML form.

Precedence: dataclass defaults < ``--config`` YAML file < command-line overrides. The fully
resolved config (threat radii filled in) is written to ``runs/<name>/config.yaml`` and into every
checkpoint.

>>> cfg = TrainConfig(defense="pgd", threats=("linf",), epochs=2)
>>> cfg.threats
('linf:0.1',)
>>> TrainConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from metaat.threats import DEFAULT_THREATS, ThreatModel, parse_threats, resolve_threat

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
SCHEDULES: tuple[str, ...] = ("onecycle", "cosine", "piecewise", "constant")
TRACKERS: tuple[str, ...] = ("none", "mlflow", "tensorboard")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (see ``metaat train --help`` for the flags).

    ``options`` are the defense's own options (e.g. ``{"steps": 10}`` for ``pgd``). ``clean_ratio``
    is the share of each batch trained on clean inputs: the loss is
    ``r · CE(clean part) + (1 − r) · defense loss(rest)``. ``eval_n`` test points (the first ones,
    fixed) are evaluated after each epoch — clean accuracy and PGD-``eval_steps`` accuracy per
    training threat. ``fo_overfit_guard`` (None: on for single-step defenses such as ``fast``) stops
    and rolls back when that PGD accuracy drops by more than ``fo_overfit_drop`` below its best.
    ``train_holdout`` holds the last that many training examples out of training (0: none): they are
    validation points (:func:`metaat.data.load_holdout`), and the per-epoch monitor reads them
    instead of test points when the dataset has no validation split of its own.
    ``checkpoint_every`` saves a mid-epoch checkpoint every that many steps (0: only at epoch ends);
    ``log_every`` writes a step line to metrics.jsonl every that many steps (0: epoch lines only).
    """

    data: str = "fashion-mnist"
    data_dir: str | None = None
    model: str = "cnn-small"
    defense: str = "standard"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    threats: tuple[str, ...] = ("linf:0.1",)
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "onecycle"
    grad_clip: float = 0.0
    clean_ratio: float = 0.0
    train_subset: int | None = None
    train_holdout: int = 0
    eval_n: int = 500
    eval_steps: int = 20
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    tracker: str = "none"
    fo_overfit_guard: bool | None = None
    fo_overfit_drop: float = 0.2
    checkpoint_every: int = 0
    log_every: int = 0
    deterministic: bool = True

    def __post_init__(self) -> None:
        threats = (self.threats,) if isinstance(self.threats, str | ThreatModel) else tuple(self.threats)
        resolved = tuple(resolve_threat(t) for t in threats)
        parse_threats(list(resolved))  # at least one, no duplicates
        object.__setattr__(self, "threats", resolved)
        if self.options is not None and not isinstance(self.options, dict):
            raise ValueError(f"options must be a mapping of defense options (key: value); got {self.options!r}")
        object.__setattr__(self, "options", dict(self.options or {}))
        object.__setattr__(self, "data_dir", None if self.data_dir in (None, "") else str(self.data_dir))
        for name in ("data", "model", "defense", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("tracker", self.tracker, TRACKERS)
        _integer("epochs", self.epochs, 1)
        _integer("batch_size", self.batch_size, 1)
        _integer("eval_n", self.eval_n, 0)
        _integer("eval_steps", self.eval_steps, 1)
        _integer("seed", self.seed, 0)
        _integer("checkpoint_every", self.checkpoint_every, 0)
        _integer("log_every", self.log_every, 0)
        _integer("train_holdout", self.train_holdout, 0)
        if self.train_subset is not None:
            _integer("train_subset", self.train_subset, 1)
        if self.threads is not None:
            _integer("threads", self.threads, 1)
        _number("lr", self.lr, low=0.0, low_open=True)
        _number("momentum", self.momentum, low=0.0, high=1.0)
        _number("weight_decay", self.weight_decay, low=0.0)
        _number("grad_clip", self.grad_clip, low=0.0)
        _number("clean_ratio", self.clean_ratio, low=0.0, high=1.0)
        _number("fo_overfit_drop", self.fo_overfit_drop, low=0.0, high=1.0, low_open=True)
        for name in ("lr", "momentum", "weight_decay", "grad_clip", "clean_ratio", "fo_overfit_drop"):
            object.__setattr__(self, name, float(getattr(self, name)))

    # -- conversions ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able values (threats as a list)."""
        out = dataclasses.asdict(self)
        out["threats"] = list(self.threats)
        out["options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()}
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], **overrides: Any) -> TrainConfig:
        """Build from a mapping (unknown keys are an error listing the valid ones)."""
        merged = {**values, **overrides}
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(merged) - set(valid))
        if unknown:
            raise ValueError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(k, v, hints[k]) for k, v in merged.items()})

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **overrides: Any) -> TrainConfig:
        """Read a YAML file (a mapping of config keys), then apply ``overrides``."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"no config file at {p}")
        try:
            values = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as err:
            raise ValueError(f"{p}: not a text file ({err.reason} at byte {err.start})") from err
        except yaml.YAMLError as err:
            first = " ".join(str(err).split())  # PyYAML's message spans several lines
            raise ValueError(f"{p}: not valid YAML ({first})") from err
        if not isinstance(values, dict):
            raise ValueError(f"{p}: a config file must be a mapping of keys to values")
        try:
            return cls.from_dict(values, **overrides)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{p}: {err}") from err

    def to_yaml(self, path: str | os.PathLike[str] | None = None) -> str:
        """The YAML text of the resolved config; written to ``path`` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated like ``from_dict``)."""
        return TrainConfig.from_dict(self.to_dict(), **changes)


def _choice(name: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid {name}s: {', '.join(valid)}")


def _integer(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _number(
    name: str, value: object, *, low: float | None = None, high: float | None = None, low_open: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and value > high
    if bad_low or bad_high:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"<= {high:g}"
        raise ValueError(f"{name} must be {' and '.join(s for s in (lo, hi) if s)}, got {value!r}")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Gentle YAML/CLI coercions: ints where floats are expected, a single string for a tuple."""
    args = typing.get_args(hint)
    is_optional = type(None) in args or (isinstance(hint, types.UnionType) and type(None) in args)
    if value is None and is_optional:
        return None
    if hint is float or float in args:
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                return value
    if name == "threats" and isinstance(value, str):
        return (value,)
    if name == "threats" and isinstance(value, list):
        return tuple(value)
    return value


__all__ = ["DEFAULT_THREATS", "OPTIMIZERS", "SCHEDULES", "TRACKERS", "TrainConfig", "resolve_threat"]
