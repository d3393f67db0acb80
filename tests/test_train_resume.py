"""Kill -9 mid-epoch, resume from the last checkpoint: the final weights are bit-exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from metaat.train import TrainConfig, train

torch.set_num_threads(1)
ARGS = [
    "--data", "synthetic", "--model", "cnn-small", "--defense", "pgd", "-o", "steps=3", "--threat", "linf:0.1",
    "--train-subset", "1600", "--batch-size", "32", "--epochs", "2", "--eval-n", "50", "--eval-steps", "2",
    "--checkpoint-every", "2", "--threads", "1", "--quiet",
]  # fmt: skip


def metaat(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "metaat.cli", "train", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def checkpoint_state(run_dir: Path) -> dict[str, object] | None:
    try:
        return json.loads((run_dir / "checkpoint" / "state.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):  # not written yet, or being rotated right now
        return None


def kill_after_a_mid_epoch_checkpoint(run_dir: Path, sig: int, *extra: str) -> subprocess.Popen[bytes]:
    proc = metaat(*ARGS, *extra, "--out", str(run_dir))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        state = checkpoint_state(run_dir)
        if state is not None and int(state["global_step"]) >= 10 and int(state["step_in_epoch"]) > 0:  # type: ignore[call-overload]
            proc.send_signal(sig)
            break
        time.sleep(0.002)
    proc.wait(timeout=120)
    return proc


def epoch_lines(run_dir: Path) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("epoch_seconds", None)
        cost = line.get("cost")
        if isinstance(cost, dict):
            line["cost"] = {k: v for k, v in cost.items() if not k.endswith("_seconds")}
    return lines


def test_kill_9_mid_epoch_then_resume_ends_bit_exact(tmp_path: Path) -> None:
    killed = kill_after_a_mid_epoch_checkpoint(tmp_path / "killed", signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.read() if killed.stderr else ""
    assert not (tmp_path / "killed" / "final").exists()
    state = checkpoint_state(tmp_path / "killed")
    assert state is not None and state["status"] == "running"

    resumed = metaat("--resume", str(tmp_path / "killed"), "--quiet")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()

    reference = train(TrainConfig.from_yaml(tmp_path / "killed" / "config.yaml"), tmp_path / "reference", quiet=True)
    assert reference.status == "completed"
    # Tensors, not file bytes: safetensors writes its metadata map in a per-process order.
    a = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "reference" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    assert epoch_lines(tmp_path / "killed") == epoch_lines(tmp_path / "reference")


def test_sigterm_saves_and_exits_130_then_resume_completes(tmp_path: Path) -> None:
    stopped = kill_after_a_mid_epoch_checkpoint(tmp_path / "run", signal.SIGTERM)
    err = stopped.stderr.read().decode() if stopped.stderr else ""
    assert stopped.returncode == 130, err
    assert f"metaat train --resume {tmp_path / 'run'}" in err
    state = checkpoint_state(tmp_path / "run")
    assert state is not None and state["status"] == "interrupted"
    resumed = metaat("--resume", str(tmp_path / "run"), "--quiet")
    _, err_b = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err_b.decode()
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
