"""metaat's cheaper inner maximisation levers: free replays (``replays``), the sparse learned L1 step
(``l1_topk``) and their presets — options checked, passes counted by the meter as computed by hand,
the replay step equal to the paper's, sparse steps sparse and in the ball, exact resume mid-group, and
recipes with the levers off unchanged."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import metaat.data as data
import metaat.defenses as defenses
from metaat.defenses.base import TrainContext
from metaat.defenses.metaat import LATER_OPTIONS, MetaATConfig
from metaat.defenses.metaat_free import ReplayState
from metaat.meta.sparse import keep_top_k, project_l1_sparse, sparse_l1_step
from metaat.models import create
from metaat.threats import ThreatModel, parse_threats, project, project_l1
from metaat.train import TrainConfig, fit

THREATS = ("linf:0.2", "l2:1", "l1:6")
PRESETS = Path(__file__).resolve().parents[1] / "configs" / "presets"
FREE = "metaat-learned-refine0-free4-adaptive-l1x2-js"


def _tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 144, 10))


def _ctx(threats: tuple[str, ...] = THREATS, seed: int = 0) -> TrainContext:
    return TrainContext(threats=parse_threats(list(threats)), generator=torch.Generator().manual_seed(seed))


def _fit(out: Path, options: dict[str, Any], *, n: int, epochs: int = 1, batch_size: int = 8) -> Any:
    x, y = data.load("synthetic", "train", n=n)
    cfg = TrainConfig(
        data="synthetic",
        model="cnn-small",
        defense="metaat",
        options=options,
        threats=THREATS,
        epochs=epochs,
        batch_size=batch_size,
        schedule="constant",
        eval_n=0,
        threads=1,
        device="cpu",
    )
    torch.manual_seed(cfg.seed)
    model = create("cnn-small", 10, 1, 12)
    return fit(model, defenses.create("metaat", list(THREATS), **options), x, y, cfg, out, quiet=True)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"replays": 0}, r"replays must be an integer >= 1 \(1: each batch trains once; m >= 2"),
        ({"replays": 1.5}, "option replays must be an integer; got 1.5"),
        ({"replays": True}, "option replays must be an integer; got True"),
        ({"replays": 4, "pgd_every": 4}, "replays >= 2 needs pgd_every=0"),
        ({"l1_topk": -1}, r"l1_topk must be an integer >= 0 \(0: off; k >= 1"),
        ({"l1_topk": "20"}, "option l1_topk must be an integer"),
        ({"l1_topk": 20, "learned_start": False}, "needs learned_start=true and pgd_every=0"),
        ({"l1_topk": 20, "pgd_every": 2}, "needs learned_start=true and pgd_every=0"),
    ],
)
def test_a_bad_lever_option_is_one_clear_error(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        defenses.create("metaat", list(THREATS), **options)
    assert "\n" not in str(err.value)


def test_a_sparse_l1_step_without_an_l1_threat_is_an_error() -> None:
    with pytest.raises(ValueError, match="no l1 threat among linf:0.2, l2:1"):
        defenses.create("metaat", ["linf:0.2", "l2:1"], l1_topk=5)


def test_with_the_levers_off_the_recipe_reads_as_before() -> None:
    """A lever left off is not written (presets, records and checkpoints read as before), builds no
    replay state, and spelling it out changes nothing."""
    assert LATER_OPTIONS == {"replays": 1, "l1_topk": 0}
    default = defenses.create("metaat", list(THREATS))
    spelled = defenses.create("metaat", list(THREATS), replays=1, l1_topk=0)
    assert default.config.to_dict() == spelled.config.to_dict()
    assert not set(LATER_OPTIONS) & set(MetaATConfig().to_dict())
    assert "replay" not in default.modules() and "replay" not in default.state_dict()
    on = defenses.create("metaat", list(THREATS), replays=3, l1_topk=7).config.to_dict()
    assert (on["replays"], on["l1_topk"]) == (3, 7)


@pytest.mark.parametrize(
    ("options", "n", "epochs", "expected"),
    [
        # groups of 4 on 8 steps: per group 1 pass (the attacker's input gradient) + 4 replays x 2 (JS)
        ({}, 64, 1, (1 + 4 * 2) / 4),
        # 5 steps per epoch: a group of 4, then one of 1 (groups restart each epoch), two epochs
        ({}, 40, 2, ((1 + 4 * 2) + (1 + 1 * 2)) / 5),
        # m = 3, one refinement step at the start, no consistency term: (1 + 1 + 3 x 1) / 3
        ({"replays": 3, "refine_steps": 1, "consistency": 0.0}, 48, 1, (1 + 1 + 3) / 3),
    ],
    ids=["free4-preset", "free4-short-epoch", "free3-refine1-no-js"],
)
def test_the_meter_counts_the_passes_computed_by_hand(
    tmp_path: Path, options: dict[str, Any], n: int, epochs: int, expected: float
) -> None:
    preset = yaml.safe_load((PRESETS / f"{FREE}.yaml").read_text(encoding="utf-8"))["options"]
    result = _fit(tmp_path / "run", {**preset, **options}, n=n, epochs=epochs)
    assert result.cost["passes_per_example"] == pytest.approx(expected, abs=1e-12)
    assert result.cost["train_examples"] == n * epochs  # every replay is a training step of the loop


def test_the_free_preset_states_the_passes_its_meter_counts() -> None:
    header = " ".join(ln for ln in (PRESETS / f"{FREE}.yaml").read_text(encoding="utf-8").splitlines() if ln[:1] == "#")
    assert "2.25 forward+backward passes" in header


def test_a_minibatch_is_replayed_and_each_backward_gives_the_next_step() -> None:
    """Free AT (Shafahi et al. 2019): the m replays train on the first batch of the group; after each
    training backward δ moves one step of refine_step_size·eps along sign(∇_δ loss), projected."""
    torch.manual_seed(0)
    model = _tiny_model().train()
    threats = ("linf:0.2",)
    defense = defenses.create("metaat", list(threats), replays=3, refine_steps=0, consistency=0.0)
    seen: list[torch.Tensor] = []
    model.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    ctx = _ctx(threats)
    batches = [data.load("synthetic", "train", n=8, start=8 * i) for i in range(4)]
    state = defense.replay  # type: ignore[attr-defined]
    assert isinstance(state, ReplayState)
    for i, (x, y) in enumerate(batches):
        loss, metrics = defense(model, x, y, ctx)
        held_x, delta = state.x.clone(), state.delta.clone()
        x_in = seen[-1]  # the training forward: x_held + δ
        assert torch.equal(x_in, held_x + delta)
        assert torch.equal(held_x, batches[0][0] if i < 3 else batches[3][0])
        assert metrics["replay"] == (i % 3) + 1
        # ∇_δ of the loss, taken independently, then one projected sign step
        probe = x_in.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(probe), state.y), probe)
        model.zero_grad()
        loss.backward()
        want = project(delta + 0.5 * 0.2 * grad.sign(), held_x, ThreatModel.parse("linf:0.2"))
        assert torch.allclose(state.delta, want, atol=1e-7)
        assert float((state.delta - delta).abs().max()) > 0
        with torch.no_grad():  # an update between replays, as the loop makes
            for p in model.parameters():
                assert p.grad is not None
                p.sub_(0.1 * p.grad)


def test_resume_mid_group_continues_exactly() -> None:
    """The held group (batch, δ, the attacker's inputs) and its counters round-trip through the
    defense's modules and state, so a run stopped mid-group goes on as if never stopped."""

    def run(defense: defenses.Defense, model: nn.Module, ctx: TrainContext, steps: range) -> list[float]:
        losses = []
        for step in steps:
            ctx.step = step
            x, y = data.load("synthetic", "train", n=8, start=8 * step)
            loss, _ = defense(model, x, y, ctx)
            model.zero_grad()
            loss.backward()
            losses.append(float(loss.detach()))
        return losses

    options = {"replays": 4, "refine_steps": 0, "l1_topk": 6}
    torch.manual_seed(0)
    model = _tiny_model().train()
    defense, ctx = defenses.create("metaat", list(THREATS), **options), _ctx()
    run(defense, model, ctx, range(6))  # mid-way through the second group
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = {f"{m}.{k}": v.clone() for m, mod in defense.modules().items() for k, v in mod.state_dict().items()}
    saved_state, rng = defense.state_dict(), ctx.generator.get_state()
    opt_state = copy.deepcopy(defense.optimizers()["attacker"].state_dict())
    straight = run(defense, model, ctx, range(6, 11))

    model.load_state_dict(saved_model)
    again = defenses.create("metaat", list(THREATS), **options)
    again.setup(model, torch.device("cpu"), 10, (1, 12, 12))
    for name, mod in again.modules().items():
        mod.load_state_dict({k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{name}.")})
    again.optimizers()["attacker"].load_state_dict(opt_state)
    again.load_state_dict(saved_state)
    ctx.generator.set_state(rng)
    assert isinstance(again.modules()["replay"], ReplayState) and again.modules()["replay"].replayed == 2
    assert run(again, model, ctx, range(6, 11)) == straight


def test_a_run_resumed_across_an_epoch_ends_bit_exact(tmp_path: Path) -> None:
    """Through the loop's checkpoint files: 6 steps per epoch at 4 replays leave a group of 2 held at
    the epoch's end (its attacker update is still due); the resumed run ends as the straight one."""
    options = {"replays": 4, "refine_steps": 0}
    straight = _fit(tmp_path / "a", options, n=48, epochs=2)
    _fit(tmp_path / "b", options, n=48, epochs=1)
    from metaat.train.checkpoint import read_checkpoint

    x, y = data.load("synthetic", "train", n=48)
    cfg = TrainConfig.from_yaml(tmp_path / "b" / "config.yaml", epochs=2)
    model = create("cnn-small", 10, 1, 12)
    resumed = fit(
        model, defenses.create("metaat", list(THREATS), **options), x, y, cfg, tmp_path / "b", resume=True, quiet=True
    )
    assert resumed.global_step == straight.global_step == 12
    a, b = read_checkpoint(tmp_path / "a"), read_checkpoint(tmp_path / "b")
    for key, value in a.model_state.items():
        assert torch.equal(value, b.model_state[key]), key
    assert any(k.startswith("defense.module.replay.") for k in a.tensors)
    for key in (k for k in a.tensors if k.startswith(("defense.", "optim.defense."))):
        assert torch.equal(a.tensors[key], b.tensors[key]), key
    assert a.state["defense"]["state"] == b.state["defense"]["state"]


def test_a_rank_whose_held_batch_was_not_saved_starts_afresh() -> None:
    state = ReplayState()
    state.load_state_dict({"x": torch.ones(2, 1, 3, 3), "y": torch.zeros(2), "delta": torch.zeros(2, 1, 3, 3),
                           "delta0": torch.zeros(2, 1, 3, 3), "grads": torch.zeros(1, 2, 1, 3, 3)})  # fmt: skip
    state.load_extra({"replayed": 2, "threat": 1, "last_step": 5, "checksum": 17.0})  # another rank's sum
    assert state.replayed == 0 and state.x.numel() == 0 and state.last_step == 5
    state.load_state_dict({k: torch.ones(2) for k in ReplayState.NAMES})
    state.load_extra({"replayed": 2, "threat": 1, "last_step": 5, "checksum": 2.0})
    assert state.replayed == 2 and state.threat == 1


def test_keep_top_k_and_the_sparse_projection() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=g)
    delta = torch.randn(16, 1, 8, 8, generator=g)
    for k, eps in itertools.product((1, 5, 20), (0.5, 3.0, 30.0)):
        out = project_l1_sparse(delta, x, eps, k)
        flat = out.flatten(1)
        assert int((flat != 0).sum(1).max()) <= k
        assert bool((flat.abs().sum(1) <= eps * (1 + 1e-6)).all())
        assert bool(((x + out) >= 0).all() and ((x + out) <= 1).all())
    assert torch.equal(keep_top_k(delta, 64), delta)
    with pytest.raises(ValueError, match="k must be >= 1"):
        keep_top_k(delta, 0)


def test_the_sparse_projection_is_exact_without_the_box() -> None:
    """Top-k then the L1 projection is the nearest point of {‖δ‖₀ ≤ k} ∩ {‖δ‖₁ ≤ eps} (Kyrillidis et al.
    2013): checked against every support of size k."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(20, 6, generator=g) * 2
    x, box, eps, k = torch.zeros(20, 6), (-100.0, 100.0), 1.5, 2
    ours = project_l1_sparse(z, x, eps, k, box)
    best = torch.full((20,), float("inf"))
    for support in itertools.combinations(range(6), k):
        mask = torch.zeros(6, dtype=torch.bool)
        mask[list(support)] = True
        cand = project_l1(z * mask, x, eps, box)
        best = torch.minimum(best, (cand - z).norm(dim=1))
    assert torch.allclose((ours - z).norm(dim=1), best, atol=1e-5)


def test_the_sparse_l1_step_spends_the_budget_on_k_coordinates() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.full((8, 1, 10, 10), 0.5)
    delta = torch.randn(8, 1, 10, 10, generator=g) * 0.01  # well inside the ball
    out = sparse_l1_step(delta, x, ThreatModel.parse("l1:2"), k=10)
    flat = out.flatten(1)
    assert int((flat != 0).sum(1).max()) <= 10
    assert torch.allclose(flat.abs().sum(1), torch.full((8,), 2.0), atol=1e-4)  # on the sphere, inside the box
    with pytest.raises(ValueError, match="for an l1 threat"):
        sparse_l1_step(delta, x, ThreatModel.parse("linf:0.1"), k=10)


def test_the_learned_l1_start_is_sparse_and_in_the_ball() -> None:
    """With ``l1_topk`` = k and no refinement, the model trains on the learned step itself: at most k
    changed coordinates per example, inside the L1 ball and the box; the attacker still learns."""
    torch.manual_seed(0)
    model = _tiny_model().train()
    threats = ("l1:6",)
    defense = defenses.create("metaat", list(threats), l1_topk=5, refine_steps=0, consistency=0.0)
    seen: list[torch.Tensor] = []
    model.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    x, y = data.load("synthetic", "train", n=16)
    loss, _ = defense(model, x, y, _ctx(threats))
    before = [p.detach().clone() for p in defense.modules()["attacker"].parameters()]
    model.zero_grad()
    loss.backward()
    delta = (seen[-1] - x).flatten(1)
    assert int((delta != 0).sum(1).max()) <= 5 and int((delta != 0).sum(1).min()) >= 1
    assert bool((delta.abs().sum(1) <= 6 * (1 + 1e-6)).all())
    assert bool(((seen[-1] >= 0) & (seen[-1] <= 1)).all())
    after = list(defense.modules()["attacker"].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
