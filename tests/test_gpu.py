"""The CUDA path: attacks, every defense, evaluation, resume and DDP over nccl, on a GPU.

Skipped where CUDA is absent (CI has no GPU). On a GPU machine run ``python -m pytest -m gpu``; the
rest of the suite runs there too, and every test that leaves ``--device`` at ``auto`` (resume,
training, the CLI) then trains on the GPU as well.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import metaat.data as data
import metaat.defenses as defenses
from metaat.eval import evaluate
from metaat.models.checkpoint import load_model
from metaat.train import TrainConfig, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

THREATS = ("linf:0.1", "l2:1.5", "l1:10")
CUDA = torch.device("cuda")


def _attack_cases() -> list[tuple[str, str | None]]:
    from test_attacks import CASES

    return CASES


@pytest.fixture(scope="module")
def trained_cuda() -> nn.Module:
    """A small CNN trained for a few seconds on synthetic images, on the GPU."""
    x, y = data.load("synthetic", "train", n=2000, noise=0.7)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 144, 10)).to(CUDA)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = x.to(CUDA), y.to(CUDA)
    for _ in range(5):
        for i in range(0, len(y), 100):
            loss = nn.functional.cross_entropy(model(x[i : i + 100]), y[i : i + 100])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.mark.parametrize(("name", "norm"), _attack_cases())
def test_every_attack_runs_on_cuda_and_stays_in_its_threat(
    name: str, norm: str | None, trained_cuda: nn.Module
) -> None:
    from test_attacks import check_output, make, threat_for

    x, y = data.load("synthetic", "test", n=32, noise=0.7)
    x, y = x.to(CUDA), y.to(CUDA)
    threat = threat_for(name, norm)
    x_adv = make(name, threat)(trained_cuda, x, y)
    assert x_adv.device.type == "cuda"
    check_output(x_adv, x, threat if norm is not None else None)


def _config(name: str, **changes: Any) -> TrainConfig:
    multi = bool(defenses.DEFENSES.get(name).multi_threat)  # type: ignore[attr-defined]
    base = TrainConfig(
        data="synthetic",
        model="cnn-small",
        defense=name,
        threats=THREATS if multi else THREATS[:1],
        epochs=1,
        train_subset=256,
        batch_size=64,
        eval_n=64,
        eval_steps=2,
        device="cuda",
        seed=0,
    )
    return base.replace(**changes)


@pytest.mark.parametrize(
    "name", [n for n in defenses.available() if not defenses.DEFENSES.get(n).__module__.startswith("metaat.domains.")]
)
def test_every_defense_trains_on_cuda_and_its_model_loads_on_cpu(name: str, tmp_path: Path) -> None:
    result = train(_config(name), tmp_path, quiet=True)
    assert result.status == "completed" and result.final_model is not None
    assert json.loads((tmp_path / "summary.json").read_text())["device"] == "cuda"
    x, _ = data.load("synthetic", "test", n=16)
    on_cpu = load_model(result.final_model, "cpu")
    on_gpu = load_model(result.final_model, "cuda")
    with torch.no_grad():
        a, b = on_cpu(x), on_gpu(x.to(CUDA)).cpu()
    assert torch.isfinite(a).all()
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_reference_apgd_evaluation_on_cuda_matches_cpu_within_noise(trained_cuda: nn.Module) -> None:
    x, y = data.load("synthetic", "test", n=96, noise=0.7)
    gpu = evaluate(trained_cuda, x, y, threats=("linf:0.05", "l2:0.5", "l1:5"), suite="apgd", checks=False)
    cpu_model = load_state_into_cpu_copy(trained_cuda)
    cpu = evaluate(cpu_model, x, y, threats=("linf:0.05", "l2:0.5", "l1:5"), suite="apgd", checks=False)
    assert gpu.clean == cpu.clean
    assert gpu.union <= min(gpu.robust.values())
    for threat in gpu.robust:
        # The reference APGD draws its random starts on the model's device, so the two runs differ by
        # a few points at most; a device bug (wrong gradients, no projection) moves them by far more.
        assert abs(gpu.robust[threat] - cpu.robust[threat]) <= 0.07, (threat, gpu.robust, cpu.robust)
    assert all(f.device.type == "cpu" for f in gpu.flags.values())


def load_state_into_cpu_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).cpu().eval()


def test_cuda_training_resumes_bit_exact_after_kill_9(tmp_path: Path) -> None:
    from test_train_resume import ARGS, epoch_lines, kill_after_a_mid_epoch_checkpoint, metaat

    full = metaat(*ARGS, "--device", "cuda", "--out", str(tmp_path / "full"))
    assert full.wait(timeout=300) == 0
    killed = kill_after_a_mid_epoch_checkpoint(tmp_path / "killed", signal.SIGKILL, "--device", "cuda")
    assert killed.returncode == -signal.SIGKILL
    resumed = metaat("--resume", str(tmp_path / "killed"), "--quiet")
    assert resumed.wait(timeout=300) == 0
    assert json.loads((tmp_path / "killed" / "summary.json").read_text())["device"] == "cuda"
    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert epoch_lines(tmp_path / "full") == epoch_lines(tmp_path / "killed")


def test_ddp_over_nccl_trains_on_one_gpu(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    args = [
        "--data", "synthetic", "--model", "cnn-small", "--defense", "trades", "-o", "steps=2",
        "--train-subset", "256", "--epochs", "1", "--eval-n", "40", "--eval-steps", "2",
        "--device", "cuda", "--quiet", "--out", str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(
        [*command, "-m", "metaat.cli", "train", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 1
    assert summary["device"].startswith("cuda")
    assert summary["cost"]["passes_per_example"] == 2 + 2.5
