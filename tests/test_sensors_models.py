"""1-d models: shapes for any length, gradients reach every parameter, and FCN learns the watch data."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

import metaat.domains.sensors.models as sensor_models
from metaat.data.base import DATASETS, DataError
from metaat.domains.sensors.data import find_file
from metaat.domains.sensors.fetch import WATCH_NPZ
from metaat.models import create
from metaat.models.base import MODELS

SMALL: dict[str, dict[str, Any]] = {
    "fcn": {"widths": (8, 16, 8)},
    "resnet1d": {"widths": (8, 16, 16)},
    "inception-time": {"filters": 4, "depth": 3},
}


@pytest.mark.parametrize("name", ["fcn", "resnet1d", "inception-time"])
@pytest.mark.parametrize("length", [29, 100])
def test_models_map_signals_to_logits_and_train_every_parameter(name: str, length: int) -> None:
    assert MODELS.get(name).input_rank == 1  # type: ignore[attr-defined]
    torch.manual_seed(0)
    model = create(name, num_classes=5, in_channels=3, image_size=length, **SMALL[name])
    assert getattr(model, "metaat_spec")["input_shape"] == [3, length]  # noqa: B009
    x = torch.randn(4, 3, length)
    logits = model(x)
    assert logits.shape == (4, 5)
    logits.logsumexp(dim=1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing


def test_default_widths_are_the_papers() -> None:
    fcn = sensor_models.fcn(7, 6, 100)
    convs = [m for m in fcn.modules() if isinstance(m, torch.nn.Conv1d)]
    assert [(c.out_channels, c.kernel_size[0]) for c in convs] == [(128, 8), (256, 5), (128, 3)]
    with pytest.raises(ValueError, match="T >= 2"):
        sensor_models.fcn(7, 6, 1)


def _has_watch() -> bool:
    try:
        find_file(WATCH_NPZ, None)
    except (FileNotFoundError, DataError):
        return False
    return True


@pytest.mark.skipif(not _has_watch(), reason="the watch data is not fetched (run `make data`)")
def test_fcn_learns_the_watch_data_quickly() -> None:
    ds = DATASETS.create("watch")
    x, y = ds.load("train")
    xv, yv = ds.load("val")
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = create("fcn", num_classes=7, in_channels=6, image_size=100, widths=(32, 64, 32))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = time.perf_counter()
    for _ in range(2):
        model.train()
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 64):
            idx = perm[i : i + 64]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(xv).argmax(dim=1) == yv).float().mean())
    assert time.perf_counter() - start < 60
    assert acc > 3 / 7, f"validation accuracy {acc:.3f} after 2 epochs is not clearly above chance (1/7)"
