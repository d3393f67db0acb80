"""Smoke test of benchmarks/attack_speed.py: the ``--quick`` run works and writes the documented JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "attack_speed.py"


def test_attack_speed_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert f"wrote {out}" in run.stdout
    report = json.loads(out.read_text())
    assert report["command"] == f"python benchmarks/attack_speed.py --quick --threads 1 --output {out}"
    assert report["quick"] is True and report["threads"] == 1 and report["n"] == 32
    assert {"hardware", "torch", "metaat", "data", "model", "attack", "results", "targets"} <= set(report)
    results = report["results"]
    for key in ("metaat_auto", "metaat_one_chunk", "raw_limit"):
        assert results[key]["best_img_per_s"] > 0
        assert results[key]["best_img_per_s"] >= results[key]["median_img_per_s"]
        assert len(results[key]["seconds"]) == report["repeats"] == 1
    assert results["metaat_one_chunk"]["chunk"] == 32
    assert set(results["raw_limit"]["per_chunk"]) == {"16", "32"}
    assert str(results["raw_limit"]["best_chunk"]) in results["raw_limit"]["per_chunk"]
    target = report["targets"]["metaat_vs_raw_limit"]
    ratio = results["metaat_auto"]["best_img_per_s"] / results["raw_limit"]["best_img_per_s"]
    assert target["ratio"] == pytest.approx(ratio, abs=1e-3)
    assert target["met"] == (ratio >= 0.9)
    if "best_img_per_s" in results["torchattacks"]:
        assert "metaat_vs_torchattacks" in report["targets"]
    else:
        assert "not importable" in results["torchattacks"]["skipped"]


def test_attack_speed_falls_back_to_random_images(
    monkeypatch: pytest.MonkeyPatch, load_benchmark: Callable[[str], ModuleType]
) -> None:
    module = load_benchmark("attack_speed")

    def missing(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("no fashion-mnist here")

    monkeypatch.setattr(module.data, "load", missing)
    x, y, source = module.load_images(5)
    assert tuple(x.shape) == (5, 1, 28, 28) and tuple(y.shape) == (5,)
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert source.startswith("random images") and "no fashion-mnist here" in source


def test_attack_speed_rejects_bad_arguments(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--n", "0", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "must be >= 1" in run.stderr
    assert not out.exists()
