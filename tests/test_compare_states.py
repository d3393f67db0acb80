"""benchmarks/compare_states.py: two evaluations of the same points, point by point."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from metaat.eval.state import EvalState

Loader = Callable[[str], ModuleType]  # the load_benchmark fixture (conftest.py)


def _state(path: Path, chunks: dict[str, dict[str, str]], chunk: int, data: str = "d") -> Path:
    """A real (digest-carrying) state of 6 points, point 5 misclassified clean."""
    fingerprint = {"threats": list(chunks), "model": "m", "data": data, "chunk": chunk, "union_only": False}
    EvalState(fingerprint, path, "111110", {t: {"chunks": c, "seconds": 1.0} for t, c in chunks.items()}).save()
    return path


def test_one_threat_and_the_union_across_chunkings(
    load_benchmark: Loader, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cs = load_benchmark("compare_states")
    # A: one chunk of 5 clean points per threat; B: chunks of 2, L∞ flags differ on point 1
    a = _state(tmp_path / "a.json", {"linf": {"0": "11010"}, "l1": {"0": "10011"}}, 1024)
    b = _state(tmp_path / "b.json", {"linf": {"0": "10", "1": "01", "2": "0"}}, 128)
    assert cs.main([str(a), str(b), "--threat", "linf"]) == 0
    line = capsys.readouterr().out
    assert "A 50.0 %, B 33.3 %" in line and "both 2, A only 1, B only 0, neither 3" in line
    assert "chunks 1024 / 128" in line and "same model" in line
    out = cs.compare_states(*(cs.read_state(p) for p in (a, b)))  # default: the threats both ran (L∞)
    assert out["threats"] == ["linf"] and out["clean_disagreements"] == 0
    with pytest.raises(ValueError, match="not evaluated by both; both have: linf"):
        cs.compare_states(cs.read_state(a), cs.read_state(b), "l1")
    c = _state(tmp_path / "c.json", {"linf": {"0": "11010"}}, 1024, data="other")
    assert cs.main([str(a), str(c)]) == 2
    assert "different points" in capsys.readouterr().err
