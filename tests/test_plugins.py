"""Plugins: a module named in METAAT_PLUGINS adds registry entries that every ``metaat`` command
sees — a third-party model trains, saves, reloads and evaluates like a built-in one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metaat.plugins import PluginError, load_plugins, plugin_names

PLUGIN = """
from torch import nn
from metaat.models import MODELS


@MODELS.register("plugin-net", help="a two-layer MLP from a plugin")
def plugin_net(num_classes: int, in_channels: int, image_size: int, hidden: int = 16) -> nn.Module:
    inputs = in_channels * image_size * image_size
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
"""


def metaat(args: list[str], plugins: str, pythonpath: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "METAAT_PLUGINS": plugins, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "metaat.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)


def test_plugin_names_parse_and_refuse_what_is_not_a_module() -> None:
    assert plugin_names(" a.b , c,,") == ["a.b", "c"]
    assert plugin_names("") == []
    with pytest.raises(PluginError, match="importable modules"):
        plugin_names("plugins/mynets.py")
    with pytest.raises(PluginError, match="'metaat_no_such_plugin', which failed to import: ModuleNotFoundError"):
        load_plugins("metaat_no_such_plugin")


def test_a_plugin_model_trains_reloads_and_evaluates_from_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "my_metaat_plugin.py").write_text(PLUGIN)
    listed = metaat(["list", "models"], "my_metaat_plugin", tmp_path, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "plugin-net" in listed.stdout and "a two-layer MLP from a plugin" in listed.stdout

    train = ["train", "--data", "synthetic", "--model", "plugin-net", "--defense", "pgd", "--threat", "linf:0.1"]
    train += ["--epochs", "1", "--train-subset", "256", "--eval-n", "32", "--threads", "1", "--out", "run", "-q"]
    trained = metaat(train, "my_metaat_plugin", tmp_path, tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert json.loads((tmp_path / "run" / "final" / "model.json").read_text())["spec"]["name"] == "plugin-net"

    scored = ["eval", "run", "--points", "32", "--suite", "quick", "--threat", "linf:0.1"]
    scored += ["--no-unseen", "--no-checks", "--threads", "1", "--json"]
    evaluated = metaat(scored, "my_metaat_plugin", tmp_path, tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert 0.0 <= json.loads((tmp_path / "run" / "report.json").read_text())["union"] <= 1.0

    without = metaat(scored, "", tmp_path, tmp_path)  # the run needs its plugin back to be loaded
    assert without.returncode != 0 and "plugin-net" in without.stderr and "METAAT_PLUGINS" in without.stderr


def test_a_broken_plugin_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "broken_metaat_plugin.py").write_text("raise RuntimeError('boom')\n")
    run = metaat(["list", "models"], "broken_metaat_plugin", tmp_path, tmp_path)
    assert run.returncode == 2
    assert "'broken_metaat_plugin', which failed to import: RuntimeError: boom" in run.stderr
    assert "Traceback" not in run.stderr
