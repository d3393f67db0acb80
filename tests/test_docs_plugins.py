"""The plugin how-to (docs/how-to/plugins.md) works as written: its attack is listed by ``metaat list
attacks`` and keeps the attack contract, its defense trains, its dataset loads and its model builds.
The page's code blocks that start with ``# <module>.py`` are written to files unchanged and imported."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

PAGE = Path(__file__).resolve().parents[1] / "docs" / "how-to" / "plugins.md"


def plugin_files() -> dict[str, str]:
    """Module name -> source of every Python block on the page that opens with ``# <name>.py``."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)
    out = {}
    for block in blocks:
        first = block.splitlines()[0]
        found = re.fullmatch(r"# (\w+)\.py", first.strip())
        if found:
            out[found.group(1)] = block
    return out


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The page's plugin modules written to ``tmp_path`` and importable; their registrations undone."""
    from metaat.attacks import ATTACKS
    from metaat.data import DATASETS
    from metaat.defenses import DEFENSES
    from metaat.models import MODELS
    from metaat.registry import Registry

    for name, source in plugin_files().items():
        (tmp_path / f"{name}.py").write_text(source, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    registries: tuple[Registry[Any], ...] = (ATTACKS, DEFENSES, DATASETS, MODELS)
    before = [dict(r._factories) for r in registries]
    yield tmp_path
    for registry, saved in zip(registries, before, strict=True):
        registry._factories.clear()
        registry._factories.update(saved)
    for name in plugin_files():
        sys.modules.pop(name, None)


def test_the_page_shows_one_plugin_per_registry() -> None:
    assert set(plugin_files()) == {"my_attacks", "my_defenses", "my_data", "my_models"}


def test_the_attack_plugin_is_listed_by_the_command_line(plugins: Path) -> None:
    env = {**os.environ, "METAAT_PLUGINS": "my_attacks", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(plugins), env.get("PYTHONPATH", "")) if p)
    run = subprocess.run(
        [sys.executable, "-m", "metaat.cli", "list", "attacks"], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    line = next((ln for ln in run.stdout.splitlines() if "random-noise" in ln), "")
    assert "fools the model" in line, run.stdout


def test_the_attack_plugin_keeps_the_attack_contract(plugins: Path, tiny_mlp_model: torch.nn.Module) -> None:
    import metaat.attacks as attacks
    import metaat.data as data

    importlib.import_module("my_attacks")
    x, y = data.load("synthetic", "test", n=64, noise=0.5)
    x_before = x.clone()
    attack = attacks.create("random-noise", threat="l2:1.5", tries=5)
    x_adv = attack(tiny_mlp_model, x, y)
    assert torch.equal(x, x_before)  # the input is untouched
    assert float((x_adv - x).flatten(1).norm(dim=1).max()) <= 1.5 + 1e-4 and 0 <= float(x_adv.min())
    with torch.no_grad():
        clean = (tiny_mlp_model(x).argmax(1) == y).float().mean()
        robust = (tiny_mlp_model(x_adv).argmax(1) == y).float().mean()
    assert robust <= clean
    with pytest.raises(TypeError, match="unknown option"):
        attacks.create("random-noise", threat="l2:1.5", steps=3)


@pytest.fixture
def tiny_mlp_model() -> torch.nn.Module:
    from conftest import tiny_mlp

    return tiny_mlp()


def test_the_defense_dataset_and_model_plugins_train_together(plugins: Path) -> None:
    import metaat.data as data
    import metaat.defenses as defenses
    import metaat.models as models

    for name in ("my_defenses", "my_data", "my_models"):
        importlib.import_module(name)
    x, y = data.load("stripes", "train", n=128)
    assert x.shape == (128, 1, 16, 16) and set(y.tolist()) <= {0, 1}
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    torch.manual_seed(0)
    model = models.create("my-net", num_classes=2, in_channels=1, image_size=16)
    defense = defenses.create("noise-aug", ["linf:0.1", "l1:10"])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    ctx = defenses.TrainContext(threats=defense.threats, generator=torch.Generator().manual_seed(0), num_classes=2)
    first = last = None
    for _ in range(30):
        loss, metrics = defense(model, x, y, ctx)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        first = first if first is not None else metrics["loss"]
        last = metrics
    assert last is not None and first is not None and last["loss"] < first  # it learns
    assert 0.0 <= last["acc"] <= 1.0
