"""Shared test settings: one torch thread (tiny models run ~10x slower on two contended threads),
``load_benchmark``, which imports a script from ``benchmarks/`` by name, ``studies_in`` (the loaded
scripts' study folders moved to a temporary one), and ``tiny_mlp`` / ``save_small_run``, a small model
trained in a second on synthetic data."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

torch.set_num_threads(1)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# Modules whose tests start processes (the CLI, torchrun, mkdocs, a browser, the benchmark scripts) or
# train and evaluate end to end: `make test` runs them, `make check` (-m "not integration") skips them.
INTEGRATION = {
    "test_bad_input.py",
    "test_defenses.py",
    "test_domain_core.py",
    "test_eval_checks.py",
    "test_fuzz_parsers.py",
    "test_meta_defenses.py",
    "test_presets.py",
    "test_text_data.py",
    "test_attack_strength.py",
    "test_benchmarks_smoke.py",
    "test_browser.py",
    "test_cli.py",
    "test_docs.py",
    "test_docs_plugins.py",
    "test_eval.py",
    "test_eval_cli.py",
    "test_eval_distributed.py",
    "test_eval_worst.py",
    "test_eval_shard.py",
    "test_gpu.py",
    "test_layering.py",
    "test_meta_pretrain.py",
    "test_plugins.py",
    "test_readme_commands.py",
    "test_readme_python.py",
    "test_study_methods.py",
    "test_train_distributed.py",
    "test_train_resume.py",
    "test_transfer_benchmark.py",
}


# Single tests elsewhere that train for long enough to dominate the unit tier.
INTEGRATION_TESTS = {
    "test_short_metaat_run_beats_standard_on_every_threat",
    "test_pgd_training_is_far_more_robust_than_standard_training",
    "test_a_holdout_study_scores_validation_points_then_the_worst_case",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in INTEGRATION or getattr(item, "originalname", item.name) in INTEGRATION_TESTS:
            item.add_marker(pytest.mark.integration)


def _load(name: str) -> ModuleType:
    """A fresh module from ``benchmarks/<name>.py``; its sibling scripts are importable while it loads."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture
def load_benchmark() -> Callable[[str], ModuleType]:
    return _load


def studies_in(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the study scripts that ``load_benchmark`` imported (``study``, ``monitor_gap``) at
    ``root/results`` (created and returned), ``root/runs`` and ``root/parked``."""
    study, mg = sys.modules["study"], sys.modules["monitor_gap"]
    results = root / "results"
    results.mkdir()
    monkeypatch.setattr(study, "RESULTS", results)
    monkeypatch.setattr(study, "RUNS", root / "runs")
    monkeypatch.setattr(study, "PARKED", root / "parked")
    monkeypatch.setattr(mg, "RESULTS", results)
    return results


def tiny_mlp(image_size: int = 12, seed: int = 0) -> nn.Module:
    """A 32-unit MLP trained for one pass over 1,000 noisy synthetic images: breakable, not perfect."""
    import metaat.data as datasets
    import metaat.models as models

    torch.manual_seed(seed)
    x, y = datasets.load("synthetic", "train", n=1000, noise=0.5, image_size=image_size)
    net = models.create("mlp", num_classes=10, in_channels=1, image_size=image_size, hidden=32)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for i in range(0, 1000, 100):
        loss = nn.functional.cross_entropy(net(x[i : i + 100]), y[i : i + 100])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def save_small_run(run: Path) -> Path:
    """``run`` as a run folder: :func:`tiny_mlp` saved as checkpoint/, a config.yaml naming its data."""
    import metaat.models as models

    models.save_model(tiny_mlp(), run / "checkpoint")
    (run / "config.yaml").write_text("data: synthetic\ndefense: standard\nthreats: [linf:0.1]\nseed: 0\n")
    return run
