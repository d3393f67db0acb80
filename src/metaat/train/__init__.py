"""The training engine: one loop for every defense (:mod:`~metaat.train.loop`), its entry points
(:mod:`~metaat.train.entry`), the per-epoch monitor, checkpoint and exact resume, the cost meter,
schedules, trackers and DDP glue.

>>> from metaat.train import TrainConfig, train           # doctest: +SKIP
>>> result = train(TrainConfig(defense="pgd", epochs=10), "runs/pgd-linf")  # doctest: +SKIP
"""

from metaat.train.config import DEFAULT_THREATS, TrainConfig
from metaat.train.cost import CostMeter
from metaat.train.entry import fit, resume_run, train
from metaat.train.monitor import evaluate
from metaat.train.outcome import TrainingError, TrainResult

__all__ = [
    "DEFAULT_THREATS",
    "CostMeter",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "evaluate",
    "fit",
    "resume_run",
    "train",
]
