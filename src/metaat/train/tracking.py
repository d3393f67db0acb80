"""Optional experiment trackers (``--tracker mlflow|tensorboard``); the run folder is always written.

A tracker receives the flattened config once and the flattened epoch metrics after every epoch.
A tracker whose package is missing is a one-line error naming the extra to install — raised before
training starts.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Protocol

from metaat.train.config import TRACKERS

_PACKAGES = {"mlflow": "mlflow", "tensorboard": "tensorboard"}


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class NoTracker:
    """The default: nothing beyond the run folder."""

    def log_params(self, params: dict[str, Any]) -> None:
        del params

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        del metrics, step

    def close(self) -> None:
        pass


class MlflowTracker:
    """Logs to MLflow (tracking URI from ``MLFLOW_TRACKING_URI``, else MLflow's default)."""

    def __init__(self, run_dir: Path) -> None:
        import mlflow

        self._mlflow = mlflow
        mlflow.start_run(run_name=run_dir.name)

    def log_params(self, params: dict[str, Any]) -> None:
        self._mlflow.log_params({k: str(v) for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._mlflow.log_metrics({k.replace(":", "_"): v for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        self._mlflow.end_run()


class TensorboardTracker:
    """Writes TensorBoard event files to ``<run>/tensorboard``."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log_params(self, params: dict[str, Any]) -> None:
        self._writer.add_text("config", "\n".join(f"{k}: {v}" for k, v in sorted(params.items())))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def check_tracker(name: str) -> None:
    """Raise a one-line error when tracker ``name`` is unknown or its package is not installed."""
    if name not in TRACKERS:
        raise ValueError(f"unknown tracker {name!r}; valid trackers: {', '.join(TRACKERS)}")
    package = _PACKAGES.get(name)
    if package is not None and importlib.util.find_spec(package) is None:
        raise ValueError(
            f"--tracker {name} needs the {package} package, which is not installed: "
            f"pip install 'metaat[{name}]' (or use --tracker none)"
        )


def create_tracker(name: str, run_dir: Path) -> Tracker:
    """The tracker called ``name`` for ``run_dir``."""
    check_tracker(name)
    if name == "mlflow":
        return MlflowTracker(run_dir)
    if name == "tensorboard":
        return TensorboardTracker(run_dir)
    return NoTracker()


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested metrics as ``a/b/c -> number`` (non-numbers dropped)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out
