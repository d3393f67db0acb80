"""Meta-pretraining of the learned attacker (REPTILE / FOMAML) and its command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

import metaat.attacks as attacks
from metaat.cli.meta import register
from metaat.meta import LearnedAttacker, load_generator
from metaat.meta.pretrain import PretrainConfig, pretrain

TINY = dict(
    data="synthetic",
    n=400,
    threats=("linf:0.2", "l2:1", "l1:6"),
    models=("mlp",),
    target_kinds=("standard", "fast"),
    stages=(5, 30),
    meta_iters=12,
    inner_steps=2,
    batch_size=32,
    hidden=8,
)


@pytest.mark.parametrize("algorithm", ["reptile", "fomaml"])
def test_pretrain_saves_an_attacker_that_attacks(tmp_path: Path, algorithm: str) -> None:
    torch.set_num_threads(1)
    cfg = PretrainConfig(**TINY, algorithm=algorithm)  # type: ignore[arg-type]
    attacker, summary = pretrain(cfg, tmp_path / "attacker")
    assert isinstance(attacker, LearnedAttacker)
    assert len(summary["tasks"]) == 1 * 2 * 2 * 3  # models x kinds x stages x threats
    for result in summary["evaluation"].values():
        assert 0 <= result["learned"] <= 1 and 0 <= result["fgsm"] <= 1
    meta = json.loads((tmp_path / "attacker" / "generator.json").read_text())
    assert meta["metadata"]["config"]["algorithm"] == algorithm
    loaded = load_generator(tmp_path / "attacker")
    for a, b in zip(attacker.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    atk = attacks.create("learned", threat="l1:6", path=str(tmp_path / "attacker"))
    x = torch.rand(4, 1, 12, 12)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 10))
    out = atk(model, x, torch.zeros(4, dtype=torch.long))
    assert float((out - x).abs().flatten(1).sum(1).max()) <= 6 * (1 + 1e-5)


def test_pretrain_is_deterministic() -> None:
    torch.set_num_threads(1)
    cfg = PretrainConfig(**{**TINY, "meta_iters": 4, "stages": (5,)})  # type: ignore[arg-type]
    a, _ = pretrain(cfg)
    b, _ = pretrain(cfg)
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def test_pretrain_config_errors() -> None:
    with pytest.raises(ValueError, match="algorithm"):
        PretrainConfig(algorithm="maml")
    with pytest.raises(ValueError, match="stages"):
        PretrainConfig(stages=(10, 5))
    with pytest.raises(ValueError, match="target_kinds"):
        PretrainConfig(target_kinds=("robust",))
    for name in ("meta_lr", "inner_lr", "target_lr"):
        for bad in (float("nan"), float("inf"), 0.0):
            with pytest.raises(ValueError, match=f"{name} must be a finite number > 0"):
                PretrainConfig(**{name: bad})  # type: ignore[arg-type]


def test_meta_pretrain_command(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps typer from collapsing the group
        """Nothing."""

    runner = CliRunner()
    out = tmp_path / "attacker"
    args = [
        "meta-pretrain",
        "--data",
        "synthetic",
        "--out",
        str(out),
        "--n",
        "300",
        "--model",
        "mlp",
        "--threat",
        "linf:0.2",
        "--threat",
        "l2:1",
        "--stages",
        "5",
        "--iters",
        "3",
        "--inner-steps",
        "1",
        "--batch-size",
        "32",
        "--hidden",
        "8",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["out"] == str(out) and (out / "generator.safetensors").is_file()
    bad = runner.invoke(app, [*args[:-1], "--algorithm", "maml"])
    assert bad.exit_code == 2 and "algorithm" in bad.output
    stages_at = args.index("--stages") + 1
    bad = runner.invoke(app, [*args[:stages_at], "0,x", *args[stages_at + 1 :]])
    assert bad.exit_code == 2 and "--stages must be comma-separated integers" in " ".join(bad.output.split())
    meta_lr = runner.invoke(app, [*args, "--meta-lr", "nan"])
    assert meta_lr.exit_code == 2 and "meta_lr must be a finite number > 0" in " ".join(meta_lr.output.split())
    taken = tmp_path / "o.txt"
    taken.write_text("not a folder")
    out_at = args.index("--out") + 1
    bad_out = runner.invoke(app, [*args[:out_at], str(taken), *args[out_at + 1 :]])
    assert bad_out.exit_code == 2 and "it is a file" in " ".join(bad_out.output.split())
