"""Shared test settings: one torch thread (tiny models run ~10x slower on two contended threads)."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
