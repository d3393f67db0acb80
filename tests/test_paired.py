"""benchmarks/paired.py: per-point union flags rebuilt from evaluation state files, and McNemar's test."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import studies_in

from metaat.eval.state import EvalState

Loader = Callable[[str], ModuleType]  # the load_benchmark fixture (conftest.py)


def test_union_flags_need_clean_and_every_threat(load_benchmark: Loader) -> None:
    study = load_benchmark("study")  # union_flags lives in study.py; paired and monitor_gap use it
    # 6 points, points 1 and 4 misclassified clean; the 4 clean-correct ones attacked in chunks of 3
    state: dict[str, Any] = {
        "clean": "101101",
        "threats": {"a": {"chunks": {"0": "111", "1": "0"}}, "b": {"chunks": {"0": "101", "1": "1"}}},
    }
    assert study.union_flags(state, ["a", "b"]) == [True, False, False, True, False, False]
    assert study.union_flags(state, ["b"]) == [True, False, False, True, False, True]
    state["threats"]["a"]["chunks"].pop("1")  # an unfinished evaluation is refused, not guessed
    with pytest.raises(ValueError, match="3 flags for 4 pending points"):
        study.union_flags(state, ["a"])


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


def test_a_state_reproduces_a_record_only_with_its_points_clean_and_union_counts(load_benchmark: Loader) -> None:
    study = load_benchmark("study")
    state = {"clean": "1011"}
    record = {"n": 4, "clean": 0.75, "robust": {"union": 0.5}}
    assert study.reproduces(record, state, [True, False, True, False])
    assert not study.reproduces(record, state, [True, True, True, False])  # another union
    assert not study.reproduces(record, {"clean": "1111"}, [True, False, True, False])  # another model's clean
    assert not study.reproduces({**record, "n": 8}, state, [True, False, True, False])  # another slice


def test_union_only_flags_and_the_headline_worst_case(load_benchmark: Loader) -> None:
    paired, study = load_benchmark("paired"), load_benchmark("study")
    # union-only: threat b attacks only the points still robust after a (points 0 and 2 of 0, 2, 3)
    state = {"clean": "1011", "threats": {"a": {"chunks": {"0": "110"}}, "b": {"chunks": {"0": "01"}}}}
    assert study.union_flags(state, ["a", "b"], union_only=True) == [False, False, True, False]
    with pytest.raises(ValueError, match="2 flags for 3 pending points"):
        study.union_flags(state, ["a", "b"])  # read as a full-mode state, the counts cannot match
    cells = paired.headline_agreement([True, True, False, True], [True, False, True, True])
    assert cells["union_worst_case"] == 0.5 and cells["union_standard"] == cells["union_study_protocol"] == 0.75
    assert (cells["broken_only_by_standard"], cells["broken_only_by_study_protocol"]) == (1, 1)


def _write_state(path: Path, clean: str, flags: str, model: str = "m", union_only: bool = False) -> None:
    """A real (digest-carrying) evaluation state file: one threat, one chunk."""
    fingerprint = {"threats": ["linf:0.1"], "model": model, "union_only": union_only}
    state = EvalState(fingerprint, path, clean, {"linf:0.1": {"chunks": {"0": flags}, "seconds": 1.0}})
    state.save()


def test_state_files_come_from_the_run_folder_or_its_evidence_and_lost_pairs_are_carried(
    load_benchmark: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    paired = load_benchmark("paired")
    study, results = sys.modules["study"], studies_in(tmp_path, monkeypatch)
    name = study.eval_state_path(Path(), "apgd", 4, 0).name

    def record(method: str, clean: float, union: float) -> dict[str, object]:
        r = {"method": method, "seed": 0, "n": 4, "test_start": 0, "suite": "apgd", "clean": clean}
        return {**r, "robust": {"union": union}}

    records = [record("max", 0.75, 0.5), record("a", 1.0, 0.75), record("lost", 1.0, 0.25)]
    (results / "s.json").write_text(json.dumps({"records": records}), encoding="utf-8")
    _write_state(study.run_path("s", "max", 0) / name, "1110", "110")  # robust: points 0, 1
    _write_state(study.evidence_path("s", "a", 0) / name, "1111", "1011")  # the evidence copy: 0, 2, 3
    _write_state(study.run_path("s", "a", 0) / name, "1111", "10")  # a re-evaluation under way: unfinished
    cells = {"n": 4, "both": 1, "only_method": 0, "only_reference": 1, "neither": 2, "mcnemar_p": 1.0}
    earlier = {"method": "lost", "reference": "max", "seed": 0, **cells, "difference_points": -25.0}
    old = {"finished": "2026-01-01T00:00:00Z", "rows": [earlier, {**earlier, "method": "gone"}]}
    (results / "s_paired.json").write_text(json.dumps(old), encoding="utf-8")

    assert paired.main(["--study", "s"]) == 0
    out = json.loads((results / "s_paired.json").read_text(encoding="utf-8"))
    rows = {r["method"]: r for r in out["rows"]}
    assert set(rows) == {"a", "lost"}  # "gone" is no current record: dropped
    assert (rows["a"]["both"], rows["a"]["only_method"], rows["a"]["only_reference"]) == (1, 2, 1)
    assert "kept_from" not in rows["a"] and rows["lost"]["kept_from"] == "2026-01-01T00:00:00Z"
    assert any("lost seed 0: no finished state file" in s for s in out["skipped"])
    assert "[kept from 2026-01-01T00:00:00Z]" in capsys.readouterr().out

    # an evidence copy edited by hand is refused, not read
    copy = study.evidence_path("s", "a", 0) / name
    copy.write_text(copy.read_text(encoding="utf-8").replace('"1011"', '"1111"'), encoding="utf-8")
    with pytest.raises(ValueError, match="does not match its sha256"):
        paired.main(["--study", "s"])


def test_the_reference_may_be_named_by_its_preset_and_each_pair_names_both_presets(
    load_benchmark: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    paired = load_benchmark("paired")
    study, results = sys.modules["study"], studies_in(tmp_path, monkeypatch)
    name = study.eval_state_path(Path(), "apgd", 4, 0).name
    base = {"seed": 0, "n": 4, "test_start": 0, "suite": "apgd", "clean": 1.0}
    records = [
        {**base, "method": "old-label", "preset": "p-ref", "robust": {"union": 0.5}},
        {**base, "method": "p-new", "preset": "p-new", "robust": {"union": 0.75}},
        {**base, "method": "twin", "preset": "p-twin", "robust": {"union": 0.5}},
        {**base, "method": "twin-again", "preset": "p-twin", "robust": {"union": 0.5}},
    ]
    (results / "s.json").write_text(json.dumps({"records": records}), encoding="utf-8")
    for method, flags in (("old-label", "1100"), ("p-new", "1110"), ("twin", "1100"), ("twin-again", "1100")):
        _write_state(study.run_path("s", method, 0) / name, "1111", flags)
    assert paired.main(["--study", "s", "--reference", "p-ref"]) == 0  # the preset of row old-label
    out = json.loads((results / "s_paired_vs_old-label.json").read_text(encoding="utf-8"))
    row = next(r for r in out["rows"] if r["method"] == "p-new")
    assert (row["reference"], row["preset"], row["reference_preset"], row["only_method"]) == (
        "old-label",
        "p-new",
        "p-ref",
        1,
    )
    capsys.readouterr()
    assert paired.main(["--study", "s", "--reference", "p-twin"]) == 2  # two rows train it: name one
    assert "'p-twin' (a row, or the preset of one row)" in capsys.readouterr().err


def test_a_retrained_models_rerun_serves_its_headline_but_not_the_records_pairs(
    load_benchmark: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paired = load_benchmark("paired")
    study, results = sys.modules["study"], studies_in(tmp_path, monkeypatch)
    apgd, standard = (study.eval_state_path(Path(), suite, 4, 0).name for suite in ("apgd", "standard"))

    def record(method: str, clean: float, union: float, suite: str = "apgd") -> dict[str, object]:
        r = {"method": method, "seed": 0, "n": 4, "test_start": 0, "suite": suite, "clean": clean}
        return {**r, "robust": {"union": union}}

    records = [record("max", 0.75, 0.5), record("a", 1.0, 0.5), record("a", 1.0, 0.5, "standard")]
    (results / "s.json").write_text(json.dumps({"records": records}), encoding="utf-8")
    _write_state(study.run_path("s", "max", 0) / apgd, "1110", "110")
    _write_state(study.run_path("s", "a", 0) / apgd, "1111", "1110", model="retrained")  # union 0.75, not 0.5
    _write_state(study.run_path("s", "a", 0) / standard, "1111", "0110", model="retrained", union_only=True)
    assert paired.main(["--study", "s"]) == 0
    out = json.loads((results / "s_paired.json").read_text(encoding="utf-8"))
    assert out["rows"] == [] and any("differs from the record's 0.500" in m for m in out["skipped"])
    (h,) = out["headline"]
    assert (h["union_standard"], h["union_study_protocol"], h["broken_only_by_standard"]) == (0.5, 0.75, 1)

    _write_state(study.run_path("s", "a", 0) / standard, "1111", "0110", model="another", union_only=True)
    assert paired.main(["--study", "s"]) == 0
    out = json.loads((results / "s_paired.json").read_text(encoding="utf-8"))
    assert any("scored different models" in m for m in out["skipped"])


def test_a_holdout_studys_validation_and_worst_case_records_are_paired_apart(
    load_benchmark: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paired = load_benchmark("paired")
    study, results = sys.modules["study"], studies_in(tmp_path, monkeypatch)
    held = {"seed": 0, "n": 4, "suite": "apgd", "clean": 1.0, "train_holdout": 100}
    val = {**held, "split": "val", "val_start": 0}
    test = {**held, "split": "test", "test_start": 0, "suite": "apgd-worst"}
    records = [
        {**val, "method": "max", "robust": {"union": 0.5}},
        {**val, "method": "a", "robust": {"union": 0.75}},
        {**test, "method": "max", "robust": {"union": 0.25}},
        {**test, "method": "a", "robust": {"union": 0.5}},
    ]
    (results / "h.json").write_text(json.dumps({"records": records}), encoding="utf-8")
    for method, flags in (("max", "1100"), ("a", "1110")):
        _write_state(study.record_state_path(study.run_path("h", method, 0), val, "apgd"), "1111", flags)
    for method, union in (("max", "0001"), ("a", "1001")):  # finished extra passes: their final flags
        path = study.record_state_path(study.run_path("h", method, 0), test, "apgd-worst")
        state = EvalState({"first_pass": {"suite": "apgd"}, "threats": ["linf:0.1"]}, path, "1111")
        state.record_section("worst_case", {"flags": {"union": union}, "extra_broken": {"union": 1}})
    assert paired.main(["--study", "h", "--split", "val"]) == 0
    (row,) = json.loads((results / "h_paired_val.json").read_text(encoding="utf-8"))["rows"]
    assert (row["method"], row["only_method"], row["only_reference"]) == ("a", 1, 0)
    assert paired.main(["--study", "h", "--suite", "apgd-worst"]) == 0
    (row,) = json.loads((results / "h_paired_apgd-worst.json").read_text(encoding="utf-8"))["rows"]
    assert (row["both"], row["only_method"], row["only_reference"]) == (1, 1, 0)
