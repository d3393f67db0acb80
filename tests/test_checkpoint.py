"""Training checkpoints: atomic writes, verified reads, exact optimizer / RNG / defense state."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import metaat.data as data
import metaat.defenses as defenses
import metaat.models as models
from metaat.models import CheckpointError
from metaat.train import TrainConfig, fit
from metaat.train.checkpoint import (
    load_optimizer_state,
    load_rng_state,
    optimizer_state,
    read_checkpoint,
    rng_state,
    state_digest,
    write_checkpoint,
)

torch.set_num_threads(1)


def small_run(out: Path, epochs: int = 2, resume: bool = False, model: nn.Module | None = None) -> None:
    config = TrainConfig(
        data="synthetic", model="mlp", defense="eat", threats=("linf:0.1", "l1:5"), options={"steps": 1},
        epochs=epochs, batch_size=32, eval_n=0, threads=1, optimizer="sgd", lr=0.05,
    )  # fmt: skip
    torch.manual_seed(0)
    net = model if model is not None else models.create("mlp", 10, 1, 12)
    defense = defenses.create("eat", ["linf:0.1", "l1:5"], steps=1)
    fit(net, defense, *data.load("synthetic", "train", n=64), config, out, resume=resume, quiet=True)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    small_run(tmp_path)
    return tmp_path


def corrupt(path: Path, truncate: bool = False) -> None:
    raw = bytearray(path.read_bytes())
    if truncate:
        path.write_bytes(bytes(raw[: len(raw) // 2]))
    else:
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("name", "truncate", "message"),
    [
        ("state.safetensors", False, "state.safetensors: checksum mismatch"),
        ("model.safetensors", True, "model.safetensors: checksum mismatch"),
        ("state.json", True, "state.json: not a readable checkpoint state"),
    ],
)
def test_corrupt_or_truncated_checkpoint_is_refused_naming_the_file_and_nothing_is_touched(
    run_dir: Path, name: str, truncate: bool, message: str
) -> None:
    corrupt(run_dir / "checkpoint" / name, truncate=truncate)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match=f"{message}.*previous checkpoint .*checkpoint.prev is kept"):
        small_run(run_dir, epochs=3, resume=True)
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before
    previous = read_checkpoint(run_dir / "checkpoint.prev")
    assert previous.state["epoch"] == 1


@pytest.mark.parametrize(
    ("key", "value"),
    [("epoch", -5), ("step_in_epoch", 99), ("global_step", 1_000_000), ("epoch", "1"), ("config", {"lr": 0.5})],
)
def test_a_hand_edited_state_json_is_refused(run_dir: Path, key: str, value: object) -> None:
    path = run_dir / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    assert state["state_sha256"] == state_digest(state)
    if key == "config":
        value = {**state["config"], **value}  # type: ignore[dict-item]
    path.write_text(json.dumps({**state, key: value}))
    with pytest.raises(CheckpointError, match="state.json: its content does not match its state_sha256"):
        small_run(run_dir, epochs=3, resume=True)


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("epoch", -5, "epoch must be a non-negative integer; got -5"),
        ("epoch", "1", "epoch must be a non-negative integer; got '1'"),
        ("epoch", 7, "epoch 7 is past the run's 2 epochs"),
        ("step_in_epoch", 99, "step_in_epoch 99 exceeds steps_per_epoch 2"),
        ("files", [1], "files must be an object; got list"),
        ("rng", None, "rng must be a list; got NoneType"),
        ("config", None, "config must be an object"),
    ],
)
def test_a_damaged_state_json_without_its_digest_is_still_refused_by_its_fields(
    run_dir: Path, key: str, value: object, problem: str
) -> None:
    """Checkpoints written before the digest existed carry none: their fields are still checked."""
    path = run_dir / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    del state["state_sha256"]
    path.write_text(json.dumps(state))
    read_checkpoint(run_dir)  # an intact legacy checkpoint still loads
    path.write_text(json.dumps({**state, key: value}))
    with pytest.raises(CheckpointError, match=f"not a usable checkpoint state \\({problem}"):
        read_checkpoint(run_dir)


def test_a_failed_write_keeps_the_previous_checkpoint(run_dir: Path) -> None:
    before = (run_dir / "checkpoint" / "state.json").read_text()
    model = models.create("mlp", 10, 1, 12)
    with pytest.raises(TypeError):
        write_checkpoint(run_dir, model, {}, {"not json": object()})
    assert (run_dir / "checkpoint" / "state.json").read_text() == before
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".checkpoint.tmp")]
    read_checkpoint(run_dir)


def test_a_crash_between_the_two_renames_falls_back_to_the_previous_checkpoint(run_dir: Path) -> None:
    (run_dir / "checkpoint").rename(run_dir / "half-written")
    assert read_checkpoint(run_dir).path == run_dir / "checkpoint.prev"


def test_resume_continues_the_run_and_the_checkpoint_loads_as_a_model(run_dir: Path) -> None:
    small_run(run_dir, epochs=3, resume=True)
    state = read_checkpoint(run_dir).state
    assert (state["epoch"], state["status"]) == (3, "completed")
    assert state["defense"]["state"][0]["threats"] == ["linf:0.1", "l1:5"]
    model = models.load_model(run_dir / "checkpoint")
    assert model(torch.rand(2, 1, 12, 12)).shape == (2, 10)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_a_model_without_a_metaat_spec_is_checkpointed_as_weights(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(144, 10))
    small_run(tmp_path, epochs=1, model=net)
    ckpt = read_checkpoint(tmp_path)
    assert set(ckpt.model_state) == set(net.state_dict())
    assert not (tmp_path / "checkpoint" / "model.json").exists()
    small_run(tmp_path, epochs=2, resume=True, model=nn.Sequential(nn.Flatten(), nn.Linear(144, 10)))


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_optimizer_state_round_trips_exactly(kind: str) -> None:
    def make() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        net = nn.Linear(4, 3)
        opt: torch.optim.Optimizer
        if kind == "sgd":
            opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        else:
            opt = torch.optim.Adam(net.parameters(), lr=0.01)
        return net, opt

    def step(net: nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(seed))
        opt.zero_grad()
        net(x).square().sum().backward()
        opt.step()

    net_a, opt_a = make()
    for s in range(3):
        step(net_a, opt_a, s)
    tensors, meta = optimizer_state(opt_a, "optim")
    meta = json.loads(json.dumps(meta))  # it must survive JSON
    net_b, opt_b = make()
    net_b.load_state_dict(net_a.state_dict())
    load_optimizer_state(opt_b, tensors, meta, "optim")
    step(net_a, opt_a, 9)
    step(net_b, opt_b, 9)
    assert all(torch.equal(a, b) for a, b in zip(net_a.parameters(), net_b.parameters(), strict=True))


def test_rng_state_round_trips_through_json_and_tensors() -> None:
    gen = torch.Generator().manual_seed(5)
    tensors, meta = rng_state({"attack": gen})
    meta = json.loads(json.dumps(meta))
    expected = (torch.rand(3), torch.rand(3, generator=gen), np.random.rand(), random.random())
    torch.rand(7), torch.rand(7, generator=gen), np.random.rand(5), random.random()
    load_rng_state(tensors, meta, {"attack": gen})
    again = (torch.rand(3), torch.rand(3, generator=gen), np.random.rand(), random.random())
    assert torch.equal(expected[0], again[0]) and torch.equal(expected[1], again[1])
    assert expected[2:] == again[2:]


def test_rng_state_holds_cuda_generators_only_when_asked() -> None:
    """Under DDP every rank must save the same keys, whether or not CUDA was initialised on it (a CPU
    run's rank 0 on a GPU machine initialises CUDA to read the GPU's name; the others do not)."""
    gen = torch.Generator().manual_seed(5)
    assert sorted(rng_state({"attack": gen})[0]) == ["rng.gen.attack", "rng.torch"]
    if torch.cuda.is_available():
        torch.cuda.init()
        assert sorted(rng_state({"attack": gen})[0]) == ["rng.gen.attack", "rng.torch"]
        with_cuda, meta = rng_state({"attack": gen}, cuda=True)
        assert "rng.cuda.0" in with_cuda
        expected = torch.rand(3, device="cuda")
        load_rng_state(with_cuda, meta, {"attack": gen})
        assert torch.equal(torch.rand(3, device="cuda"), expected)


def test_the_state_digest_survives_the_trip_through_json() -> None:
    """int keys become strings and tuples lists on disk: the digest is taken as read back."""
    state = {"defense": {"state": [{2: (1, 2), 10: 0.1}]}, "files": {}, "epoch": 1}
    assert state_digest(state) == state_digest(json.loads(json.dumps(state)))
    assert state_digest(state) != state_digest({**state, "epoch": 2})
