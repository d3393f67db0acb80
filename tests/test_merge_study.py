"""benchmarks/merge_study.py: records another machine finished come in only with the state that backs
them, and run folders only where nothing here has or holds them."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from metaat.eval.state import EvalState

Loader = Callable[[str], ModuleType]  # the load_benchmark fixture (conftest.py)


def _record(method: str, seed: int, union: float) -> dict[str, object]:
    return {
        "method": method,
        "seed": seed,
        "epochs": 5,
        "train_subset": None,
        "n": 4,
        "test_start": 0,
        "suite": "apgd",
        "clean": 1.0,
        "robust": {"union": union},
    }


def _state(folder: Path, flags: str) -> None:
    """A real (digest-carrying) evaluation state of 4 points, all clean-correct, one threat."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "eval-apgd-4.state.json"
    EvalState({"threats": ["linf:0.1"]}, path, "1111", {"linf:0.1": {"chunks": {"0": flags}, "seconds": 1.0}}).save()


@pytest.fixture
def merge(load_benchmark: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """merge_study.py, with this checkout's study in ``tmp_path/here`` (its ``study`` module patched)."""
    module = load_benchmark("merge_study")
    study = sys.modules["study"]
    monkeypatch.setattr(study, "RESULTS", tmp_path / "here" / "results")
    monkeypatch.setattr(study, "RUNS", tmp_path / "here" / "runs")
    study.RESULTS.mkdir(parents=True)
    return module


def test_backed_records_merge_with_their_evidence_and_an_unbacked_one_is_refused(
    merge: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = sys.modules["study"]
    other = tmp_path / "other"
    results = other / "benchmarks" / "results"
    results.mkdir(parents=True)
    records = [_record("sat", 0, 0.5), _record("max", 0, 0.75), _record("msd", 1, 0.25), _record("avg", 0, 0.5)]
    (results / "s.json").write_text(json.dumps({"records": records}), encoding="utf-8")
    ev_a, run_a = merge.other_dirs(other, "s", "sat", 0)
    _state(ev_a, "1100")  # backs sat's union 0.5, from its evidence
    (ev_a / "summary.json").write_text('{"device": "cuda"}', encoding="utf-8")
    _state(merge.other_dirs(other, "s", "max", 0)[1], "1110")  # max: from its run folder
    _state(merge.other_dirs(other, "s", "msd", 1)[0], "1110")  # msd's record says 0.25: another model's flags
    study.add_record(study.RESULTS / "s.json", "s", _record("avg", 0, 0.5))  # avg is done here already

    assert merge.main([str(other), "--study", "s"]) == 1  # msd refused, the rest merged
    out = capsys.readouterr()
    assert "[merge] 1 record(s) already here" in out.out and "merged: sat seed 0" in out.out
    assert "msd seed 1" in out.err and "union 0.7500" in out.err and "msd seed 1" not in out.out
    here = {(r["method"], r["seed"]): r.get("preset") for r in study.load_records(study.RESULTS / "s.json")}
    # records of a checkout older than the presets come in naming their row's preset
    assert here == {("sat", 0): "sat-pgd10", ("max", 0): "max-pgd10", ("avg", 0): None}
    kept = study.evidence_path("s", "sat", 0)
    assert sorted(p.name for p in kept.iterdir()) == ["eval-apgd-4.state.json", "summary.json"]
    assert study.finished_state_in(study.evidence_path("s", "max", 0), _record("max", 0, 0.75)) is not None
    assert merge.main([str(other), "--study", "s"]) == 1  # rerun: nothing twice, c still refused
    assert len(study.load_records(study.RESULTS / "s.json")) == 3
    assert merge.main([str(tmp_path / "nowhere"), "--study", "s"]) == 2


def test_a_record_comes_in_only_naming_the_preset_its_row_trains_here(merge: ModuleType) -> None:
    sat = {**_record("sat", 0, 0.5), "defense": "sat", "options": {"steps": 10}}
    assert merge.with_preset(sat)["preset"] == "sat-pgd10"  # older than the presets: its row's
    assert merge.with_preset({**sat, "preset": "sat-pgd10"})["preset"] == "sat-pgd10"
    with pytest.raises(ValueError, match="names preset 'sat-pgd10-l1x2'; the row trains 'sat-pgd10' here"):
        merge.with_preset({**sat, "preset": "sat-pgd10-l1x2"})
    with pytest.raises(ValueError, match="not those of preset 'sat-pgd10'"):
        merge.with_preset({**sat, "options": {"steps": 5}})  # the row meant something else there
    with pytest.raises(ValueError, match="no row 'sat-pgd20' here"):
        merge.with_preset({**sat, "method": "sat-pgd20"})


def test_runs_copy_finished_models_only_where_none_is_here_or_held(merge: ModuleType, tmp_path: Path) -> None:
    study = sys.modules["study"]
    other = tmp_path / "other"
    (other / "benchmarks" / "results").mkdir(parents=True)
    (other / "benchmarks" / "results" / "s.json").write_text('{"records": []}', encoding="utf-8")
    for method in ("trained", "held", "finished-here", "part-trained"):
        run = merge.other_dirs(other, "s", method, 0)[1]
        (run / "checkpoint").mkdir(parents=True)
        if method != "part-trained":
            (run / "final").mkdir()
            (run / "final" / "model.safetensors").write_bytes(b"weights")
        for name in ("summary.json", "environment.json", "eval-apgd-4.state.json", "notes.txt"):
            (run / name).write_text("{}", encoding="utf-8")
    mine = study.run_path("s", "trained", 0)
    (mine / "checkpoint").mkdir(parents=True)  # part-trained here: replaced by the finished one
    (study.run_path("s", "finished-here", 0) / "final").mkdir(parents=True)
    with study.claimed(study.piece_lock("s", "held", 0)):
        # flock is per open file: a second open in this process conflicts as another process would
        report = merge.merge(other, "s", runs=True)
    assert report["runs"] == ["trained seed 0"]
    assert sorted(report["skipped"]) == [
        "finished-here seed 0: a finished model here already",
        "held seed 0: a worker here holds it",
    ]
    assert sorted(p.name for p in mine.iterdir()) == [
        "environment.json",
        "eval-apgd-4.state.json",
        "final",
        "summary.json",
    ]  # no checkpoint, nothing unknown
    assert (mine / "final" / "model.safetensors").read_bytes() == b"weights"
    assert not study.run_path("s", "part-trained", 0).exists()


def test_an_unreadable_records_file_is_one_clear_error_and_merges_nothing(
    merge: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = sys.modules["study"]
    results = tmp_path / "other" / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "s.json").write_text('{"records": [', encoding="utf-8")  # cut off mid-write
    assert merge.main([str(tmp_path / "other"), "--study", "s"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "s.json" in err
    assert not (study.RESULTS / "s.json").exists()
