"""``torchrun --nproc_per_node=2 -m metaat.cli train``: DDP over gloo on a tiny synthetic problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metaat.train import TrainConfig, train

torch.set_num_threads(1)
COMMON = [
    "--data", "synthetic", "--model", "mlp", "--train-subset", "256", "--epochs", "2", "--eval-n", "40",
    "--eval-steps", "2", "--threads", "1", "--device", "cpu", "--quiet",
]  # fmt: skip


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*command, "-m", "metaat.cli", "train", *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_gloo_processes_train_like_one_process_with_the_combined_batch(tmp_path: Path) -> None:
    # Rank r takes perm[r::2] in batches of 16: together exactly the single process's batches of 32,
    # and DDP averages the two half-batch gradients into the full-batch gradient.
    ddp = torchrun(*COMMON, "--defense", "standard", "--batch-size", "16", "--out", str(tmp_path / "ddp"))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["cost"]["passes_per_example"] == 1.0
    assert summary["cost"]["train_examples"] == 2 * 128  # per rank: half of 256, two epochs

    config = TrainConfig.from_yaml(tmp_path / "ddp" / "config.yaml").replace(batch_size=32)
    single = train(config, tmp_path / "single", quiet=True)
    a = load_file(str(tmp_path / "ddp" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "single" / "final" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert summary["metrics"]["eval"]["n"] == 40
    assert summary["metrics"]["eval"]["clean"] == pytest.approx(single.metrics["eval"]["clean"], abs=0.03)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_adversarial_training_under_ddp_attacks_through_the_wrapper(tmp_path: Path) -> None:
    run = torchrun(*COMMON, "--defense", "trades", "-o", "steps=2", "--checkpoint-every", "3", "--out", str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["cost"]["passes_per_example"] == 2 + 2.5
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert "rank1.rng.gen.attack" in load_file(str(tmp_path / "checkpoint" / "state.safetensors"))
