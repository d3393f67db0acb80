"""The text meta-learners (``l2l`` and ``metaat`` on syn:k / typo:k): the learned attacker's proposals
stay in their set, it learns to raise the target's loss, the defenses train with the passes their
docstring states, the attacker is checkpointed and resumed, and bad options are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_text_attacks import TEXTS, _encode, _space
from test_text_training import Y, _cnn, _ctx

import metaat.domains.text  # noqa: F401  (registers kinds, attacks and defenses)
from metaat import defenses
from metaat.defenses.metaat import MetaAT
from metaat.domains.text.defenses.learned import TextL2L, TextMetaAT
from metaat.domains.text.defenses.substitution_attacker import (
    SubstitutionAttacker,
    SubstitutionSpec,
    apply,
    candidates,
    flip_choice,
    propose,
    relax,
    score,
)
from metaat.domains.text.space import activate
from metaat.domains.text.threats import syn_contains, typo_contains
from metaat.threats import ThreatModel
from metaat.train import TrainConfig, fit
from metaat.train.checkpoint import read_checkpoint
from metaat.train.cost import CostMeter

THREATS = ["syn:2", "typo:2"]


def _inside(adv: torch.Tensor, ids: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    space = _space()
    k = int(threat.eps)
    if threat.norm == "typo":
        return typo_contains(adv, ids, k, space)
    return syn_contains(adv, ids, k, space, threat.norm)


@pytest.mark.parametrize("threat", ["syn:1", "syn:2", "typo:1", "typo:2", "nbr:1"])
def test_proposals_and_refinements_stay_in_the_set(threat: str) -> None:
    space = activate(_space())
    ids = _encode(space, TEXTS)
    before = ids.clone()
    t = ThreatModel.parse(threat)
    k = int(t.eps)
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = _cnn(seed).eval()
        attacker = SubstitutionAttacker(SubstitutionSpec(8, hidden=16))
        cands = candidates(model, ids, t, space)
        scores = score(attacker, ids, cands, t)
        for explore in (0.0, 1.0):
            chosen, which = propose(scores, cands, k, torch.Generator().manual_seed(seed), explore)
            adv = apply(ids, cands, chosen, which)
            assert _inside(adv, ids, t).all(), (threat, seed, explore)
            assert ((adv != ids).sum(dim=1) <= k).all() and (chosen.sum(dim=1) <= k).all()
        chosen, which = flip_choice(torch.randn(*ids.shape, 8), cands, k)
        assert _inside(apply(ids, cands, chosen, which), ids, t).all()
        # the whole budget is spent where there are enough candidate positions
        assert torch.equal(chosen.sum(dim=1), cands.has.sum(dim=1).clamp(max=k))
        assert torch.equal(ids, before)


def test_relaxation_moves_only_towards_candidates_within_the_budget() -> None:
    space = activate(_space())
    ids = _encode(space, TEXTS)
    t = ThreatModel.parse("syn:2")
    cands = candidates(_cnn(0), ids, t, space)
    scores = score(SubstitutionAttacker(SubstitutionSpec(8, hidden=16)), ids, cands, t)
    moved = relax(scores, cands, 2).detach() - cands.emb
    assert (moved[~cands.has] == 0).all()  # no candidate: the vector stays
    # each move is a convex combination of (e_c - e_t) scaled by a weight <= 1: never longer than the farthest one
    longest = ((cands.vectors - cands.emb.unsqueeze(2)).norm(dim=-1) * cands.allowed).amax(dim=-1)
    assert (moved.norm(dim=-1) <= longest + 1e-5).all()


def test_the_attacker_learns_to_raise_the_relaxed_loss_of_a_fixed_model() -> None:
    space = activate(_space())
    ids = _encode(space, TEXTS)
    t = ThreatModel.parse("syn:2")
    model = _cnn(3).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    attacker = SubstitutionAttacker(SubstitutionSpec(8, hidden=16))
    opt = torch.optim.Adam(attacker.parameters(), lr=3e-2)
    cands = candidates(model, ids, t, space)
    losses = []
    for _ in range(10):
        relaxed = relax(score(attacker, ids, cands, t), cands, 2)
        loss = torch.nn.functional.cross_entropy(model(ids, embedded=relaxed), Y)
        opt.zero_grad()
        (-loss).backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] > losses[0] + 0.05, losses


@pytest.mark.parametrize(
    ("name", "options", "passes"),
    [
        ("metaat", {}, 3.0),
        ("metaat", {"refine_steps": 2}, 4.0),
        ("metaat", {"refine_steps": 0, "consistency": 0.0}, 2.0),
        ("metaat", {"imitate": 0.0, "adaptive": False}, 3.0),
        ("l2l", {}, 2.0),
        ("l2l", {"clean_weight": 0.5, "explore": 0.0}, 3.0),
    ],
)
def test_text_meta_defenses_train_with_the_stated_passes(name: str, options: dict[str, object], passes: float) -> None:
    space = activate(_space())
    ids = _encode(space, TEXTS)
    before = ids.clone()
    model = _cnn(0).train()
    meter = CostMeter()
    meter.attach(model)
    defense = defenses.create(name, THREATS, **options)
    ctx = _ctx(THREATS)
    loss, metrics = defense(model, ids, Y, ctx)
    assert all(p.grad is None for p in model.parameters())  # the attacker's pass leaves the target alone
    attacker = defense.modules()["attacker"]
    assert all(p.grad is None for p in attacker.parameters())  # its step is taken and cleared
    start = {k: v.clone() for k, v in attacker.state_dict().items()}
    loss.backward()
    meter.train_examples = len(Y)
    assert torch.isfinite(loss) and metrics["loss"] == pytest.approx(float(loss.detach()))
    assert meter.passes_per_example == pytest.approx(passes)
    assert model.embedding.weight.grad is not None and model.convs[0].weight.grad is not None
    assert all(p.grad is None for p in attacker.parameters())  # the target's backward does not reach it
    assert model.training and torch.equal(ids, before)
    defense(model, ids, Y, ctx)
    assert any(not torch.equal(start[k], v) for k, v in attacker.state_dict().items())  # it learns
    json.dumps(defense.state_dict())


def test_create_picks_the_text_variants_for_discrete_threats() -> None:
    assert type(defenses.create("metaat", THREATS)) is TextMetaAT
    assert type(defenses.create("l2l", ["syn:1"])) is TextL2L
    assert type(defenses.create("metaat", ["linf:0.1"])) is MetaAT  # continuous: the core recipe


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("metaat", {"refine_steps": -1}, "refine_steps must be an integer >= 0"),
        ("metaat", {"attacker_lr": 0.0}, "attacker_lr must be a finite number > 0"),
        ("metaat", {"consistency": -1.0}, "consistency must be a finite number >= 0"),
        ("metaat", {"ema_decay": 1.0}, r"ema_decay must lie in \[0, 1\)"),
        ("l2l", {"hidden": 0}, "hidden must be an integer >= 1"),
        ("l2l", {"explore": -1.0}, "explore must be a finite number >= 0"),
    ],
)
def test_bad_options_are_one_line_errors(name: str, options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        defenses.create(name, THREATS, **options)
    assert "\n" not in str(err.value)


def test_unknown_options_list_the_valid_ones() -> None:
    with pytest.raises(TypeError, match="unknown option.*attacker_steps.*valid options:.*refine_steps"):
        defenses.create("metaat", THREATS, attacker_steps=2)


def test_adaptive_sampling_favours_the_weaker_threat_and_resumes() -> None:
    defense = defenses.create("metaat", THREATS)
    assert defense.threat_probabilities() == pytest.approx([0.5, 0.5])  # type: ignore[attr-defined]
    defense.acc = [0.9, 0.2]  # type: ignore[attr-defined]
    p = defense.threat_probabilities()  # type: ignore[attr-defined]
    assert p[1] > p[0]
    again = defenses.create("metaat", THREATS)
    again.load_state_dict(json.loads(json.dumps(defense.state_dict())))
    assert again.threat_probabilities() == pytest.approx(p)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="checkpoint trained on threats"):
        defenses.create("metaat", ["syn:2"]).load_state_dict(defense.state_dict())


def _fit(out: Path, epochs: int, resume: bool = False) -> object:
    space = activate(_space())
    ids = _encode(space, TEXTS * 4)
    y = Y.repeat(4)
    cfg = TrainConfig(
        data="mr",
        model="word-cnn",
        defense="metaat",
        threats=tuple(THREATS),
        epochs=epochs,
        batch_size=8,
        schedule="constant",
        eval_n=0,
        threads=1,
        device="cpu",
    )
    return fit(_cnn(0), defenses.create("metaat", THREATS), ids, y, cfg, out, resume=resume, quiet=True, num_classes=2)


def test_fit_checkpoints_the_attacker_and_resumes_exactly(tmp_path: Path) -> None:
    straight = _fit(tmp_path / "a", epochs=2)
    _fit(tmp_path / "b", epochs=1)
    resumed = _fit(tmp_path / "b", epochs=2, resume=True)
    assert straight.global_step == resumed.global_step == 6  # type: ignore[attr-defined]
    a, b = read_checkpoint(tmp_path / "a"), read_checkpoint(tmp_path / "b")
    keys = [k for k in a.tensors if k.startswith(("defense.", "optim.defense."))]
    assert any(k.startswith("defense.module.attacker") for k in keys)
    for key in keys:
        assert torch.equal(a.tensors[key], b.tensors[key]), key
    for key, value in a.model_state.items():
        assert torch.equal(value, b.model_state[key]), key
    assert a.state["defense"]["state"] == b.state["defense"]["state"]
