"""Cross-task meta-pretraining: the channel-shared attacker, the held-out evaluation, the artifact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from metaat.meta.crosstask import pretrain_tasks
from metaat.meta.generators import LearnedAttacker
from metaat.meta.heldout import evaluate_heldout_task
from metaat.meta.io import load_attacker, load_generator, save_generator
from metaat.meta.pretrain import Task, adapt, attack_loss
from metaat.meta.shared import ChannelSharedAttacker
from metaat.meta.tasks import MetaSettings, TaskFile, parse_task_file
from metaat.threats import ThreatModel, in_threat

BOX = (-8.0, 8.0)


def signals(name: str, channels: int, length: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes: a per-class sinusoid per channel plus noise, in σ units."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    t = torch.linspace(0, 1, length)
    freq = torch.tensor([2.0, 5.0])[y][:, None, None] * (1 + torch.arange(channels))[None, :, None] / channels
    x = torch.sin(6.28 * freq * t) + 0.5 * torch.randn(n, channels, length, generator=g)
    return x.clamp(*BOX), y


SHAPES = {"three": (3, 24), "five": (5, 32), "one": (1, 40)}


def loader(name: str, tf: TaskFile) -> Any:
    c, length = SHAPES[name]
    x, y = signals(name, c, length, 160, seed=len(name))
    return x[:128], y[:128], x[128:], y[128:], 2, BOX


def task_file(**meta: Any) -> TaskFile:
    raw = {
        "name": "tiny",
        "domain": "sensors",
        "train": {
            "datasets": ["three", "five"],
            "models": ["fcn-small"],
            "defenses": ["standard"],
            "stages": [5, 20],
            "threats": ["linf:0.5", "l2:2"],
        },
        "heldout": {"datasets": ["one"], "threats": ["linf:0.8"]},
        "meta": {
            "meta_iters": 6,
            "inner_steps": 2,
            "batch_size": 32,
            "width": 4,
            "adapt_steps": [0, 1, 3],
            "seed": 0,
            **meta,
        },
    }
    return parse_task_file(raw, check_names=False)


def test_shared_attacker_equals_its_specialisation_on_any_channel_count() -> None:
    torch.manual_seed(0)
    attacker = ChannelSharedAttacker(width=4, rank=1)
    for p in attacker.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    for c, threat in ((1, "linf:0.5"), (3, "l2:2"), (7, "spike:3,1")):
        x = torch.randn(4, c, 20).clamp(*BOX)
        grad, delta = torch.randn_like(x), torch.zeros_like(x)
        t = ThreatModel.parse(threat).with_box(*BOX)
        shared = attacker(x, delta, grad, t)
        plain = attacker.specialise(c)
        assert isinstance(plain, LearnedAttacker) and plain.spec.in_channels == c
        torch.testing.assert_close(plain(x, delta, grad, t), shared, atol=1e-6, rtol=1e-5)
        assert bool(in_threat(x + shared, x, t).all())


def test_adaptation_improves_the_attacker_on_a_tiny_heldout_model() -> None:
    torch.manual_seed(0)
    x, y = signals("one", 1, 40, 96, seed=3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval().requires_grad_(False)
    task = Task("one/mlp", model, ThreatModel.parse("l2:3").with_box(*BOX))
    attacker = ChannelSharedAttacker(width=4, rank=1)
    cfg = MetaSettings(inner_steps=20, inner_lr=1e-2, batch_size=96)
    gen = torch.Generator().manual_seed(0)
    snapshot = {k: v.clone() for k, v in attacker.state_dict().items()}
    before = float(attack_loss(attacker, task, x, y, cfg, torch.Generator().manual_seed(1)).detach())
    adapted, _ = adapt(attacker, task, lambda: (x, y), cfg, gen)
    after = float(attack_loss(adapted, task, x, y, cfg, torch.Generator().manual_seed(1)).detach())
    assert after > 2 * before, (before, after)  # the target's loss under the attack more than doubles
    assert all(torch.equal(v, snapshot[k]) for k, v in attacker.state_dict().items())  # adapt works on a copy
    rows = evaluate_heldout_task(attacker, task, x, y, [(x, y)] * 5, cfg, (0, 5), reference=None)
    assert set(rows["learned"]) == {"0", "5"} and rows["reference"] is None
    assert rows["learned"]["5"]["adapt_passes"] == 5 * 2 * 96 and rows["pgd_same"]["passes"] == 1


def test_pretrain_tasks_saves_a_card_with_both_lists_and_heldout_results(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    tf = task_file()
    out = tmp_path / "attacker"
    attacker, card = pretrain_tasks(tf, out, loader=loader, reference=None)
    assert isinstance(attacker, ChannelSharedAttacker)
    assert set(card["heldout_tasks"]).isdisjoint(card["train_tasks"])
    assert len(card["train_tasks"]) == 2 * 1 * 1 * 2 * 2
    saved = json.loads((out / "generator.json").read_text())["metadata"]["cross_task"]
    assert saved["heldout_tasks"] == card["heldout_tasks"] and saved["train_tasks"] == card["train_tasks"]
    assert set(saved["heldout_results"]) == set(card["heldout_tasks"])
    for row in saved["heldout_results"].values():
        assert set(row["learned"]) == {"0", "1", "3"}
        for key in ("pgd_same", "fgsm", "pgd10"):
            assert 0.0 <= row[key]["success"] <= 1.0
    assert saved["cost"]["meta_passes"] > 0 and saved["cost"]["target_passes"] > 0
    # resume: nothing left to do, the same weights
    again, card2 = pretrain_tasks(tf, out, loader=loader, reference=None, resume=True)
    assert all(
        torch.equal(p, q) for p, q in zip(attacker.state_dict().values(), again.state_dict().values(), strict=True)
    )
    assert card2["heldout_results"] == card["heldout_results"]


def test_artifact_round_trips_bit_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    attacker = ChannelSharedAttacker(width=4, rank=1)
    for p in attacker.parameters():
        p.data.add_(torch.randn_like(p))
    save_generator(attacker, tmp_path / "a", metadata={"cross_task": {"domain": "sensors"}})
    loaded = load_generator(tmp_path / "a")
    assert isinstance(loaded, ChannelSharedAttacker) and loaded.spec == attacker.spec
    for (k, v), (k2, v2) in zip(attacker.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and v.dtype == v2.dtype and torch.equal(v, v2)
    save_generator(loaded, tmp_path / "b", metadata={"cross_task": {"domain": "sensors"}})
    assert (tmp_path / "a/generator.safetensors").read_bytes() == (tmp_path / "b/generator.safetensors").read_bytes()
    warm = load_attacker(tmp_path / "a", in_channels=6, rank=1, domain="sensors")
    assert isinstance(warm, LearnedAttacker) and warm.spec.in_channels == 6


@pytest.mark.parametrize(
    ("corrupt", "kwargs", "match"),
    [
        ("flip", {"in_channels": 3, "rank": 1}, "checksum mismatch"),
        ("none", {"in_channels": 3, "rank": 1, "domain": "images"}, "pretrained on the sensors domain, not images"),
        ("none", {"in_channels": 3, "rank": 2}, "rank-1 inputs, data has rank 2"),
        ("plain", {"in_channels": 3, "rank": 1}, "built for 1 channels, data has 3"),
        ("spec", {"in_channels": 3, "rank": 1}, "unknown field"),
    ],
)
def test_corrupt_or_mismatched_artifact_is_refused_with_one_line(
    tmp_path: Path, corrupt: str, kwargs: dict[str, Any], match: str
) -> None:
    gen: torch.nn.Module = (
        LearnedAttacker(in_channels=1, rank=1) if corrupt == "plain" else ChannelSharedAttacker(width=4)
    )
    folder = save_generator(gen, tmp_path / "a", metadata={"cross_task": {"domain": "sensors"}})
    if corrupt == "flip":
        data = bytearray((folder / "generator.safetensors").read_bytes())
        data[-3] ^= 0xFF
        (folder / "generator.safetensors").write_bytes(bytes(data))
    if corrupt == "spec":
        meta = json.loads((folder / "generator.json").read_text())
        meta["spec"]["channels"] = 4
        (folder / "generator.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=match) as info:
        load_attacker(folder, **kwargs)
    assert "\n" not in str(info.value)


def _cli() -> Any:
    import typer

    from metaat.cli.meta import register

    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps typer from collapsing the group
        """Nothing."""

    return app


TINY_IMAGES = """
name: tiny-images
domain: images
train: {datasets: [synthetic], models: [mlp], defenses: [standard], stages: [10], threats: [linf:0.1, l2:1]}
heldout: {threats: [linf:0.2]}
meta: {meta_iters: 3, inner_steps: 1, batch_size: 32, width: 4, n: 200, eval_n: 40, eval_split: train,
       adapt_steps: [0, 1]}
"""


def test_meta_pretrain_command_with_a_task_file(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    torch.set_num_threads(1)
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(TINY_IMAGES)
    out = tmp_path / "attacker"
    result = CliRunner().invoke(_cli(), ["meta-pretrain", "--tasks", str(tasks), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    card = json.loads((out / "generator.json").read_text())["metadata"]["cross_task"]
    assert card["domain"] == "images" and card["rank"] == 2
    (row,) = card["heldout_results"].values()
    assert row["threat"] == "linf:0.2" and row["reference"]["label"] == "AutoAttack APGD-CE"
    assert row["reference"]["passes"] == 100 and row["pgd10"]["passes"] == 10
    assert isinstance(load_attacker(out, in_channels=1, rank=2, domain="images"), LearnedAttacker)
    tasks.write_text(TINY_IMAGES.replace("heldout: {threats: [linf:0.2]}", "heldout: {threats: [linf:0.1]}"))
    bad = CliRunner().invoke(_cli(), ["meta-pretrain", "--tasks", str(tasks), "--out", str(tmp_path / "b")])
    assert bad.exit_code != 0 and "heldout.threats: linf:0.1 also in train.threats" in bad.output


def test_warm_start_accepts_a_cross_task_artifact(tmp_path: Path) -> None:
    from metaat.defenses import l2l

    if not hasattr(l2l, "load_attacker"):
        pytest.skip("defenses/l2l.py build_attacker does not call metaat.meta.io.load_attacker yet (requested)")
    save_generator(ChannelSharedAttacker(width=4), tmp_path / "a", metadata={"cross_task": {"domain": "sensors"}})
    attacker = l2l.build_attacker(6, 32, 3, str(tmp_path / "a"), torch.device("cpu"), rank=1)
    assert isinstance(attacker, LearnedAttacker) and attacker.spec.in_channels == 6 and attacker.training
    with pytest.raises(ValueError, match="rank-1 inputs, data has rank 2"):
        l2l.build_attacker(1, 32, 3, str(tmp_path / "a"), torch.device("cpu"), rank=2)
