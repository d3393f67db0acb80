"""benchmarks/paired.py: per-point union flags rebuilt from evaluation state files, and McNemar's test."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest

Loader = Callable[[str], ModuleType]  # the load_benchmark fixture (conftest.py)


def test_union_flags_need_clean_and_every_threat(load_benchmark: Loader) -> None:
    paired = load_benchmark("paired")
    # 6 points, points 1 and 4 misclassified clean; the 4 clean-correct ones attacked in chunks of 3
    state = {
        "clean": "101101",
        "threats": {"a": {"chunks": {"0": "111", "1": "0"}}, "b": {"chunks": {"0": "101", "1": "1"}}},
    }
    assert paired.union_flags(state, ["a", "b"]) == [True, False, False, True, False, False]
    assert paired.union_flags(state, ["b"]) == [True, False, False, True, False, True]
    state["threats"]["a"]["chunks"].pop("1")  # an unfinished evaluation is refused, not guessed
    with pytest.raises(ValueError, match="3 flags for 4 pending points"):
        paired.union_flags(state, ["a"])


def test_mcnemar_exact_and_the_four_cells(load_benchmark: Loader) -> None:
    paired = load_benchmark("paired")
    assert paired.mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert paired.mcnemar_exact(3, 3) == 1.0 and paired.mcnemar_exact(0, 0) == 1.0
    assert paired.mcnemar_exact(7, 46) < 1e-6
    a = [True, True, False, False, True]
    ref = [True, False, True, True, False]
    cells = paired.compare(a, ref)
    assert (cells["both"], cells["only_method"], cells["only_reference"], cells["neither"]) == (1, 2, 2, 0)
    assert cells["difference_points"] == 0.0 and cells["mcnemar_p"] == 1.0


def test_an_unknown_study_is_one_clear_error(load_benchmark: Loader, capsys: pytest.CaptureFixture[str]) -> None:
    paired = load_benchmark("paired")
    assert paired.main(["--study", "no_such_study"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no_such_study" in err and "fmnist_study" in err


def test_an_unknown_reference_lists_the_studys_methods(
    load_benchmark: Loader, capsys: pytest.CaptureFixture[str]
) -> None:
    paired = load_benchmark("paired")
    assert paired.main(["--study", "fmnist_small", "--reference", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'nope'" in err and "metaat" in err and "max" in err


def test_union_only_flags_and_the_headline_worst_case(load_benchmark: Loader) -> None:
    paired = load_benchmark("paired")
    # union-only: threat b attacks only the points still robust after a (points 0 and 2 of 0, 2, 3)
    state = {"clean": "1011", "threats": {"a": {"chunks": {"0": "110"}}, "b": {"chunks": {"0": "01"}}}}
    assert paired.union_flags(state, ["a", "b"], union_only=True) == [False, False, True, False]
    with pytest.raises(ValueError, match="2 flags for 3 pending points"):
        paired.union_flags(state, ["a", "b"])  # read as a full-mode state, the counts cannot match
    cells = paired.headline_agreement([True, True, False, True], [True, False, True, True])
    assert cells["union_worst_case"] == 0.5 and cells["union_standard"] == cells["union_study_protocol"] == 0.75
    assert (cells["broken_only_by_standard"], cells["broken_only_by_study_protocol"]) == (1, 1)
