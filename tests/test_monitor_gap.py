"""benchmarks/monitor_gap.py: the monitor-vs-reference gap per threat, from a run's metrics.jsonl."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

Loader = Callable[[str], ModuleType]  # the load_benchmark fixture (conftest.py)


def test_gap_uses_the_last_epoch_and_skips_threats_the_monitor_did_not_log(
    load_benchmark: Loader, tmp_path: Path
) -> None:
    mg = load_benchmark("monitor_gap")
    metrics = tmp_path / "metrics.jsonl"
    lines = [
        {"epoch": 1, "eval": {"n": 200.0, "robust/linf:0.1": 0.5, "robust/union": 0.3}},
        {"step": 5, "train": {"loss": 1.0}},  # a step row, no eval
        {"epoch": 2, "eval": {"n": 200.0, "robust/linf:0.1": 0.7, "robust/union": 0.6}},
    ]
    metrics.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    last = mg.last_monitor(metrics)
    assert last is not None and last["epoch"] == 2
    record = {"method": "a", "seed": 0, "n": 1000, "robust": {"linf": 0.65, "l2": 0.5, "l1": 0.4, "union": 0.45}}
    row = mg.gap_row(record, last)
    assert set(row["threats"]) == {"linf", "union"}  # l2 / l1 were not monitored
    assert row["threats"]["linf"] == {"monitor": 70.0, "reference": 65.0, "gap": 5.0}
    assert row["threats"]["union"]["gap"] == 15.0
    assert (row["monitor_n"], row["reference_n"]) == (200, 1000)


def test_summary_gives_range_and_median_per_threat(load_benchmark: Loader) -> None:
    mg = load_benchmark("monitor_gap")
    rows = [{"threats": {"l1": {"gap": g}}} for g in (4.0, 10.0, 6.0, 8.0)]
    assert mg.summarise(rows) == {"l1": {"min": 4.0, "max": 10.0, "median": 7.0, "runs": 4}}


def test_an_unknown_study_is_one_clear_error(load_benchmark: Loader, capsys: pytest.CaptureFixture[str]) -> None:
    mg = load_benchmark("monitor_gap")
    assert mg.main(["--study", "no_such_study"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no_such_study" in err and "fmnist_small" in err
