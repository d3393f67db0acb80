"""What a training run returns, and the error that stops one."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or gradient); the last good checkpoint is intact."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """The outcome of :func:`~metaat.train.fit` / :func:`~metaat.train.train`.

    ``status``: ``completed``, ``interrupted`` (signal; resume it) or ``stopped`` (the
    catastrophic-overfitting guard rolled back and ended the run). ``metrics`` is the last epoch's
    metrics line; ``final_model`` the ``final/`` folder (``load_model`` reads it), None when
    interrupted.
    """

    run_dir: Path
    status: str
    epochs_completed: int
    global_step: int
    metrics: dict[str, Any]
    cost: dict[str, Any]
    final_model: Path | None
    message: str = ""
