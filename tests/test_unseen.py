"""Unseen attacks: spatial grid, common corruptions, universal perturbation and patch, and the
unseen-attack section of an evaluation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

import metaat.data as datasets
import metaat.models as models
from metaat.attacks.base import ATTACKS
from metaat.attacks.corruption import CORRUPTIONS, Corruption, contrast, corrupt, gaussian_blur
from metaat.attacks.patch import (
    Patch,
    Universal,
    apply_patch,
    learn_universal,
    patch_locations,
    project_universal,
)
from metaat.attacks.spatial import Spatial, rotate_translate, transformation_grid
from metaat.eval import UnseenConfig, evaluate, run_unseen
from metaat.threats import ThreatModel, lp_norm, parse_threats

Data = tuple[torch.Tensor, torch.Tensor]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    x, y = datasets.load("synthetic", "train", n=2000, noise=0.5)
    net = models.create("mlp", num_classes=10, in_channels=1, image_size=12, hidden=32)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(3):
        for i in range(0, len(y), 100):
            loss = nn.functional.cross_entropy(net(x[i : i + 100]), y[i : i + 100])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def data() -> Data:
    return datasets.load("synthetic", "test", n=40, noise=0.5)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_new_attacks_are_registered() -> None:
    assert {"spatial", "corruption", "universal", "patch"} <= set(ATTACKS.available())


# --- spatial ------------------------------------------------------------------------------------
def test_rotate_translate_moves_pixels_exactly() -> None:
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(rotate_translate(x, 0, 0, 0), x, atol=1e-6)
    right = rotate_translate(x, 0, 1, 0)
    assert torch.allclose(right[..., :, 1:], x[..., :, :-1], atol=1e-6)
    assert torch.all(right[..., :, 0] == 0)
    down = rotate_translate(x, 0, 0, 2)
    assert torch.allclose(down[..., 2:, :], x[..., :-2, :], atol=1e-6)
    quarter = rotate_translate(x, 90, 0, 0)
    assert any(torch.allclose(quarter, torch.rot90(x, k, dims=(2, 3)), atol=1e-5) for k in (1, -1))


def test_spatial_grid_is_worst_case(model: nn.Module, data: Data) -> None:
    x, y = data
    x0 = x.clone()
    attack = Spatial(rotation_steps=3, translation_steps=3)
    grid = transformation_grid(attack.config)
    assert grid[0] == (0.0, 0.0, 0.0) and len(grid) == 27
    x_adv = attack(model, x, y)
    assert torch.equal(x, x0), "the input is never modified"
    assert x_adv.shape == x.shape and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    worst = accuracy(model, x_adv, y)
    assert worst <= accuracy(model, x, y)
    for degrees, dx, dy in grid:
        assert worst <= accuracy(model, rotate_translate(x, degrees, dx, dy), y) + 1e-9
    same = Spatial(rotation_steps=3, translation_steps=3, batch_size=7)(model, x, y)
    assert torch.equal(same, x_adv), "deterministic and independent of chunking"


def test_spatial_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="rotation_steps and translation_steps must be >= 1"):
        Spatial(rotation_steps=0)
    with pytest.raises(TypeError, match="valid options: .*max_rotation"):
        Spatial(angle=3)


# --- corruptions --------------------------------------------------------------------------------
def test_corruptions_grow_with_severity_and_are_seeded(data: Data) -> None:
    x, _ = data
    for name in CORRUPTIONS:
        change = [float((corrupt(x, name, s, torch.Generator().manual_seed(0)) - x).abs().mean()) for s in range(1, 6)]
        assert change == sorted(change) and change[0] > 0, name
    a = corrupt(x, "gaussian-noise", 3, torch.Generator().manual_seed(1))
    b = corrupt(x, "gaussian-noise", 3, torch.Generator().manual_seed(1))
    c = corrupt(x, "gaussian-noise", 3, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    flat = torch.full((1, 1, 9, 9), 0.3)
    assert torch.allclose(gaussian_blur(flat, 1.0), flat, atol=1e-6)
    assert torch.allclose(contrast(flat, 0.2), flat, atol=1e-6)


def test_worst_corruption_is_no_better_than_each(model: nn.Module, data: Data) -> None:
    x, y = data
    gen = torch.Generator().manual_seed(0)
    worst = accuracy(model, Corruption(corruption="worst", severity=5)(model, x, y, generator=gen), y)
    for name in CORRUPTIONS:
        gen = torch.Generator().manual_seed(0)
        single = Corruption(corruption=name, severity=5)(model, x, y, generator=gen)
        assert worst <= accuracy(model, single, y) + 1e-9


def test_corruption_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="valid corruptions: gaussian-noise, gaussian-blur, contrast, worst"):
        Corruption(corruption="fog")
    with pytest.raises(ValueError, match="severity must be one of 1, 2, 3, 4, 5"):
        Corruption(severity=6)


# --- universal perturbation and patch -----------------------------------------------------------
@pytest.mark.parametrize("threat", ["linf:0.3", "l2:2", "l1:8"])
def test_universal_perturbation_is_shared_and_in_the_ball(model: nn.Module, data: Data, threat: str) -> None:
    x, y = data
    t = ThreatModel.parse(threat)
    delta = learn_universal(model, x, y, t, steps=5)
    assert delta.shape == (1, *x.shape[1:])
    assert float(lp_norm(delta, t.norm)[0]) <= t.eps * (1 + 1e-5)
    x_adv = Universal(threat, steps=5)(model, x, y)
    assert bool((lp_norm(x_adv - x, t.norm) <= t.eps * (1 + 1e-5)).all())
    grey = torch.full((3, *x.shape[1:]), 0.5)
    shifted = Universal(threat, steps=5)(model, grey, torch.tensor([0, 1, 2]))
    assert torch.allclose(shifted[0], shifted[1]) and torch.allclose(shifted[1], shifted[2]), "one δ for all"


def test_universal_perturbation_hurts_a_trained_model(model: nn.Module, data: Data) -> None:
    x, y = data
    x_adv = Universal("linf:0.3", steps=10)(model, x, y)
    assert accuracy(model, x_adv, y) < accuracy(model, x, y)


def test_project_universal_is_exact_for_linf() -> None:
    delta = torch.tensor([[[[-2.0, -0.2, 0.05, 0.7]]]])
    out = project_universal(delta, ThreatModel("linf", 0.3))
    assert torch.allclose(out, torch.tensor([[[[-0.3, -0.2, 0.05, 0.3]]]]))


def test_patch_changes_only_its_square(model: nn.Module, data: Data) -> None:
    x, y = data
    gen = torch.Generator().manual_seed(0)
    x_adv = Patch(patch_size=4, steps=3)(model, x, y, generator=gen)
    changed = (x_adv != x).flatten(1).sum(dim=1)
    assert int(changed.max()) <= 16 and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    again = Patch(patch_size=4, steps=3)(model, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, x_adv)
    where = patch_locations(5, (12, 12), 4, torch.Generator().manual_seed(3))
    assert int(where.min()) >= 0 and int(where.max()) <= 8
    pasted = apply_patch(torch.zeros(5, 1, 12, 12), torch.ones(1, 1, 4, 4), where)
    assert torch.equal(pasted.flatten(1).sum(1), torch.full((5,), 16.0))
    with pytest.raises(ValueError, match="does not fit"):
        patch_locations(1, (12, 12), 13, gen)


# --- the unseen section of an evaluation --------------------------------------------------------
SMALL = UnseenConfig(n=40, sweep_factors=(0.5, 1.0, 4.0), sweep_steps=5, universal_steps=3, severities=(1, 5))


def test_run_unseen_reports_every_part(model: nn.Module, data: Data) -> None:
    x, y = data
    out = run_unseen(model, x, y, parse_threats(["linf:0.1"]), SMALL)
    assert out["n"] == 40
    curves = out["eps_sweep"]["curves"]
    assert set(curves) == {"linf", "l2", "l1"}
    assert [p["eps"] for p in curves["linf"]] == [0.05, 0.1, 0.4]
    assert [p["evaluated"] for p in curves["linf"]] == [False, True, False]
    assert [p["eps"] for p in curves["l2"]] == [0.75, 1.5, 6.0], "unevaluated norms use the default radii"
    for points in curves.values():
        assert points[0]["accuracy"] >= points[-1]["accuracy"]
    assert 0 <= out["spatial"]["accuracy"] <= 1
    assert set(out["corruptions"]["accuracy"]) == set(CORRUPTIONS)
    assert set(out["corruptions"]["accuracy"]["contrast"]) == {"1", "5"}
    assert out["universal"]["fit"].startswith("two-fold")
    assert set(out["universal"]["perturbation"]) == {"linf:0.1"}
    assert out["universal"]["patch"]["size"] == 5
    assert set(out["seconds"]) == {"eps_sweep", "spatial", "corruptions", "universal"}


def test_unseen_inside_evaluate_and_with_a_holdout(model: nn.Module, data: Data) -> None:
    x, y = data
    holdout = datasets.load("synthetic", "train", n=30, noise=0.5)
    cfg = UnseenConfig(
        n=20,
        sweep_factors=(1.0,),
        sweep_steps=3,
        universal_steps=2,
        spatial=False,
        corruptions=("contrast",),
        severities=(3,),
    )
    r = evaluate(model, x, y, ["linf:0.1"], suite="quick", unseen=cfg, checks=False, examples=0, holdout=holdout)
    assert r.unseen is not None and r.unseen["universal"]["fit"] == "held-out set"
    assert "spatial" not in r.unseen
    sweep = r.unseen["eps_sweep"]["curves"]["linf"][0]
    assert sweep["evaluated"] and sweep["eps"] == 0.1


def test_unseen_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="unknown corruption"):
        UnseenConfig(corruptions=("snow",))
    with pytest.raises(ValueError, match="unknown norm"):
        UnseenConfig(sweep_norms=("l3",))
    with pytest.raises(ValueError, match="sweep_suite"):
        UnseenConfig(sweep_suite="standard")
