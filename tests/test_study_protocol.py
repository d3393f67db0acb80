"""benchmarks/study.py's selection protocol (study_protocol.py): validation points held out of training
(``--holdout``, ``--split val``), the split that chose each row (``--chosen-on``), and ``--suite
apgd-worst``; without ``--holdout`` the records, keys and state files are what they were."""

from __future__ import annotations

import json
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn

import metaat.data as data
from metaat.data import idx
from metaat.eval.state import EvalState

Loader = Callable[[str], ModuleType]  # the load_benchmark fixture (conftest.py)
HAVE_FMNIST = ((idx.debian_dir() or idx.DEBIAN_DEFAULT_DIR) / "train-images-idx3-ubyte.gz").is_file()
OLD_KEY = ("sat", 0, 5, None, 1000, 9000, "apgd")  # a record key as every study wrote it before the protocol


@pytest.fixture
def study_tmp(load_benchmark: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """study.py with its results, runs and parked folders in ``tmp_path`` (results folder created)."""
    study = load_benchmark("study")
    monkeypatch.setattr(study, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(study, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(study, "PARKED", tmp_path / "parked")
    study.RESULTS.mkdir()
    return study


def _args(**changes: Any) -> Namespace:
    values: dict[str, Any] = {"epochs": 5, "train_subset": None, "n": 1000, "test_start": 9000, "suite": "apgd"}
    values.update(changes)
    return Namespace(**values)


def test_without_a_holdout_nothing_changes(load_benchmark: Loader) -> None:
    study = load_benchmark("study")
    old = dict(zip(("method", "seed", "epochs", "train_subset", "n", "test_start", "suite"), OLD_KEY, strict=True))
    args = _args()  # a namespace from before the protocol's options existed
    assert study.wanted_key("sat", 0, args) == study.record_key(old) == (*OLD_KEY, "test", 0, 0)
    assert study.protocol.point_fields(args) == {"test_start": 9000}  # a record gains no field
    assert study.protocol.record_fields(_args(chosen_on=None, holdout=0)) == {}
    assert study.row_config("sat", 0, _args(threads=1, device="cpu")).train_holdout == 0
    run = Path("r")
    assert study.state_paths(run, args) == [run / "eval-apgd-1000-from9000.state.json"]
    assert study.protocol.default_study(False, 0) == "fmnist_study"
    assert study.protocol.default_study(True, 0) == "fmnist_quick"


def test_a_holdout_study_keys_and_files_its_records_apart(load_benchmark: Loader) -> None:
    study = load_benchmark("study")
    val = _args(holdout=5000, split="val", val_start=0, chosen_on="none")
    test = _args(holdout=5000, split="test", val_start=0, chosen_on="val", suite="apgd-worst")
    assert study.protocol.point_fields(val) == {"train_holdout": 5000, "split": "val", "val_start": 0}
    assert study.protocol.point_fields(test) == {"train_holdout": 5000, "split": "test", "test_start": 9000}
    assert study.protocol.record_fields(test) == {"chosen_on": "val"}
    keys = {study.wanted_key("sat", 0, a) for a in (val, test, _args(holdout=5000, split="test"), _args())}
    assert len(keys) == 4  # val, test with each suite, and the old protocol: four pieces, never one
    assert study.row_config("sat", 0, _args(threads=1, device="cpu", holdout=5000)).train_holdout == 5000
    run = Path("r")
    assert study.state_paths(run, val) == [run / "eval-apgd-val-1000.state.json"]
    # apgd-worst: the apgd first pass's state file (shared with the apgd record), then its extra pass's
    assert study.state_paths(run, test) == [
        run / "eval-apgd-1000-from9000.state.json",
        run / "eval-apgd-worst-1000-from9000.state.json",
    ]
    assert study.protocol.default_study(False, 5000) == "fmnist_holdout5000"
    assert study.protocol.default_study(True, 5000) == "fmnist_quick_holdout5000"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--split", "val"], "--split val needs --holdout N"),
        (["--holdout", "5000", "--split", "val", "--val-start", "4500"], "must lie in 0..4999"),
        (["--holdout", "5000"], "give --chosen-on val, test or none"),
        (["--suite", "apgd-worst", "--union-only"], "drop --union-only"),
        (["--holdout", "70000", "--chosen-on", "val"], "hold out between 1 and 59,999"),
        # the old study's records trained on every image: a holdout study never writes into its file
        (["--holdout", "5000", "--chosen-on", "val", "--study", "old"], "trained on every training image, not 5000"),
        (["--study", "held"], "trained with the last 5000 training images held out, not 0"),
    ],
)
def test_protocol_mistakes_are_refused_before_anything_runs(
    study_tmp: ModuleType, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    old = {"method": "sat", "seed": 0, "epochs": 5, "train_subset": None, "n": 1000, "suite": "apgd"}
    study_tmp.RESULTS.joinpath("old.json").write_text(json.dumps({"records": [old]}), encoding="utf-8")
    held = {**old, "train_holdout": 5000, "split": "val", "val_start": 0}
    study_tmp.RESULTS.joinpath("held.json").write_text(json.dumps({"records": [held]}), encoding="utf-8")
    with pytest.raises(SystemExit):
        study_tmp.main(["--plan", "--methods", "sat", *argv])
    assert message in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST is not installed (Debian dataset-fashion-mnist)")
def test_validation_points_are_the_last_training_images(load_benchmark: Loader) -> None:
    study = load_benchmark("study")
    x, y = study.protocol.load_points(_args(n=7, holdout=5000, split="val", val_start=3))
    xs, ys = data.load("fashion-mnist", "train", n=7, start=55_003)
    assert torch.equal(x, xs) and torch.equal(y, ys)


def test_a_finished_worst_case_state_gives_its_union(study_tmp: ModuleType, tmp_path: Path) -> None:
    r = {"method": "m", "seed": 0, "n": 4, "test_start": 0, "suite": "apgd-worst", "clean": 0.75}
    r["robust"] = {"union": 0.25}
    path = study_tmp.record_state_path(tmp_path, r, "apgd-worst")
    state = EvalState({"first_pass": {"suite": "apgd"}, "threats": ["linf:0.1"]}, path, clean="1101")
    state.save()
    assert study_tmp.finished_state_in(tmp_path, r, "apgd-worst") is None  # unfinished: no final flags yet
    state.record_section("worst_case", {"flags": {"union": "0100"}, "extra_broken": {"union": 1}})
    found = study_tmp.finished_state_in(tmp_path, r, "apgd-worst")
    assert found is not None and found[1] == [False, True, False, False] and study_tmp.reproduces(r, *found)


def test_the_worst_case_scores_trained_models_only(load_benchmark: Loader, tmp_path: Path) -> None:
    protocol = load_benchmark("study").protocol
    with pytest.raises(SystemExit, match="--suite apgd-worst trains nothing"):
        protocol.check_trained_for_worst(tmp_path, _args(suite="apgd-worst"))
    protocol.check_trained_for_worst(tmp_path, _args())  # the other suites train what they score
    (tmp_path / "final").mkdir()
    protocol.check_trained_for_worst(tmp_path, _args(suite="apgd-worst"))
    first = {"clean": 0.8, "robust": {"union": 0.5}}
    assert protocol.first_pass_matches(first, []) is None
    assert protocol.first_pass_matches(first, [{"clean": 0.8, "robust": {"union": 0.5}}]) is True
    assert protocol.first_pass_matches(first, [{"clean": 0.8, "robust": {"union": 0.51}}]) is False


def _trained_run(run: Path, holdout: int) -> None:
    """A run folder as study.py leaves it after training: a small MLP on 1,000 Fashion-MNIST images."""
    import metaat.models as models

    torch.manual_seed(0)
    x, y = data.load("fashion-mnist", "train", n=1000)
    net = models.create("mlp", num_classes=10, in_channels=1, image_size=28, hidden=32)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(3):
        for i in range(0, 1000, 100):
            loss = nn.functional.cross_entropy(net(x[i : i + 100]), y[i : i + 100])
            opt.zero_grad()
            loss.backward()
            opt.step()
    models.save_model(net.eval(), run / "final")
    (run / "config.yaml").write_text(f"train_holdout: {holdout}\n", encoding="utf-8")
    cost = {"passes_per_example": 1.0, "attack_seconds": 0.0, "update_seconds": 2.0}
    (run / "summary.json").write_text(json.dumps({"cost": cost, "epochs_completed": 1, "device": "cpu"}))


@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST is not installed (Debian dataset-fashion-mnist)")
def test_a_holdout_study_scores_validation_points_then_the_worst_case(
    study_tmp: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = study_tmp
    monkeypatch.setattr(study, "unseen_summary", lambda *a, **k: {"mean": 0.5, "n": 8, "start": k["start"]})
    run = study.run_path("fmnist_holdout5000", "standard", 0)
    _trained_run(run, 5000)
    base = ["--holdout", "5000", "--split", "val", "--methods", "standard", "--seeds", "0", "--n", "8"]
    base += ["--epochs", "1", "--threads", "1", "--chosen-on", "none"]
    assert study.main(base) == 0
    assert study.main([*base, "--suite", "apgd-worst"]) == 0
    records = json.loads((study.RESULTS / "fmnist_holdout5000.json").read_text())["records"]
    apgd, worst = records
    for r in records:
        assert (r["train_holdout"], r["split"], r["val_start"], r["chosen_on"]) == (5000, "val", 0, "none")
        assert "test_start" not in r
    assert apgd["unseen"] == {"mean": 0.5, "n": 8, "start": 0, "split": "val"} and worst["unseen"] is None
    # the worst case's first pass is the apgd record's evaluation, read back, and its AND is never higher
    assert worst["first_pass"]["robust"] == apgd["robust"] and worst["first_pass"]["clean"] == apgd["clean"]
    assert worst["first_pass"]["matches_apgd_record"] is True
    threats = ["linf:0.1", "l2:1.5", "l1:10"]
    assert set(worst["extra_broken"]) == {*threats, "union"}
    for name, threat in zip(("linf", "l2", "l1"), threats, strict=True):
        lost = apgd["robust"][name] - worst["robust"][name]
        assert lost >= 0 and round(lost * 8) == worst["extra_broken"][threat]
    assert round((apgd["robust"]["union"] - worst["robust"]["union"]) * 8) == worst["extra_broken"]["union"]
    kept = sorted(p.name for p in study.evidence_path("fmnist_holdout5000", "standard", 0).glob("eval-*"))
    assert kept == ["eval-apgd-val-8.state.json", "eval-apgd-worst-val-8.state.json"]
    assert (
        study.main(base) == 0
        and len(json.loads((study.RESULTS / "fmnist_holdout5000.json").read_text())["records"]) == 2
    )
    # a model trained on every image is never scored as a held-out one
    _trained_run(study.run_path("fmnist_holdout5000", "sat", 0), 0)
    with pytest.raises(SystemExit, match="trained with train_holdout 0; this study: 5000"):
        study.main(["sat" if a == "standard" else a for a in base])
