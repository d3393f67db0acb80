"""benchmarks/relabel.py: a study's rows follow a changed default only where the configuration is the same."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

Loader = Callable[[str], ModuleType]  # the load_benchmark fixture (conftest.py)
ALL = ["linf:0.1", "l2:1.5", "l1:10"]
PREVIOUS = ["--previous-default", "metaat.pgd_every=4"]


def _record(method: str, seed: int, options: dict[str, Any]) -> dict[str, Any]:
    command = f"python benchmarks/study.py --methods sat,{method} --seeds {seed} --threads 1"
    return {"method": method, "seed": seed, "suite": "apgd", "defense": "metaat", "train_threats": ALL} | {
        "options": options,
        "command": command,
        "robust": {"union": 0.5},
    }


@pytest.fixture
def relabel(load_benchmark: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """relabel.py over a study ``s`` in ``tmp_path``: rows ``metaat`` (the v3 default, no options) and
    ``metaat-no-pgd`` on seeds 0 and 1, each with a run folder, evidence and paired files."""
    module = load_benchmark("relabel")
    study = sys.modules["study"]
    monkeypatch.setattr(study, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(study, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(study, "PARKED", tmp_path / "parked")
    records = [_record(m, s, o) for m, o in (("metaat", {}), ("metaat-no-pgd", {"pgd_every": 0})) for s in (0, 1)]
    study.RESULTS.mkdir()
    (study.RESULTS / "s.json").write_text(json.dumps({"study": "s", "records": records}), encoding="utf-8")
    for method in ("metaat", "metaat-no-pgd"):
        for base in (study.run_path("s", method, 0), study.evidence_path("s", method, 0)):
            base.mkdir(parents=True)
            (base / "summary.json").write_text(json.dumps({"was": method}), encoding="utf-8")
    rows = {"rows": [{"method": "metaat-no-pgd", "reference": "metaat", "seed": 0}]}
    (study.RESULTS / "s_paired_vs_metaat.json").write_text(json.dumps(rows), encoding="utf-8")
    (study.RESULTS / "s_monitor_gap.json").write_text(json.dumps({"rows": [{"method": "metaat"}]}), encoding="utf-8")
    transfer = {
        "rows": [{"method": "metaat", "source": "metaat-no-pgd"}],
        "seconds": {"ensemble for metaat seed 0 l1": 2},
    }
    (study.RESULTS / "s_transfer.json").write_text(json.dumps(transfer), encoding="utf-8")
    return module


def _records(study: ModuleType) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["method"], r["seed"]): r for r in study.load_records(study.RESULTS / "s.json")}


def test_rows_follow_the_new_default_with_their_folders_and_derived_files(
    relabel: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    study = sys.modules["study"]
    assert relabel.main(["--study", "s", *PREVIOUS, "metaat=metaat-v3", "metaat-no-pgd=metaat"]) == 0
    records = _records(study)
    assert set(records) == {("metaat-v3", 0), ("metaat-v3", 1), ("metaat", 0), ("metaat", 1)}
    v2, new = records[("metaat-v3", 0)], records[("metaat", 1)]
    assert (v2["options"], v2["relabelled_from"]) == ({"pgd_every": 4}, "metaat")
    assert v2["command"] == "python benchmarks/study.py --methods sat,metaat-v3 --seeds 0 --threads 1"
    assert v2["original_command"] == "python benchmarks/study.py --methods sat,metaat --seeds 0 --threads 1"
    assert (new["options"], new["relabelled_from"]) == ({}, "metaat-no-pgd")
    assert "--methods sat,metaat --seeds 1" in new["command"]
    # the folders swapped with their rows: what ran as metaat-no-pgd now lies under metaat
    for base in (study.run_path, study.evidence_path):
        assert json.loads((base("s", "metaat", 0) / "summary.json").read_text())["was"] == "metaat-no-pgd"
        assert json.loads((base("s", "metaat-v3", 0) / "summary.json").read_text())["was"] == "metaat"
    assert not (study.RESULTS / "s_paired_vs_metaat.json").exists()
    paired = json.loads((study.RESULTS / "s_paired_vs_metaat-v3.json").read_text())
    assert paired["rows"] == [{"method": "metaat", "reference": "metaat-v3", "seed": 0}]
    assert json.loads((study.RESULTS / "s_monitor_gap.json").read_text())["rows"] == [{"method": "metaat-v3"}]
    transfer = json.loads((study.RESULTS / "s_transfer.json").read_text())
    assert transfer["rows"] == [{"method": "metaat-v3", "source": "metaat"}]
    assert transfer["seconds"] == {"ensemble for metaat-v3 seed 0 l1": 2}
    assert "metaat-no-pgd -> metaat (2 record(s))" in capsys.readouterr().out


def test_an_earlier_default_keeps_its_name_and_a_parked_copy_follows_its_row(relabel: ModuleType) -> None:
    study = sys.modules["study"]
    path = study.RESULTS / "s.json"
    data = json.loads(path.read_text())
    data["records"].append(_record("metaat-v2", 0, {"learned_start": False}))  # ran while pgd_every=4 was default
    path.write_text(json.dumps(data), encoding="utf-8")
    parked = study.parked_path("s", "metaat-no-pgd", 1)
    parked.mkdir(parents=True)
    (parked / "summary.json").write_text('{"was": "metaat-no-pgd"}', encoding="utf-8")
    pairs = ["metaat=metaat-v3", "metaat-no-pgd=metaat", "metaat-v2=metaat-v2"]
    assert relabel.main(["--study", "s", *PREVIOUS, *pairs]) == 0
    v2 = _records(study)[("metaat-v2", 0)]
    assert v2["options"] == {"learned_start": False, "pgd_every": 4}
    assert v2["options_were"] == {"learned_start": False} and "relabelled_from" not in v2
    assert v2["command"] == "python benchmarks/study.py --methods sat,metaat-v2 --seeds 0 --threads 1"
    assert not parked.exists()
    moved = study.parked_path("s", "metaat", 1) / "summary.json"
    assert json.loads(moved.read_text())["was"] == "metaat-no-pgd"
    # without the previous default the old row's records would now build another configuration
    data["records"].append(_record("metaat-v1", 0, {"learned_start": True, "l1_weight": 1.0}))
    path.write_text(json.dumps({"study": "s", "records": [r for r in data["records"] if r["method"] == "metaat-v1"]}))
    assert relabel.main(["--study", "s", "metaat-v1=metaat-v1"]) == 1


def test_a_changed_configuration_a_collision_or_a_held_piece_changes_nothing(
    relabel: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    study = sys.modules["study"]
    before = (study.RESULTS / "s.json").read_text()
    # without the previous default, metaat's records (no options) now build the recipe without PGD batches
    assert relabel.main(["--study", "s", "metaat=metaat-v3", "metaat-no-pgd=metaat"]) == 1
    err = capsys.readouterr().err
    assert "metaat seed 0 (apgd): metaat-v3 builds another configuration (pgd_every 0 -> 4)" in err
    assert relabel.main(["--study", "s", *PREVIOUS, "metaat-no-pgd=metaat"]) == 1  # metaat's own records stay
    assert "metaat: already has records" in capsys.readouterr().err
    assert relabel.main(["--study", "s", *PREVIOUS, "metaat=nope"]) == 1
    assert "nope: not a study row; valid: standard" in capsys.readouterr().err
    with study.claimed(study.piece_lock("s", "metaat-no-pgd", 1)):  # a worker is on it
        assert relabel.main(["--study", "s", *PREVIOUS, "metaat=metaat-v3", "metaat-no-pgd=metaat"]) == 1
    assert "metaat-no-pgd seed 1: a worker holds its lock" in capsys.readouterr().err
    assert (study.RESULTS / "s.json").read_text() == before
    assert (study.run_path("s", "metaat", 0) / "summary.json").read_text() == '{"was": "metaat"}'
    assert relabel.main(["--study", "s", "--previous-default", "learned_start=false", "a=b"]) == 2
    assert "expected DEFENSE.OPTION=VALUE" in capsys.readouterr().err


def test_a_damaged_records_file_is_one_clear_error_and_nothing_moves(
    relabel: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    study = sys.modules["study"]
    (study.RESULTS / "s.json").write_text('{"records": [', encoding="utf-8")
    assert relabel.main(["--study", "s", *PREVIOUS, "metaat=metaat-v3", "metaat-no-pgd=metaat"]) == 2
    assert "relabel:" in capsys.readouterr().err and (study.RESULTS / "s_paired_vs_metaat.json").is_file()
    assert (study.run_path("s", "metaat", 0) / "summary.json").read_text() == '{"was": "metaat"}'
