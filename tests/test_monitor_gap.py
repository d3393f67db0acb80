"""benchmarks/monitor_gap.py: the monitor-vs-reference gap per threat, from a run's metrics.jsonl."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from metaat.eval.state import EvalState

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


def test_logs_come_from_the_run_folder_or_evidence_and_lost_rows_are_kept_only_for_the_same_record(
    load_benchmark: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mg = load_benchmark("monitor_gap")
    study = sys.modules["study"]
    results = tmp_path / "results"
    results.mkdir()
    for module, attr, value in (
        (study, "RESULTS", results),
        (study, "RUNS", tmp_path / "runs"),
        (mg, "RESULTS", results),
    ):
        monkeypatch.setattr(module, attr, value)

    def record(method: str, linf: float) -> dict[str, object]:
        robust = {"linf": linf, "union": linf}
        return {"method": method, "seed": 0, "epochs": 5, "n": 10, "suite": "apgd", "clean": 0.8, "robust": robust}

    def run_files(base: Path, epoch: int, monitor: float, flags: str | None) -> None:
        """metrics.jsonl ending at ``epoch``; with ``flags``, a finished evaluation state beside it
        (8 of 10 points clean, ``flags`` their L∞ outcomes)."""
        base.mkdir(parents=True, exist_ok=True)
        line = {"epoch": epoch, "eval": {"n": 200, "robust/linf:0.1": monitor}}
        (base / "metrics.jsonl").write_text(json.dumps(line) + "\n", encoding="utf-8")
        if flags is not None:
            chunks = {"linf:0.1": {"chunks": {"0": flags}, "seconds": 1.0}}
            EvalState({"threats": ["linf:0.1"]}, base / "eval-apgd-10.state.json", "1111111100", chunks).save()

    records = [record("kept", 0.6), record("evidence", 0.5), record("rerun", 0.4), record("retrained", 0.5)]
    (results / "s.json").write_text(json.dumps({"records": records}), encoding="utf-8")
    run_files(study.evidence_path("s", "evidence", 0), 5, 0.55, "11111000")  # union 5 of 10: the record's
    run_files(study.run_path("s", "evidence", 0), 2, 0.9, None)  # the same piece retraining: epoch 2 of 5
    # Retrained to the end after its run folder was lost: another model (its evaluation gives 4 of 10).
    run_files(study.run_path("s", "retrained", 0), 5, 0.9, "11110000")

    def earlier(method: str, reference: float) -> dict[str, object]:
        gap = {"linf": {"monitor": 70.0, "reference": reference, "gap": 70.0 - reference}}
        return {"method": method, "seed": 0, "epoch": 5, "monitor_n": 200, "reference_n": 1000, "threats": gap}

    old = {
        "finished": "2026-01-01T00:00:00Z",
        "rows": [earlier("kept", 60.0), earlier("rerun", 45.0), earlier("retrained", 50.0)],
    }
    (results / "s_monitor_gap.json").write_text(json.dumps(old), encoding="utf-8")
    assert mg.main(["--study", "s"]) == 0
    out = json.loads((results / "s_monitor_gap.json").read_text(encoding="utf-8"))
    rows = {r["method"]: r for r in out["rows"]}
    assert set(rows) == {"kept", "evidence", "retrained"}  # rerun's earlier row scored another model: dropped
    assert rows["evidence"]["threats"]["linf"]["gap"] == 5.0 and "kept_from" not in rows["evidence"]
    assert rows["kept"]["kept_from"] == "2026-01-01T00:00:00Z"
    assert rows["retrained"]["kept_from"] == "2026-01-01T00:00:00Z"  # not the retrained model's 90 %
    assert rows["retrained"]["threats"]["linf"]["monitor"] == 70.0
    assert out["runs_missing"] == ["kept seed 0", "rerun seed 0", "retrained seed 0"]
