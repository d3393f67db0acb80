"""The domain benchmarks' docs tables are regenerated from their records (and a stale page is caught)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("study_tables", ROOT / "benchmarks" / "study_tables.py")
assert spec is not None and spec.loader is not None
study_tables = importlib.util.module_from_spec(spec)
sys.modules["study_tables"] = study_tables
spec.loader.exec_module(study_tables)
SENSOR = study_tables.STUDIES["sensor"]


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
    text = study_tables.table(records, SENSOR)
    lines = text.splitlines()
    assert lines[2].startswith("| `metaat` | 0,1 | 90.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 14.1 |")
    assert lines[3].startswith("| `pgd` | 0 | 90.0 | 50.0 | 20.0 |")
    page = f"intro\n{SENSOR.start}\nold\n{SENSOR.end}\nafter\n"
    new = study_tables.render_page(page, records, SENSOR)
    assert new.startswith("intro\n") and new.endswith("after\n") and "50.0 ± 14.1" in new


def test_docs_tables_equal_the_records() -> None:
    assert study_tables.main(["--check"]) == 0, "a domain page is stale: run python benchmarks/study_tables.py"


def test_text_table_has_the_unseen_and_certified_columns() -> None:
    row = _row("a2t", 0, 0.3) | {"unseen": {"nbr:2": 0.25}, "certified_syn": 0.1, "n": 100}
    records = {"protocol": {"eval_threats": ["syn:2"]}, "rows": {"a/0": row}}
    lines = study_tables.table(records, study_tables.STUDIES["text"]).splitlines()
    assert (
        lines[0]
        == "| method | seeds | clean | syn:2 | union | unseen nbr:2 | certified (IBP) | passes/example | s/epoch |"
    )
    assert lines[2] == "| `a2t` | 0 | 90.0 | – | 30.0 | 25.0 | 10.0 | 6.00 | 10.0 |"
    assert "(100 snippets)" in lines[-1]


def test_unknown_study_is_one_line() -> None:
    with pytest.raises(SystemExit, match="valid: sensor, text"):
        study_tables.main(["images"])
