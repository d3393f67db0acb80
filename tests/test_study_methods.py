"""benchmarks/study.py: every study row names a real defense with valid options, and `make bench` runs
each current row exactly once (a typo would otherwise surface hours into the study)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

import metaat.defenses as defenses
from metaat.threats import parse_threats

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _study() -> ModuleType:
    sys.path.insert(0, str(BENCH))  # study.py imports its sibling unseen_summary.py
    try:
        spec = importlib.util.spec_from_file_location("study", BENCH / "study.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_every_row_builds_its_defense() -> None:
    study = _study()
    for method, (name, threats, options) in study.METHODS.items():
        parse_threats(list(threats))
        defense = defenses.create(name, list(threats), **options)
        assert defense is not None, method


def test_full_study_runs_each_current_row_once_in_priority_order() -> None:
    study = _study()
    full = study.FULL_METHODS
    assert len(full) == len(set(full))
    assert set(full) == {m for m in study.METHODS if not m.startswith("metaat-v1")}
    assert full[: len(study.PRIORITY)] == study.PRIORITY
    assert full[0] == "metaat" and {"sat", "avg", "max", "msd"} <= set(study.PRIORITY)


def test_unknown_method_lists_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    study = _study()
    with pytest.raises(SystemExit):
        study.main(["--methods", "metaat,nope"])
    err = capsys.readouterr().err
    assert "unknown method(s) ['nope']" in err and "metaat-learned" in err
