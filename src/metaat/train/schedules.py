"""Learning-rate schedules as pure functions of training progress.

The learning rate of step ``s`` of ``n`` is ``lr · factor(schedule, (s + 0.5) / n)``: no scheduler
object, nothing to checkpoint — resuming at a step gives the same learning rate by construction.

* ``onecycle`` — linear warm-up from 0 to ``lr`` over the first 40 %, then linear decay to 0 (the
  cyclic schedule of Wong, Rice, Kolter 2020; Smith & Topin 2019);
* ``cosine`` — ``(1 + cos(π t)) / 2`` (Loshchilov & Hutter 2017, without restarts);
* ``piecewise`` — ``lr``, then ``lr / 10`` from 50 % and ``lr / 100`` from 75 % (Madry et al. 2018);
* ``constant``.

>>> lr_factor("piecewise", 0.6)
0.1
>>> lr_factor("onecycle", 0.2)
0.5
"""

from __future__ import annotations

import math

from metaat.train.config import SCHEDULES

ONECYCLE_PEAK = 0.4


def lr_factor(schedule: str, t: float) -> float:
    """Multiplier of the base learning rate at progress ``t`` in [0, 1]."""
    t = min(1.0, max(0.0, t))
    if schedule == "onecycle":
        return t / ONECYCLE_PEAK if t <= ONECYCLE_PEAK else (1.0 - t) / (1.0 - ONECYCLE_PEAK)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "piecewise":
        return 1.0 if t < 0.5 else (0.1 if t < 0.75 else 0.01)
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {schedule!r}; valid schedules: {', '.join(SCHEDULES)}")


def lr_at(schedule: str, base_lr: float, step: int, total_steps: int) -> float:
    """Learning rate of global step ``step`` (0-based) out of ``total_steps``."""
    return base_lr * lr_factor(schedule, (step + 0.5) / max(1, total_steps))
