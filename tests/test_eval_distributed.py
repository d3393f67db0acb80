"""``torchrun --nproc_per_node=2 -m metaat.cli eval``: the attack chunks split over two gloo processes
and merged give the single process's flags, point for point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import save_small_run

# --points: torchrun's parser takes --n for an abbreviation of its own options
ARGS = [
    "--data", "synthetic", "--points", "24", "--batch-size", "8", "--no-unseen", "--threads", "1", "--device", "cpu",
    "--threat", "linf:0.05", "--threat", "l2:0.5",
]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_small_run(tmp_path_factory.mktemp("runs") / "small")


def metaat_eval(run_dir: Path, out: Path, *extra: str, processes: int = 1) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable]
    if processes > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    args = ["-m", "metaat.cli", "eval", str(run_dir), *ARGS, *extra, "--out", str(out)]
    run = subprocess.run([*launch, *args], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert not list(out.glob(".eval-state*.json")), "every process removes its default state file"
    return json.loads((out / "report.json").read_text())


def same_numbers(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in ("clean", "robust", "union", "attacked"):
        assert a[key] == b[key], (key, a[key], b[key])


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("union_only", [False, True])
def test_two_processes_give_the_single_process_numbers(run_dir: Path, tmp_path: Path, union_only: bool) -> None:
    # Full mode with the gradient-masking checks (rank 0 runs them on the merged flags); union-only
    # without checks (L2's pending points come from L∞'s merged flags). Two threats each: L1's
    # reference attack (5 restarts) would double the time and add no other merge path.
    extra = ("--suite", "apgd", *(["--union-only", "--no-checks"] if union_only else []))
    one = metaat_eval(run_dir, tmp_path / "one", *extra)
    two = metaat_eval(run_dir, tmp_path / "two", *extra, processes=2)
    same_numbers(one, two)
    assert 0 < float(two["union"]) < float(two["clean"])
    assert two["protocol"]["processes"] == 2 and "processes" not in one["protocol"]
    checks = [(c["name"], c.get("threat"), c["status"]) for c in two["checks"]]
    assert checks == [(c["name"], c.get("threat"), c["status"]) for c in one["checks"]]
    assert bool(checks) != union_only
