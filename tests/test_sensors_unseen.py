"""Unseen sensor perturbations: each grid is searched exhaustively, and the worst case is exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metaat.domains.sensors import unseen


def _model(channels: int = 3, length: int = 40, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * length, classes))


def _data(n: int = 30, channels: int = 3, length: int = 40) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    model = _model(channels, length)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, channels, length, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    y[:3] = (y[:3] + 1) % 3  # three examples misclassified from the start
    return x, y, model


@pytest.mark.parametrize(
    ("family", "make"),
    [
        ("dropout", lambda shape: unseen.dropout_transforms(shape, 10, 7)),
        ("stuck", lambda shape: unseen.stuck_transforms(shape, 10, 7)),
        ("misalign", lambda shape: unseen.misalign_transforms(shape, 3)),
        ("warp", lambda shape: unseen.warp_transforms(0.3, 3)),
    ],
)
def test_worst_case_equals_evaluating_every_transform(family: str, make: object) -> None:
    x, y, model = _data()
    x0 = x.clone()
    transforms = list(make(tuple(x.shape)))  # type: ignore[operator]
    result = unseen.worst_case(model, x, y, transforms)
    with torch.no_grad():
        expected = model(x).argmax(dim=1) == y
        for f in transforms:
            expected &= model(f(x)).argmax(dim=1) == y
    assert torch.equal(result.correct, expected), family
    assert torch.equal(x, x0)
    assert int(result.queries[:3].max()) == 1  # fooled clean: never queried again
    assert int(result.queries.max()) <= 1 + len(transforms)
    assert bool((result.queries[expected] == 1 + len(transforms)).all())
    assert result.accuracy <= 27 / 30  # never above clean accuracy


def test_grids_have_the_documented_size() -> None:
    shape = (2, 6, 100)
    assert unseen.span_starts(100, 25, 5) == list(range(0, 76, 5))
    assert unseen.span_starts(10, 4, 4) == [0, 4, 6]
    assert len(list(unseen.dropout_transforms(shape, 25, 5))) == 6 * 16
    assert len(list(unseen.misalign_transforms(shape, 5))) == 10
    assert len(list(unseen.warp_transforms(0.2, 4))) == 3 * 8


def test_transforms_do_what_they_say() -> None:
    x = torch.arange(2 * 6 * 12, dtype=torch.float32).reshape(2, 6, 12)
    drop = next(iter(unseen.dropout_transforms(tuple(x.shape), 4, 4)))(x)
    assert bool((drop[:, 0, :4] == 0).all()) and torch.equal(drop[:, 0, 4:], x[:, 0, 4:])
    assert torch.equal(drop[:, 1:], x[:, 1:])
    frozen = list(unseen.stuck_transforms(tuple(x.shape), 4, 4))[1](x)
    assert bool((frozen[:, 0, 4:8] == x[:, 0, 4:5]).all())
    shifted = next(iter(unseen.misalign_transforms(tuple(x.shape), 2)))(x)  # shift +1 of channels 3..5
    assert torch.equal(shifted[:, :3], x[:, :3])
    assert torch.equal(shifted[:, 3:, 1:], x[:, 3:, :-1]) and torch.equal(shifted[:, 3:, 0], x[:, 3:, 0])
    ramp = torch.linspace(0, 11, 12).expand(1, 1, 12)
    assert torch.allclose(unseen.warp_signal(ramp, 0.5, 0.0), ramp)
    warped = unseen.warp_signal(ramp, 0.5, 0.2)[0, 0]
    assert float(warped[0]) == 0 and float(warped[-1]) == pytest.approx(11)
    assert bool((warped[1:] >= warped[:-1]).all())
    assert float(unseen.warp_signal(ramp, 0.5, 0.2)[0, 0, 11]) == pytest.approx(11)


def test_suite_runs_on_a_signal_model() -> None:
    x, y, model = _data(8, 6, 100)
    results = unseen.evaluate_suite(model, x, y)
    assert set(results) == set(unseen.SUITE)
    for r in results.values():
        assert r.correct.shape == (8,) and not bool(r.correct[:3].any())


def test_suite_skips_what_does_not_apply() -> None:
    x, y, model = _data(4, 1, 40)
    assert set(unseen.evaluate_suite(model, x, y)) == {"dropout:25", "stuck:25", "warp:0.2"}
    x, y, model = _data(4, 2, 20)
    assert set(unseen.evaluate_suite(model, x, y)) == {"misalign:5", "warp:0.2"}
