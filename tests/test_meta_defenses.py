"""The meta-learning defenses (mng, l2l, mat, metaat): contract, cost, resume, and a short run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import metaat.attacks as attacks
import metaat.data as data
import metaat.defenses as defenses
from metaat.defenses.base import TrainContext
from metaat.meta import LearnedAttacker
from metaat.threats import parse_threats
from metaat.train import TrainConfig, fit
from metaat.train.cost import CostMeter

THREATS = ("linf:0.2", "l2:1", "l1:6")
CASES: list[tuple[str, dict[str, Any]]] = [
    ("mng", {"steps": 2}),
    ("mng", {"steps": 2, "generator": "noise", "meta_every": 2, "all_ce": True}),
    ("l2l", {}),
    ("l2l", {"steps": 2, "random_start": True, "clean_weight": 0.5}),
    ("mat", {}),
    ("mat", {"universal": False, "steps": 1}),
    # metaat's default recipe: its learned attacker takes the first step
    ("metaat", {}),
    ("metaat", {"learned_start": True, "pgd_every": 2, "lookahead": True, "attacker_steps": 2, "refine_steps": 0}),
    ("metaat", {"learned_start": True, "pgd_every": 0, "adaptive": False, "random_start": False, "consistency": 0}),
    ("metaat", {"learned_start": True, "pgd_every": 1, "distill": 1.0, "pgd_steps": 1}),
    ("metaat", {"learned_start": True, "refine_steps": 2, "pgd_every": 2}),
]


def test_metaat_without_its_learned_attacker_has_no_generator() -> None:
    """``learned_start=false`` (plain PGD steps, the previous default): no generator to build, train or
    checkpoint; the loss still reaches every model parameter and the input is left untouched."""
    torch.manual_seed(0)
    model = _tiny_model().train()
    defense = defenses.create("metaat", list(THREATS), pgd_every=2, learned_start=False)
    defense.setup(model, torch.device("cpu"), 10, (1, 12, 12))
    assert defense.modules() == {} and defense.optimizers() == {}
    x, y = data.load("synthetic", "train", n=32)
    x_copy = x.clone()
    ctx = _ctx()
    for _ in range(2):  # a refinement batch, then a PGD batch
        loss, metrics = defense(model, x, y, ctx)
        assert bool(torch.isfinite(loss)) and "distill" not in metrics
        model.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
    assert torch.equal(x, x_copy) and "attacker" not in defense.state_dict()
    json.dumps(defense.state_dict())


def _tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 36, 10))


def _ctx(seed: int = 0) -> TrainContext:
    return TrainContext(threats=parse_threats(list(THREATS)), generator=torch.Generator().manual_seed(seed))


def _snapshot(defense: defenses.Defense) -> dict[str, torch.Tensor]:
    return {f"{m}.{k}": v.detach().clone() for m, mod in defense.modules().items() for k, v in mod.state_dict().items()}


@pytest.mark.parametrize(("name", "options"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_defense_step_honours_the_contract(name: str, options: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = _tiny_model().train()
    defense = defenses.create(name, list(THREATS), **options)
    defense.setup(model, torch.device("cpu"), 10, (1, 12, 12))
    assert defense.modules(), "the meta-learner is exposed for checkpoints"
    x, y = data.load("synthetic", "train", n=32)
    x_copy = x.clone()
    ctx = _ctx()
    before = _snapshot(defense)
    for _ in range(2):  # two batches: metaat's pgd_every=2 case sees both kinds
        loss, metrics = defense(model, x, y, ctx)
        assert loss.dim() == 0 and bool(torch.isfinite(loss)) and loss.requires_grad
        assert {"loss", "acc"} <= set(metrics) and all(isinstance(v, float) for v in metrics.values())
        assert "passes_est" not in metrics  # cost is the training loop's meter's to count
        model.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
    assert torch.equal(x, x_copy) and model.training
    after = _snapshot(defense)
    assert any(not torch.equal(before[k], after[k]) for k in before), "the meta-learner learns"
    json.dumps(defense.state_dict())  # JSON-able
    for opt in defense.optimizers().values():
        assert all(p.grad is None for g in opt.param_groups for p in g["params"])


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("l2l", {}, 2.0),
        ("l2l", {"steps": 3}, 4.0),
        ("mat", {"steps": 2}, 3.0),
        # default: 1 learned + 3 refinement + 1 update + 1 consistency
        ("metaat", {}, 6.0),
        ("metaat", {"consistency": 0}, 5.0),
        # PGD-5 every 4th batch (the default until 2026-11-28): 3/4 · 6 + 1/4 · (5 + 1 + 1)
        ("metaat", {"pgd_every": 4}, 6.25),
        ("metaat", {"pgd_every": 4, "consistency": 0}, 5.25),
        ("metaat", {"pgd_every": 4, "distill": 0}, 6.25),  # the attacker's distillation reuses PGD's first gradient
        # the look-ahead's second-order step on the PGD batch (one in four): 3.5 more passes there
        ("metaat", {"pgd_every": 4, "lookahead": True}, 6.25 + 3.5 / 4),
        ("metaat", {"refine_steps": 0}, 3.0),
        ("metaat", {"refine_steps": 0, "consistency": 0}, 2.0),
        ("metaat", {"refine_steps": 0, "pgd_every": 4}, 4.0),
        ("metaat", {"refine_steps": 2}, 5.0),
        ("metaat", {"refine_steps": 2, "learned_start": False}, 5.0),
        # per-norm refinement overrides refine_steps: 1 + 1 + 1 + 1, or 3/4 · 4 + 1/4 · 7 with PGD batches
        ("metaat", {"refine_by_norm": {"linf": 1, "l2": 1, "l1": 1}}, 4.0),
        ("metaat", {"refine_by_norm": {"linf": 1, "l2": 1, "l1": 1}, "pgd_every": 4, "learned_start": False}, 4.75),
    ],
)
def test_passes_per_example(name: str, options: dict[str, Any], expected: float) -> None:
    """Counted by the training loop's meter: every forward and backward through the target."""
    torch.manual_seed(0)
    model = _tiny_model().train()
    defense = defenses.create(name, list(THREATS), **options)
    defense.setup(model, torch.device("cpu"), 10, (1, 12, 12))
    meter = CostMeter()
    handle = meter.attach(model)
    x, y = data.load("synthetic", "train", n=16)
    ctx = _ctx()
    for _ in range(4):
        loss, metrics = defense(model, x, y, ctx)
        loss.backward()
        meter.train_examples += len(y)
    handle.remove()
    assert meter.passes_per_example == pytest.approx(expected)


def test_threat_sampling_adapts_to_the_weakest_threat() -> None:
    # by default, from the refined batches' running accuracy; with PGD batches, from theirs
    for options, source in (({}, "acc_learned"), ({"pgd_every": 4}, "acc_pgd")):
        defense = defenses.create("metaat", list(THREATS), **options)
        setattr(defense, source, [0.8, 0.5, 0.1])
        probs = defense.threat_probabilities()  # type: ignore[attr-defined]
        assert probs[2] > probs[1] > probs[0] > 0 and sum(probs) == pytest.approx(1), options
    uniform = defenses.create("metaat", list(THREATS), adaptive=False, l1_weight=1.0)
    assert uniform.threat_probabilities() == pytest.approx([1 / 3] * 3)  # type: ignore[attr-defined]


def test_refine_by_norm_overrides_the_step_count_for_its_norms_only() -> None:
    defense = defenses.create("metaat", list(THREATS), refine_steps=3, refine_by_norm={"l1": 6, "linf": 1})
    steps = {t.norm: defense.refine_steps_for(t) for t in defense.threats}  # type: ignore[attr-defined]
    assert steps == {"linf": 1, "l2": 3, "l1": 6}


def test_refine_by_norm_takes_a_domain_threat_kind() -> None:
    sensor = ["linf:0.25", "spike:5,2", "drift:0.5"]
    defense = defenses.create("metaat", sensor, refine_steps=3, refine_by_norm={"drift": 10})
    steps = {t.norm: defense.refine_steps_for(t) for t in defense.threats}  # type: ignore[attr-defined]
    assert steps == {"linf": 3, "spike": 3, "drift": 10}


def test_l1_weight_scales_the_l1_share_on_top_of_either_sampler() -> None:
    l1 = [t.split(":")[0] for t in THREATS].index("l1")
    uniform = defenses.create("metaat", list(THREATS), adaptive=False, l1_weight=2.0)
    probs = uniform.threat_probabilities()  # type: ignore[attr-defined]
    assert probs[l1] == pytest.approx(0.5) and sum(probs) == pytest.approx(1)
    adaptive = defenses.create("metaat", list(THREATS), l1_weight=3.0)
    adaptive.acc_pgd = [0.5, 0.5, 0.5]  # type: ignore[attr-defined]
    probs = adaptive.threat_probabilities()  # type: ignore[attr-defined]
    assert probs[l1] == pytest.approx(0.6) and sum(probs) == pytest.approx(1)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("metaat", {"pgd_every": -1}, "pgd_every"),
        ("metaat", {"lookahead": True, "pgd_every": 0, "learned_start": True}, "lookahead needs"),
        ("metaat", {"lookahead": True, "pgd_every": 4, "learned_start": False}, "needs learned_start=true"),
        ("metaat", {"refine_steps": -1}, "refine_steps"),
        ("metaat", {"refine_step_size": 1.5}, "refine_step_size"),
        ("metaat", {"l1_weight": 0.0}, "l1_weight"),
        ("metaat", {"l1_weight": float("nan")}, "l1_weight must be (> 0|a finite number)"),
        ("metaat", {"refine_by_norm": {"l1": True}}, "must be an integer"),
        ("metaat", {"refine_by_norm": {"l3": 1}}, "unknown norm 'l3'; valid norms: linf, l2, l1"),
        ("metaat", {"refine_by_norm": {"l1": -1}}, "refine_by_norm"),
        ("mng", {"generator": "both"}, "source"),
        ("mat", {"meta_lr": 2.0}, "meta_lr"),
        ("l2l", {"steps": 0}, "steps"),
        ("l2l", {"stepz": 1}, "unknown option"),
    ],
)
def test_bad_options_are_one_line_errors(name: str, options: dict[str, Any], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        defenses.create(name, list(THREATS), **options)


def _fit(defense: str, out: Path, epochs: int, options: dict[str, Any] | None = None, **kw: Any) -> Any:
    x, y = data.load("synthetic", "train", n=kw.pop("n", 1500))
    xt, yt = data.load("synthetic", "test", n=200)
    cfg = TrainConfig(
        data="synthetic",
        model="cnn-small",
        defense=defense,
        options=options or {},
        threats=THREATS,
        epochs=epochs,
        batch_size=64,
        schedule="constant",
        lr=1e-3,
        eval_n=kw.pop("eval_n", 200),
        threads=1,
        device="cpu",
        **kw,
    )
    from metaat.models import create

    torch.manual_seed(cfg.seed)
    model = create("cnn-small", 10, 1, 12)
    return fit(model, defenses.create(defense, list(THREATS), **(options or {})), x, y, cfg, out, xt, yt, quiet=True)


def test_short_metaat_run_beats_standard_on_every_threat(tmp_path: Path) -> None:
    standard = _fit("standard", tmp_path / "standard", epochs=3)
    meta = _fit("metaat", tmp_path / "metaat", epochs=3)
    assert meta.status == "completed"
    for threat in THREATS:
        key = f"robust/{threat}"
        assert meta.metrics["eval"][key] > standard.metrics["eval"][key] + 0.05, (key, meta.metrics, standard.metrics)
    assert meta.cost["passes_per_example"] < 6.5
    # the default recipe's attacker is saved with the run and is an attack in its own right
    learned = attacks.create("learned", threat=THREATS[0], path=str(tmp_path / "metaat"))
    assert isinstance(learned.attacker, LearnedAttacker)  # type: ignore[attr-defined]
    # without it (learned_start=false) there is no generator: asking for a learned attack is a clear error
    _fit("metaat", tmp_path / "pgd-start", epochs=1, options={"learned_start": False})
    with pytest.raises(ValueError, match="has no generator"):
        attacks.create("learned", threat=THREATS[0], path=str(tmp_path / "pgd-start"))


@pytest.mark.parametrize(
    ("name", "options"),
    [("metaat", {}), ("metaat", {"learned_start": False}), ("mng", {"steps": 1}), ("mat", {})],
    ids=["metaat", "metaat-pgd-start", "mng", "mat"],
)
def test_resume_is_exact(tmp_path: Path, name: str, options: dict[str, Any]) -> None:
    straight = _fit(name, tmp_path / "a", epochs=2, options=options, n=256, eval_n=0)
    _fit(name, tmp_path / "b", epochs=1, options=options, n=256, eval_n=0)
    from metaat.train import resume_run  # noqa: F401  (API presence)
    from metaat.train.checkpoint import read_checkpoint

    x, y = data.load("synthetic", "train", n=256)
    cfg = TrainConfig.from_yaml(tmp_path / "b" / "config.yaml", epochs=2)
    from metaat.models import create

    model = create("cnn-small", 10, 1, 12)
    resumed = fit(
        model, defenses.create(name, list(THREATS), **options), x, y, cfg, tmp_path / "b", resume=True, quiet=True
    )
    assert straight.global_step == resumed.global_step
    a, b = read_checkpoint(tmp_path / "a"), read_checkpoint(tmp_path / "b")
    for key, value in a.model_state.items():
        assert torch.equal(value, b.model_state[key]), key
    defense_keys = [k for k in a.tensors if k.startswith(("defense.", "optim.defense."))]
    learned = name == "metaat" and options.get("learned_start", True)
    assert bool(defense_keys) == (learned or name != "metaat")  # generators/banks are checkpointed
    for key in defense_keys:
        assert torch.equal(a.tensors[key], b.tensors[key]), key
    if learned:  # the run's attacker is an attack
        atk = attacks.create("learned", threat=THREATS[0], path=str(tmp_path / "a"))
        assert isinstance(atk.attacker, LearnedAttacker)  # type: ignore[attr-defined]
    assert a.state["defense"]["state"] == b.state["defense"]["state"]


def test_a_default_changed_since_a_run_started_cannot_change_it_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from metaat.defenses.metaat import MetaAT, MetaATConfig
    from metaat.train import resume_run
    from metaat.train.checkpoint import read_checkpoint

    kw: dict[str, Any] = {"n": 256, "eval_n": 0, "train_subset": 256}
    straight = _fit("metaat", tmp_path / "a", epochs=2, **kw)
    _fit("metaat", tmp_path / "b", epochs=1, **kw)
    built = read_checkpoint(tmp_path / "b").state["defense"]["config"]
    assert built["pgd_every"] == 0 and built["learned_start"] is True  # every option, defaults included

    @dataclasses.dataclass(frozen=True)
    class Changed(MetaATConfig):  # as if a later version's default were PGD batches every 2nd batch
        pgd_every: int = 2

    monkeypatch.setattr(MetaAT, "config_class", Changed)
    cfg = TrainConfig.from_yaml(tmp_path / "b" / "config.yaml", epochs=2)  # options {}: today's defaults
    from metaat.models import create

    x, y = data.load("synthetic", "train", n=256)
    with pytest.raises(ValueError, match="pgd_every: checkpoint 0, now 2"):
        model, defense = create("cnn-small", 10, 1, 12), defenses.create("metaat", list(THREATS))
        fit(model, defense, x, y, cfg, tmp_path / "b", resume=True, quiet=True)
    # the run's saved config pins what it was built with: it ends exactly as the uninterrupted run
    resumed = resume_run(tmp_path / "b", epochs=2, quiet=True)
    assert resumed.global_step == straight.global_step
    a, b = read_checkpoint(tmp_path / "a"), read_checkpoint(tmp_path / "b")
    for key, value in a.model_state.items():
        assert torch.equal(value, b.model_state[key]), key
    assert b.state["config"]["options"] == {"pgd_every": 0}
    assert TrainConfig.from_yaml(tmp_path / "b" / "config.yaml").options == {"pgd_every": 0}


@pytest.mark.parametrize("name", ["mng", "l2l", "mat", "metaat"])
def test_config_presets_load(name: str) -> None:
    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    cfg = TrainConfig.from_yaml(path)
    assert cfg.defense == name and len(cfg.threats) == 3
    defense = defenses.create(cfg.defense, list(cfg.threats), **cfg.options)
    assert defense.name == name
