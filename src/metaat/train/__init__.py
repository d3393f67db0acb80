"""The training engine: one loop for every defense, checkpoints, schedules, cost meter, DDP glue.

>>> from metaat.train import TrainConfig, train           # doctest: +SKIP
>>> result = train(TrainConfig(defense="pgd", epochs=10), "runs/pgd-linf")  # doctest: +SKIP
"""

from metaat.train.config import DEFAULT_THREATS, TrainConfig
from metaat.train.cost import CostMeter
from metaat.train.loop import TrainingError, TrainResult, evaluate, fit, resume_run, train

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
