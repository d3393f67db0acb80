"""benchmarks/crosscheck.py: its own PGD stays in the threat and attacks; its comparison counts."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F

Loader = Callable[[str], ModuleType]  # the load_benchmark fixture (conftest.py)


def test_plain_pgd_stays_in_the_ball_and_the_box_and_raises_the_loss(load_benchmark: Loader) -> None:
    cc = load_benchmark("crosscheck")
    torch.manual_seed(0)
    model = cc.plain_cnn().eval()
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    x_adv = cc.plain_pgd_linf(model, x, y, eps=0.1, steps=7)
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    with torch.no_grad():
        assert float(F.cross_entropy(model(x_adv), y)) > float(F.cross_entropy(model(x), y))


def test_compare_counts_the_points_each_side_alone_calls_robust(load_benchmark: Loader) -> None:
    cc = load_benchmark("crosscheck")
    out = cc.compare([True, True, False, False], [True, False, True, True])
    assert out["direct"] == 0.5 and out["metaat"] == 0.75
    assert (out["only_direct_robust"], out["only_metaat_robust"]) == (1, 2)
    with pytest.raises(ValueError):
        cc.compare([True], [True, False])  # the two must score the same points
