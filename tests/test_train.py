"""The training loop: cost meter, robustness floor, NaN stop, overfitting guard, config, schedules."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import metaat.data as data
import metaat.defenses as defenses
import metaat.models as models
from metaat.defenses import TrainContext
from metaat.defenses.standard import Standard
from metaat.train import CostMeter, TrainConfig, TrainingError, TrainResult, fit, train
from metaat.train.checkpoint import read_checkpoint
from metaat.train.config import DEFAULT_THREATS
from metaat.train.schedules import lr_at, lr_factor

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MULTI = ("linf:0.1", "l2:1", "l1:5")


def run(
    out: Path,
    defense: str | defenses.Defense,
    threats: tuple[str, ...] = ("linf:0.1",),
    n: int = 96,
    n_eval: int = 50,
    **cfg: Any,
) -> TrainResult:
    """Train an MLP on the synthetic data set with ``fit``."""
    name = defense if isinstance(defense, str) else defense.name
    values: dict[str, Any] = {
        "data": "synthetic",
        "model": "mlp",
        "defense": name,
        "threats": threats,
        "epochs": 1,
        "batch_size": 32,
        "eval_n": n_eval,
        "eval_steps": 3,
        "threads": 1,
    }
    values.update(cfg)
    config = TrainConfig(**values)
    d = defenses.create(name, list(threats), **config.options) if isinstance(defense, str) else defense
    x, y = data.load("synthetic", "train", n=n)
    xe, ye = data.load("synthetic", "test", n=max(n_eval, 1))
    torch.manual_seed(config.seed)
    model = models.create("mlp", 10, 1, 12)
    return fit(model, d, x, y, config, out, xe, ye, quiet=True)


# -- cost meter ---------------------------------------------------------------------------------------

K = 3


@pytest.mark.parametrize(
    ("defense", "threats", "options", "passes"),
    [
        ("standard", ("linf:0.1",), {}, 1.0),
        ("fast", ("linf:0.1",), {}, 2.0),
        ("pgd", ("linf:0.1",), {"steps": K}, K + 1.0),
        ("pgd", ("l1:5",), {"steps": 7}, 8.0),
        ("trades", ("linf:0.1",), {"steps": K}, K + 2.5),  # + clean target forward, clean and adv updates
        ("sat", MULTI, {"steps": K}, K + 1.0),
        ("eat", MULTI, {"steps": K}, K + 1.0),
        # Every example is trained on once per threat: 3 attacks of K steps + 3 update passes.
        ("avg", MULTI, {"steps": K}, 3 * (K + 1.0)),
        ("max", MULTI, {"steps": K}, 3 * (K + 1.0)),
        ("msd", MULTI, {"steps": K}, K * (3 + 2) / 2 + 1),  # per step: 1 fwd+bwd and 3 candidate forwards
    ],
)
def test_cost_meter_counts_exact_passes_per_example_and_not_the_evaluation(
    tmp_path: Path, defense: str, threats: tuple[str, ...], options: dict[str, Any], passes: float
) -> None:
    result = run(tmp_path, defense, threats, options=options, epochs=2)
    cost = result.cost
    assert cost["train_examples"] == 2 * 96
    assert cost["passes_per_example"] == passes
    assert result.metrics["eval"]["n"] == 50  # evaluated, yet not counted
    assert cost["attack_seconds"] >= 0 and cost["update_seconds"] > 0 and cost["eval_seconds"] > 0
    if defense != "standard":
        assert cost["attack_seconds"] > 0


def test_clean_ratio_mixes_clean_and_adversarial_cost(tmp_path: Path) -> None:
    # Half of each batch clean (1 pass), half PGD-2 (3 passes).
    result = run(tmp_path, "pgd", options={"steps": 2}, clean_ratio=0.5)
    assert result.cost["passes_per_example"] == 2.0
    assert {"clean_loss", "clean_acc", "acc"} <= set(result.metrics["train"])


def test_cost_meter_forwards_without_grad_count_once_and_backwards_count_when_gradients_flow() -> None:
    meter = CostMeter()
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    meter.attach(model)
    x = torch.rand(5, 1, 2, 2)
    with torch.no_grad():
        model(x)
    assert (meter.forward_examples, meter.backward_examples) == (5, 0)
    delta = torch.zeros_like(x, requires_grad=True)
    torch.autograd.grad(model(x + delta).sum(), delta)  # an attack's input gradient
    model(x).sum().backward()  # a parameter update
    model(x)  # a forward whose graph is never used
    assert (meter.forward_examples, meter.backward_examples) == (20, 10)
    with meter.pause():
        model(x).sum().backward()
    assert (meter.forward_examples, meter.backward_examples) == (20, 10)
    meter.train_examples = 5
    assert meter.passes_per_example == 3.0


# -- behaviour ------------------------------------------------------------------------------------------


def test_pgd_training_is_far_more_robust_than_standard_training(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"threats": ("linf:0.2",), "n": 2000, "n_eval": 200, "epochs": 5, "eval_steps": 10}
    standard = run(tmp_path / "standard", "standard", **kwargs)
    pgd = run(tmp_path / "pgd", "pgd", options={"steps": 5}, **kwargs)
    robust_std = standard.metrics["eval"]["robust/linf:0.2"]
    robust_pgd = pgd.metrics["eval"]["robust/linf:0.2"]
    assert pgd.metrics["eval"]["clean"] > 0.9
    assert robust_pgd > robust_std + 0.25, (robust_std, robust_pgd)


def test_run_folder_holds_config_metrics_checkpoint_and_loadable_models(tmp_path: Path) -> None:
    result = run(tmp_path, "pgd", options={"steps": 2}, epochs=2, log_every=2)
    assert result.status == "completed" and result.epochs_completed == 2
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert len([r for r in lines if r["type"] == "step"]) == 3  # 3 steps per epoch, every 2nd
    assert {"clean", "robust/linf:0.1"} <= set(epochs[-1]["eval"])
    assert TrainConfig.from_yaml(tmp_path / "config.yaml").options == {"steps": 2}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["cost"]["passes_per_example"] == 3.0
    assert summary["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # the device it trained on
    final = models.load_model(tmp_path / "final")
    ckpt = models.load_model(tmp_path / "checkpoint")
    for a, b in zip(final.state_dict().values(), ckpt.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert read_checkpoint(tmp_path).state["status"] == "completed"


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path) -> None:
    a = run(tmp_path / "a", "sat", MULTI, options={"steps": 2})
    b = run(tmp_path / "b", "sat", MULTI, options={"steps": 2})
    c = run(tmp_path / "c", "sat", MULTI, options={"steps": 2}, seed=1)
    wa, wb, wc = (load_file(str(r.run_dir / "final" / "model.safetensors")) for r in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


class NaNAfter(Standard):
    """Standard training whose loss turns NaN after ``after`` calls (a diverging objective)."""

    def __init__(self, after: int) -> None:
        super().__init__("linf:0.1")
        self.after, self.calls = after, 0

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        self.calls += 1
        loss, metrics = super().__call__(model, x, y, ctx)
        return (loss * math.nan if self.calls > self.after else loss), metrics


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"non-finite training loss \(nan\) at epoch 2 step 2.*checkpoint.*intact"):
        run(tmp_path, NaNAfter(after=4), n=96, epochs=3, checkpoint_every=1)
    ckpt = read_checkpoint(tmp_path)
    assert (ckpt.state["epoch"], ckpt.state["step_in_epoch"], ckpt.state["global_step"]) == (1, 1, 4)
    assert all(torch.isfinite(v).all() for v in ckpt.model_state.values())
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "non_finite"
    assert not (tmp_path / "final").exists()


class Sabotage(Standard):
    """Standard training for ``good_epochs`` epochs, then gradient *ascent*: robustness collapses."""

    def __init__(self, good_epochs: int) -> None:
        super().__init__("linf:0.1")
        self.good_epochs = good_epochs

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss, metrics = super().__call__(model, x, y, ctx)
        return (loss if ctx.epoch < self.good_epochs else -loss), metrics


def test_overfitting_guard_rolls_back_to_the_last_good_epoch_and_stops(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"n": 640, "n_eval": 100, "schedule": "constant", "lr": 0.01, "fo_overfit_guard": True}
    result = run(tmp_path / "guarded", Sabotage(good_epochs=2), epochs=5, **kwargs)
    assert result.status == "stopped" and result.epochs_completed == 3
    lines = [json.loads(line) for line in (tmp_path / "guarded" / "metrics.jsonl").read_text().splitlines()]
    event = lines[-1]
    assert event["event"] == "catastrophic_overfitting" and event["rolled_back_to_epoch"] == 2
    assert event["best_robust"] - event["robust"] > 0.2
    # The same two good epochs, run on their own, give exactly the rolled-back weights.
    reference = run(tmp_path / "reference", Sabotage(good_epochs=2), epochs=2, **kwargs)
    final = load_file(str(result.run_dir / "final" / "model.safetensors"))
    expected = load_file(str(reference.run_dir / "final" / "model.safetensors"))
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    # A stopped run does not restart.
    again = fit(
        models.create("mlp", 10, 1, 12),
        Sabotage(good_epochs=2),
        *data.load("synthetic", "train", n=640),
        TrainConfig.from_yaml(tmp_path / "guarded" / "config.yaml"),
        tmp_path / "guarded",
        resume=True,
        quiet=True,
    )
    assert again.status == "stopped" and again.message.startswith("nothing to do")


class TermAt(Standard):
    """Standard training that sends this process SIGTERM during step ``at`` (an operator's kill)."""

    def __init__(self, at: int) -> None:
        super().__init__("linf:0.1")
        self.at, self.calls = at, 0

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__call__(model, x, y, ctx)


def test_sigterm_finishes_the_step_saves_and_resume_is_bit_exact(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"n": 160, "epochs": 2}
    stopped = run(tmp_path / "run", TermAt(at=7), **kwargs)
    assert stopped.status == "interrupted" and stopped.global_step == 7
    assert read_checkpoint(tmp_path / "run").state["step_in_epoch"] == 2
    resumed = fit(
        models.create("mlp", 10, 1, 12),
        Standard("linf:0.1"),
        *data.load("synthetic", "train", n=160),
        TrainConfig.from_yaml(tmp_path / "run" / "config.yaml"),
        tmp_path / "run",
        *data.load("synthetic", "test", n=50),
        resume=True,
        quiet=True,
    )
    reference = run(tmp_path / "reference", "standard", **kwargs)
    assert resumed.status == "completed" and resumed.global_step == reference.global_step == 10
    a = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "reference" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert resumed.metrics["eval"] == reference.metrics["eval"]
    assert resumed.cost["forward_examples"] == reference.cost["forward_examples"]


def test_fit_refuses_an_existing_run_mismatched_threats_and_bad_data(tmp_path: Path) -> None:
    run(tmp_path, "standard")
    with pytest.raises(ValueError, match="already holds a run; resume it"):
        run(tmp_path, "standard")
    with pytest.raises(ValueError, match="config threats .* differ from the defense's"):
        fit(
            models.create("mlp", 10, 1, 12),
            defenses.create("pgd", "l2:1"),
            *data.load("synthetic", "train", n=32),
            TrainConfig(threats=("linf:0.1",)),
            tmp_path / "other",
        )
    with pytest.raises(ValueError, match=r"pixels must lie in \[0, 1\]"):
        x, y = data.load("synthetic", "train", n=32)
        fit(models.create("mlp", 10, 1, 12), Standard("linf:0.1"), x * 3, y, TrainConfig(), tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        fit(
            models.create("mlp", 10, 1, 12),
            Standard("linf:0.1"),
            *data.load("synthetic", "train", n=32),
            TrainConfig(),
            tmp_path / "none",
            resume=True,
        )


def test_train_builds_everything_from_the_config(tmp_path: Path) -> None:
    config = TrainConfig(
        data="synthetic", model="mlp", defense="fast", epochs=1, train_subset=64, eval_n=20, eval_steps=2, threads=1
    )
    result = train(config, tmp_path, quiet=True)
    assert result.status == "completed" and result.cost["passes_per_example"] == 2.0
    assert result.cost["train_examples"] == 64


@pytest.mark.skipif(__import__("importlib").util.find_spec("mlflow") is not None, reason="mlflow is installed here")
def test_missing_tracker_package_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--tracker mlflow needs the mlflow package.*metaat\[mlflow\]"):
        run(tmp_path, "standard", tracker="mlflow")
    assert not (tmp_path / "checkpoint").exists()


# -- config and schedules -----------------------------------------------------------------------------


def test_config_round_trips_through_yaml_and_fills_default_radii(tmp_path: Path) -> None:
    cfg = TrainConfig(defense="msd", threats=("linf", "l2", "l1:12"), options={"steps": 5}, lr=1)
    assert cfg.threats == (f"linf:{DEFAULT_THREATS['linf']:g}", f"l2:{DEFAULT_THREATS['l2']:g}", "l1:12")
    assert isinstance(cfg.lr, float)
    cfg.to_yaml(tmp_path / "c.yaml")
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == cfg
    assert TrainConfig.from_yaml(tmp_path / "c.yaml", epochs=3).epochs == 3
    (tmp_path / "e.yaml").write_text("lr: 1e-3\nthreats: l2\n")
    assert TrainConfig.from_yaml(tmp_path / "e.yaml").lr == 1e-3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'; valid optimizers: sgd, adam"),
        ({"schedule": "step"}, "valid schedules: onecycle, cosine, piecewise, constant"),
        ({"clean_ratio": 1.5}, "clean_ratio must be >= 0 and <= 1"),
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"threats": ("linf:0.1", "linf:0.1")}, "duplicate threat models"),
        ({"threats": ("l3",)}, "give 'norm:eps'"),
        ({"colour": "red"}, "unknown config key.*colour; valid keys: data"),
        ({"options": [1]}, r"options must be a mapping of defense options \(key: value\); got \[1\]"),
    ],
)
def test_config_errors_are_one_line_and_list_valid_values(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(TrainConfig().to_dict(), **changes)


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_preset_loads_and_builds_its_defense(preset: str) -> None:
    cfg = TrainConfig.from_yaml(CONFIGS / preset)
    assert cfg.data == "fashion-mnist" and cfg.model == "cnn-small"
    assert cfg.defense == preset.removesuffix(".yaml")
    defenses.create(cfg.defense, list(cfg.threats), **cfg.options)


def test_presets_cover_every_classic_defense() -> None:
    names = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert {"standard", "fast", "pgd", "trades", "sat", "avg", "max", "msd", "eat"} <= names


def test_schedules() -> None:
    assert lr_factor("constant", 0.7) == 1.0
    assert lr_factor("onecycle", 0.0) == 0.0 and lr_factor("onecycle", 0.4) == 1.0 and lr_factor("onecycle", 1.0) == 0.0
    assert lr_factor("cosine", 0.0) == 1.0 and lr_factor("cosine", 0.5) == pytest.approx(0.5)
    assert [lr_factor("piecewise", t) for t in (0.1, 0.6, 0.9)] == [1.0, 0.1, 0.01]
    rates = [lr_at("onecycle", 0.1, s, 10) for s in range(10)]
    peak = rates.index(max(rates))
    assert all(0 < r <= 0.1 for r in rates) and 3 <= peak <= 4
    assert rates[: peak + 1] == sorted(rates[: peak + 1]) and rates[peak:] == sorted(rates[peak:], reverse=True)
    with pytest.raises(ValueError, match="valid schedules"):
        lr_factor("linear", 0.5)
