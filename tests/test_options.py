"""Option types, and inputs a model cannot take: one-line errors before any work, never NaN results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import metaat.attacks as attacks
import metaat.defenses as defenses
import metaat.models as models
from metaat.attacks.pgd import PGDConfig
from metaat.defenses.sat import SATConfig
from metaat.eval import evaluate
from metaat.options import check_options
from metaat.runtime import check_out_dir


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"steps": 1.5}, "steps must be an integer; got 1.5"),
        ({"steps": "abc"}, "steps must be an integer; got 'abc'"),
        ({"restarts": True}, "restarts must be an integer"),
        ({"step_size": float("nan")}, "step_size must be a finite number"),
        ({"step_size": float("inf")}, "step_size must be a finite number"),
        ({"step_size": "nan"}, "step_size must be a finite number"),
        ({"random_start": "maybe"}, "random_start must be true or false"),
        ({"targeted": 2}, "targeted must be true or false"),
        ({"loss": ("ce",)}, "loss must be a string"),
        ({"batch_size": 2.5}, "batch_size must be an integer"),
    ],
)
def test_attack_options_of_the_wrong_type_are_refused(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=f"pgd: option {match}"):
        attacks.create("pgd", threat="l2:0.5", **options)


def test_well_typed_options_pass_unchanged() -> None:
    attack = attacks.create("pgd", threat="linf:0.1", step_size=1, batch_size=None, targeted=True)
    assert isinstance(attack.config, PGDConfig)
    assert attack.config.step_size == 1 and isinstance(attack.config.step_size, int)  # checked, not converted
    sat = defenses.create("sat", ["linf:0.1", "l2:1.5", "l1:10"], weights=[1, 1, 2])
    assert isinstance(sat.config, SATConfig)
    assert sat.config.weights is not None and list(sat.config.weights) == [1, 1, 2]


@pytest.mark.parametrize(
    ("name", "threats", "options", "match"),
    [
        ("trades", ["linf:0.1"], {"beta": float("inf")}, "defense trades: option beta must be a finite number"),
        ("mng", ["linf:0.1", "l1:10"], {"beta": float("nan")}, "defense mng: option beta must be a finite number"),
        ("sat", ["linf:0.1", "l1:10"], {"weights": [1, "a"]}, "defense sat: option weights must be a list of finite"),
        ("pgd", ["linf:0.1"], {"random_start": "yes please"}, "defense pgd: option random_start must be true or false"),
    ],
)
def test_defense_options_of_the_wrong_type_are_refused(
    name: str, threats: list[str], options: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        defenses.create(name, threats, **options)


def test_check_options_leaves_untyped_fields_and_unknown_keys_alone() -> None:
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Config:
        steps: int = 1
        extra: dict[str, int] | None = None

    check_options("x", Config, {"extra": {"a": 1}, "unknown": object()})  # dicts and unknown keys: not its job
    with pytest.raises(ValueError, match="x: option steps must be an integer"):
        check_options("x", Config, {"steps": None})


@pytest.fixture(scope="module")
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return models.create("mlp", num_classes=5, in_channels=1, image_size=8, hidden=16)


def batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 5


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda x, y: (x.double(), y), "x has dtype torch.float64 but the model's parameters are torch.float32"),
        (lambda x, y: (x.expand(-1, 3, -1, -1).contiguous(), y), r"expects inputs of shape \(1, 8, 8\)"),
        (lambda x, y: (x[:, :, :6, :6].contiguous(), y), r"expects inputs of shape \(1, 8, 8\)"),
        (lambda x, y: (x, y + 5), "labels go up to 8 but the model outputs only 5 classes"),
        (lambda x, y: (x, y - 1), r"labels must lie in \[0, classes\); got min -1"),
        (lambda x, y: (x, y.int()), "y must be an int64"),
    ],
)
def test_attacks_refuse_inputs_the_model_cannot_take(mlp: nn.Module, change: Any, match: str) -> None:
    x, y = change(*batch())
    with pytest.raises(ValueError, match=match):
        attacks.create("pgd", threat="linf:0.1", steps=1)(mlp, x, y)


class NaNGradient(nn.Module):
    """Finite logits whose input gradient is NaN (d sqrt(u)/du is infinite at u = 0, times du/dx = 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zero = (x - x).flatten(1).sum(dim=1, keepdim=True)
        return self.lin(x.flatten(1)) + torch.sqrt(zero)


def test_an_attack_never_returns_non_finite_images() -> None:
    x, y = batch()
    model = NaNGradient()
    assert torch.isfinite(model(x)).all()
    with pytest.raises(RuntimeError, match="pgd produced .* non-finite pixel values"):
        attacks.create("pgd", threat="l2:0.5", steps=2, random_start=False)(model, x, y)


class Scaled(nn.Module):
    def __init__(self, scale: float, as_tuple: bool = False) -> None:
        super().__init__()
        self.lin, self.scale, self.as_tuple = nn.Linear(64, 5), scale, as_tuple

    def forward(self, x: torch.Tensor) -> Any:
        out = self.lin(x.flatten(1)) * self.scale
        return (out,) if self.as_tuple else out


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (Scaled(float("nan")), "non-finite logits"),
        (Scaled(float("inf")), "non-finite logits"),
        (Scaled(1.0, as_tuple=True), "must return a tensor of logits; got tuple"),
    ],
)
def test_evaluate_refuses_models_with_unusable_outputs(model: nn.Module, match: str) -> None:
    x, y = batch()
    with pytest.raises(ValueError, match=match):
        evaluate(model, x, y, threats=["linf:0.1"], suite="quick", checks=False, unseen=False)


def test_evaluate_refuses_negative_labels() -> None:
    x, y = batch()
    y[0] = -1
    with pytest.raises(ValueError, match="labels must lie in"):
        evaluate(Scaled(1.0), x, y, threats=["linf:0.1"], suite="quick", checks=False, unseen=False)


def test_an_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path: Path) -> None:
    from metaat.defenses.standard import Standard
    from metaat.train import TrainConfig, fit

    taken = tmp_path / "o.txt"
    taken.write_text("not a folder")
    with pytest.raises(ValueError, match="o.txt: it is a file"):
        check_out_dir(taken)
    with pytest.raises(ValueError, match=r"o.txt is a file"):
        check_out_dir(taken / "run")
    assert check_out_dir(tmp_path / "new" / "run") == tmp_path / "new" / "run"  # absent: created later
    x, y = batch(8)
    model = models.create("mlp", num_classes=5, in_channels=1, image_size=8, hidden=16)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="it is a file"):
        fit(model, Standard("linf:0.1"), x, y, TrainConfig(threats=("linf:0.1",)), taken)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), "nothing trained"
    assert taken.read_text() == "not a folder"
