"""Gradient-masking checks: they fire on deliberately masked models and pass on a PGD-trained one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

import metaat.attacks as attacks
import metaat.data as datasets
import metaat.models as models
from metaat.eval import CheckConfig, CheckResult, evaluate, run_checks
from metaat.threats import parse_threats

Data = tuple[torch.Tensor, torch.Tensor]
SIZE = 16  # the reference Square's L2 initialisation needs image sizes like 16, 20, 28 or 32
THREATS = parse_threats(["linf:0.1", "l2:1"])
CONFIG = CheckConfig(n=100, square_queries=300)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> Data:
    return datasets.load("synthetic", "test", n=100, noise=0.5, image_size=SIZE)


@pytest.fixture(scope="module")
def pgd_model() -> nn.Module:
    """An MLP adversarially trained (PGD-5, L∞ 0.1) for three quick epochs on synthetic data."""
    torch.manual_seed(0)
    x, y = datasets.load("synthetic", "train", n=2000, noise=0.5, image_size=SIZE)
    model = models.create("mlp", num_classes=10, in_channels=1, image_size=SIZE, hidden=64)
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    pgd = attacks.create("pgd", threat="linf:0.1", steps=5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for i in range(0, len(y), 100):
            xb, yb = x[i : i + 100], y[i : i + 100]
            loss = nn.functional.cross_entropy(model(pgd(model, xb, yb, generator=gen)), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


class Quantised(nn.Module):
    """Rounds its input to 5 grey levels first: zero input gradient everywhere (gradient masking)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 4) / 4)


class Probabilities(nn.Module):
    """Returns softmax probabilities instead of logits."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).softmax(dim=1)


class Noisy(nn.Module):
    """Adds fresh input noise on every call (a randomised defence)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner((x + 0.05 * torch.randn_like(x)).clamp(0, 1))


def statuses(results: list[CheckResult]) -> dict[str, str]:
    return {r.label: r.status for r in results}


def flagged(results: list[CheckResult]) -> set[str]:
    return {r.name for r in results if r.status == "flagged"}


def test_all_checks_pass_on_a_pgd_trained_model(pgd_model: nn.Module, data: Data) -> None:
    results = run_checks(pgd_model, *data, THREATS, CONFIG)
    assert flagged(results) == set(), statuses(results)
    names = {r.name for r in results}
    assert names == {
        "logits",
        "deterministic",
        "eval-mode",
        "gradients",
        "iterative-vs-single-step",
        "more-steps",
        "large-eps",
        "white-box-vs-black-box",
        "reference-warnings",
    }
    by = {r.label: r for r in results}
    assert by["large-eps (linf:0.1)"].values["accuracy"] <= 0.05
    assert (
        by["iterative-vs-single-step (linf:0.1)"].values["pgd_accuracy"]
        <= by["iterative-vs-single-step (linf:0.1)"].values["fgsm_accuracy"] + 0.01
    )
    assert by["reference-warnings"].status == "skipped"
    for r in results:
        assert r.explanation and "\n" not in r.explanation


def test_checks_fire_on_an_input_quantiser(pgd_model: nn.Module, data: Data) -> None:
    results = run_checks(Quantised(pgd_model), *data, THREATS, CONFIG)
    fired = flagged(results)
    assert {"gradients", "large-eps"} <= fired, statuses(results)
    gradients = next(r for r in results if r.name == "gradients")
    assert gradients.values["zero_fraction"] == 1.0
    assert "gradient" in gradients.explanation


def test_checks_fire_on_probability_outputs(pgd_model: nn.Module, data: Data) -> None:
    results = run_checks(Probabilities(pgd_model), *data, THREATS, CONFIG)
    assert "logits" in flagged(results)
    logits = next(r for r in results if r.name == "logits")
    assert "probabilities" in logits.explanation and logits.values["max_row_sum_error"] < 1e-4


def test_reference_package_warnings_become_a_flag(pgd_model: nn.Module, data: Data) -> None:
    x, y = data
    r = evaluate(
        Probabilities(pgd_model),
        x[:10],
        y[:10],
        ["linf:0.1"],
        suite="apgd",
        checks=CheckConfig(n=10, threats=()),
        examples=0,
    )
    names = {c.name for c in r.flagged}
    assert {"logits", "reference-warnings"} <= names
    warning = next(c for c in r.flagged if c.name == "reference-warnings")
    assert "probability distribution" in warning.explanation
    assert r.protocol["reference_warnings"]


def test_randomised_model_is_flagged(pgd_model: nn.Module, data: Data) -> None:
    results = run_checks(Noisy(pgd_model), *data, (), CONFIG)
    assert "deterministic" in flagged(results)


def test_training_mode_and_batch_statistics_are_flagged(data: Data) -> None:
    x, y = data
    torch.manual_seed(0)
    dropout = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 32), nn.Dropout(0.5), nn.ReLU(), nn.Linear(32, 10))
    dropout.train()
    results = run_checks(dropout, x, y, (), CONFIG, given_training=True)
    assert "eval-mode" in flagged(results) and "deterministic" not in flagged(results)
    assert dropout.training, "the model's mode is restored"

    norm = nn.BatchNorm1d(32, track_running_stats=False)  # batch statistics even in eval mode
    batchy = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 32), norm, nn.ReLU(), nn.Linear(32, 10)).eval()
    results = run_checks(batchy, x, y, (), CONFIG)
    check = next(r for r in results if r.name == "eval-mode")
    assert check.status == "flagged" and "batch" in check.explanation

    stats = nn.BatchNorm1d(32)
    bn = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 32), stats, nn.ReLU(), nn.Linear(32, 10))
    bn.train()
    assert stats.running_mean is not None
    before = stats.running_mean.clone()
    results = run_checks(bn, x, y, (), CONFIG, given_training=True)
    assert "eval-mode" in flagged(results)
    assert torch.equal(stats.running_mean, before), "checks must not update BatchNorm statistics"


def test_check_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="eps_factor must be > 1"):
        CheckConfig(eps_factor=0.5)
    with pytest.raises(ValueError, match="n, steps and square_queries must be >= 1"):
        CheckConfig(n=0)
    with pytest.raises(ValueError, match="unknown check status"):
        CheckResult("logits", "maybe", "?")
