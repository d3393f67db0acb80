"""benchmarks/cost_frontier.py: the Pareto front of union against cost, its plot, and tables kept apart
by protocol (validation / test points, apgd / apgd-worst)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

Loader = Callable[[str], ModuleType]  # the load_benchmark fixture (conftest.py)
ALL = ["linf:0.1", "l2:1.5", "l1:10"]
# small integers: ties in cost, in accuracy and whole duplicate points are common
POINTS = st.lists(
    st.tuples(st.integers(0, 6), st.integers(0, 6)).map(lambda p: (float(p[0]), float(p[1]))), max_size=12
)


@pytest.fixture(scope="module")
def cf() -> ModuleType:
    """cost_frontier.py, loaded once (hypothesis runs one test many times; load_benchmark is per test)."""
    from conftest import _load

    return _load("cost_frontier")


@given(points=POINTS)
def test_the_front_is_exactly_the_undominated_points(cf: ModuleType, points: list[tuple[float, float]]) -> None:
    front = cf.pareto_front(points)
    assert len(set(front)) == len(front)
    for i in front:  # no front point is dominated by any point
        assert not any(cf.dominates(q, points[i]) for q in points)
    for i in set(range(len(points))) - set(front):  # every other point is dominated by a front point
        assert any(cf.dominates(points[j], points[i]) for j in front)
    on = [points[i] for i in front]  # cheapest first; dearer front points are strictly more robust
    assert on == sorted(on)
    assert all(b[1] > a[1] or b == a for a, b in zip(on, on[1:], strict=False))


def test_dominance_is_strict(cf: ModuleType) -> None:
    assert cf.dominates((1, 5), (2, 5)) and cf.dominates((1, 5), (1, 4)) and not cf.dominates((1, 5), (1, 5))
    assert not cf.dominates((1, 4), (2, 5)) and cf.pareto_front([(2.0, 5.0), (1.0, 4.0), (3.0, 5.0)]) == [1, 0]


def _record(method: str, seed: int, union: float, passes: float, seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "method": method,
        "seed": seed,
        "clean": 0.8,
        "robust": {"linf": 0.6, "l2": 0.55, "l1": 0.5, "union": union},
        "passes_per_example": passes,
        "seconds_per_epoch": seconds,
        "train_threats": ALL,
        "n": 100,
        "suite": "apgd",
        **extra,
    }


def test_fronts_compare_seconds_only_on_one_kind_of_machine(load_benchmark: Loader) -> None:
    mt = load_benchmark("make_tables")
    cf = mt.cost_frontier
    records = [
        _record("cheap", 0, 0.40, 2.0, 40.0),
        _record("mid", 0, 0.50, 6.0, 120.0),
        _record("dear", 0, 0.50, 11.0, 200.0),  # no more robust than mid, at twice the passes: off the front
        _record("gpu", 0, 0.55, 33.0, 5.0, device="cuda"),  # fastest per epoch, on a GPU: not compared
    ]
    rows = mt.aggregate(records)
    assert cf.fronts(rows) == {"passes": ["cheap", "mid", "gpu"], "seconds": ["cheap", "mid"]}
    assert "passes per example: cheap, mid, gpu;" in cf.front_text(rows)


def test_the_frontier_plot_marks_the_front_and_is_reproducible(load_benchmark: Loader, tmp_path: Path) -> None:
    mt = load_benchmark("make_tables")
    rows = mt.aggregate([_record("a", 0, 0.4, 2.0, 40.0), _record("b", 0, 0.5, 6.0, 90.0), _record("c", 0, 0.3, 9, 99)])
    one, two = tmp_path / "one.svg", tmp_path / "two.svg"
    mt.cost_frontier.plot_frontier(rows, one, "s: frontier")
    mt.cost_frontier.plot_frontier(rows, two, "s: frontier")
    text = one.read_text()
    assert one.read_bytes() == two.read_bytes()  # the same records give the same bytes
    assert "Pareto front" in text and "wall time per training epoch" in text and "passes per example" in text


def test_validation_test_and_worst_case_records_get_tables_of_their_own(
    load_benchmark: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mt = load_benchmark("make_tables")
    monkeypatch.setattr(mt, "RESULTS", tmp_path)
    monkeypatch.setattr(mt, "ROOT", tmp_path)  # the plots' copies for a docs page land under tmp_path/docs
    env = {"environment": {"torch": "2.13"}, "hardware": "cpu", "command": "c", "metaat_version": "0", "epochs": 5}
    held = {"train_holdout": 5000, **env}
    val = [
        _record(m, s, u, p, 60.0, split="val", val_start=0, chosen_on=c, **held)
        for m, s, u, p, c in (("a", 0, 0.50, 6, "test"), ("a", 1, 0.52, 6, "test"), ("b", 0, 0.40, 11, "none"))
    ]
    worst = _record("a", 0, 0.45, 6, 60.0, split="test", test_start=9000, chosen_on="val", **held)
    worst.update(suite="apgd-worst", first_pass={"robust": {"union": 0.47}})
    worst["extra_broken"] = {"linf:0.1": 1, "l2:1.5": 2, "l1:10": 0, "union": 2}
    (tmp_path / "h.json").write_text(json.dumps({"records": [*val, worst]}))
    md, text = mt.section("h")
    validation, test = md.split("**Test points**")
    assert "**Validation points** (training images 55,000–55,099, held out of training)" in validation
    assert "Rows chosen on — none: b; test: a." in validation and "**51.0 ± 1.4**" in validation
    assert "9,000–9,099" in test and "Rows chosen on — val: a." in test and "**45.0**" in test
    assert "| a | 0 | 47.0 | 45.0 | 1 | 2 | 0 | 2 |" in test  # what the extra pass broke, per threat and union
    assert "**45.0**" not in validation and "**51.0" not in test  # never averaged together
    assert (tmp_path / "h_frontier.svg").is_file() and "![h: cost frontier](figures/h_frontier.svg)" in text
    assert (tmp_path / "docs" / "studies" / "figures" / "h_frontier.svg").is_file()
    # a study with one protocol renders as before: no caption
    (tmp_path / "o.json").write_text(json.dumps({"records": [_record("a", 0, 0.5, 6, 60, **env)]}))
    assert mt.section("o")[0].startswith("| method |")


def test_the_readme_summary_reads_the_worst_case_once_it_covers_the_named_rows(
    load_benchmark: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mt = load_benchmark("make_tables")
    monkeypatch.setattr(mt, "RESULTS", tmp_path)
    env = {"environment": {"torch": "2.13"}, "hardware": "cpu", "command": "c", "metaat_version": "0", "epochs": 5}
    apgd = [_record(m, 0, u, 6, 60, test_start=9000, **env) for m, u in (("a", 0.5), ("b", 0.4))]
    worst = [
        {**r, "suite": "apgd-worst", "robust": {**r["robust"], "union": r["robust"]["union"] - 0.02}} for r in apgd
    ]
    headline = {**apgd[0], "suite": "standard", "robust": {**apgd[0]["robust"], "union": 0.47}}
    (tmp_path / "s.json").write_text(json.dumps({"records": [*apgd, worst[0], headline]}))
    assert "**50.0**" in mt.summary("s", ["a", "b"])  # the worst case covers a only: apgd for both
    md = mt.section("s", write=False)[0]
    assert "| a | 0 | 80.0 | **47.0** | 50.0 | -3.0 |" in md  # the headline beside the apgd record, not the worst
    assert "chosen on" not in md  # no record of this study says (no --holdout): the caption does not either
    (tmp_path / "s.json").write_text(json.dumps({"records": [*apgd, *worst]}))
    text = " ".join(mt.summary("s", ["a", "b"]).split())  # the lead sentence is wrapped
    assert "**48.0**" in text and "**50.0**" not in text and "an extra pass (APGD-CE with 5 restarts" in text
    us = load_benchmark("unseen_summary")
    assert not us.needs_summary(worst[0], 200, 9000)  # the same model's apgd record holds its unseen summary
