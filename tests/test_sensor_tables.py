"""The sensor benchmark's docs table is regenerated from its records (and a stale page is caught)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("sensor_tables", ROOT / "benchmarks" / "sensor_tables.py")
assert spec is not None and spec.loader is not None
sensor_tables = importlib.util.module_from_spec(spec)
sys.modules["sensor_tables"] = sensor_tables
spec.loader.exec_module(sensor_tables)


def _row(method: str, seed: int, union: float) -> dict[str, object]:
    return {
        "method": method,
        "seed": seed,
        "n": 749,
        "clean": 0.9,
        "robust": {"linf:0.25": 0.5},
        "union": union,
        "unseen_mean": 0.7,
        "passes_per_example": 6.0,
        "seconds_per_epoch": 10.0,
        "hardware": "x86_64",
    }


def test_table_means_and_order() -> None:
    records = {
        "protocol": {"threats": ["linf:0.25"]},
        "command": "python benchmarks/sensor_study.py",
        "rows": {"a/0": _row("pgd", 0, 0.2), "b/0": _row("metaat", 0, 0.4), "b/1": _row("metaat", 1, 0.6)},
    }
    text = sensor_tables.table(records)
    lines = text.splitlines()
    assert lines[2].startswith("| `metaat` | 0,1 | 90.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 14.1 |")
    assert lines[3].startswith("| `pgd` | 0 | 90.0 | 50.0 | 20.0 |")
    page = f"intro\n{sensor_tables.START}\nold\n{sensor_tables.END}\nafter\n"
    new = sensor_tables.render_page(page, records)
    assert new.startswith("intro\n") and new.endswith("after\n") and "50.0 ± 14.1" in new


@pytest.mark.skipif(not sensor_tables.RESULTS.exists(), reason="no sensor benchmark records yet")
def test_docs_table_equals_the_records() -> None:
    assert sensor_tables.main(["--check"]) == 0, (
        "docs/domains/sensors.md is stale: run python benchmarks/sensor_tables.py"
    )
