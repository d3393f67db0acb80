"""The sensor domain's part of every evaluation of ``(B, C, T)`` inputs: its unseen families
(dropout, stuck-at, accelerometer–gyroscope misalignment, time warp — each searched exhaustively,
see :mod:`metaat.domains.sensors.unseen`) join the evaluation's unseen section."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metaat.domains.sensors.unseen import evaluate_suite
from metaat.eval.unseen import register_unseen

LABELS: dict[str, str] = {
    "dropout:25": "channel dropout, 25 samples (every channel and start)",
    "stuck:25": "channel stuck-at, 25 samples (every channel and start)",
    "misalign:5": "accelerometer-gyroscope misalignment, up to ±5 samples",
    "warp:0.2": "one-knot time warp, strength up to 0.2",
}


def sensor_unseen(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean: torch.Tensor, seed: int, chunk: int
) -> dict[str, dict[str, Any]]:
    """Exact worst-case accuracy per family, counted on the clean-correct points (as every unseen
    number is), with the mean number of model queries per point."""
    keep = clean.to(x.device)
    out: dict[str, dict[str, Any]] = {}
    for name, result in evaluate_suite(model, x, y).items():  # the families that apply to x's shape
        correct = result.correct.to(keep.device) & keep
        out[name] = {
            "label": LABELS.get(name, name),
            "accuracy": float(correct.float().mean()) if correct.numel() else float("nan"),
            "queries": round(float(result.queries.float().mean()), 1) if result.queries.numel() else 0,
        }
    return out


register_unseen(1, "sensors", sensor_unseen)
