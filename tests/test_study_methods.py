"""benchmarks/study.py: every study row trains a preset that builds its defense, and `make bench` trains
each of its presets exactly once (a typo would otherwise surface hours into the study)."""

from __future__ import annotations

import json
import shutil
import signal
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

import metaat.defenses as defenses
from metaat.threats import parse_threats

Loader = Callable[[str], ModuleType]  # the load_benchmark fixture (conftest.py)
LOOKAHEAD = "metaat-learned-refine3-pgd5-every4-distill-lookahead-adaptive-l1x2-js"  # rows named after their presets
NO_DISTILL = "metaat-learned-refine3-pgd5-every4-adaptive-l1x2-js"


@pytest.fixture
def study_tmp(load_benchmark: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """study.py with its results, runs and parked folders in ``tmp_path`` (results folder created)."""
    study = load_benchmark("study")
    monkeypatch.setattr(study, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(study, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(study, "PARKED", tmp_path / "parked")
    study.RESULTS.mkdir()
    return study


def test_every_row_builds_its_defense(load_benchmark: Loader) -> None:
    study = load_benchmark("study")
    for method, (name, threats, options) in study.METHODS.items():
        parse_threats(list(threats))
        defense = defenses.create(name, list(threats), **options)
        assert defense is not None, method


def test_full_study_trains_each_of_its_presets_once_in_priority_order(load_benchmark: Loader) -> None:
    study = load_benchmark("study")
    full = study.FULL_METHODS
    assert set(full) <= set(study.ROWS) and full[: len(study.PRIORITY)] == study.PRIORITY
    presets = [study.ROWS[m] for m in full]
    assert len(presets) == len(set(presets))  # no recipe trained twice under two row names
    # metaat's default first, then the target baselines; the quick study trains the default too
    assert study.ROWS[full[0]] == study.default_preset() == "metaat-learned-refine3-adaptive-l1x2-js"
    assert {"sat", "avg", "max", "msd"} <= set(study.PRIORITY)
    assert study.default_preset() in {study.ROWS[m] for m in study.QUICK_METHODS}
    # every defense is in the full study, and every ablation of the default (one option off)
    assert {study.METHODS[m][0] for m in study.METHODS} == {study.METHODS[m][0] for m in full}
    ablations = {"metaat-no-l1-prior", "metaat-no-adaptive", "metaat-no-consistency", "metaat-no-learned"}
    assert ablations <= set(full) and not set(full) & {m for m in study.ROWS if m.startswith("metaat-v1")}


def test_a_study_row_runs_its_preset_with_what_the_study_sets_for_every_row(load_benchmark: Loader) -> None:
    study = load_benchmark("study")
    args = Namespace(epochs=3, train_subset=1000, threads=1, device="cpu")
    cfg = study.row_config("sat-l1x2", 2, args)
    preset = study.load_preset("sat-pgd10-l1x2")
    changes = {"epochs": 3, "train_subset": 1000, "eval_n": 200, "checkpoint_every": 100, "seed": 2, "threads": 1}
    assert cfg == preset.replace(**changes, device="cpu")
    assert cfg.options["weights"] == [1.0, 1.0, 2.0] and cfg.options["steps"] == 10  # every option spelled out
    assert study.METHODS["sat-l1x2"] == (cfg.defense, cfg.threats, cfg.options)


def test_methods_name_rows_or_the_preset_one_row_trains(
    load_benchmark: Loader, capsys: pytest.CaptureFixture[str]
) -> None:
    study = load_benchmark("study")
    assert study.rows_named(["sat-pgd10", "metaat", "msd10"]) == (["sat", "metaat", "msd"], [])
    rows, unknown = study.rows_named(["metaat-learned-refine3-adaptive-js", "nope"])
    assert rows == [] and unknown[1] == "nope"
    assert "the preset of rows metaat-no-l1-prior, metaat-v1-no-pgd: name one" in unknown[0]
    with pytest.raises(SystemExit):
        study.main(["--plan", "--methods", "metaat-learned-refine3-adaptive-js"])
    assert "name one" in capsys.readouterr().err


def test_unknown_method_lists_the_valid_ones(load_benchmark: Loader, capsys: pytest.CaptureFixture[str]) -> None:
    study = load_benchmark("study")
    with pytest.raises(SystemExit):
        study.main(["--methods", "metaat,nope"])
    err = capsys.readouterr().err
    assert "unknown method(s) ['nope']" in err and "metaat-v2" in err


def test_plan_reports_done_part_trained_and_the_training_left(
    load_benchmark: Loader, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    study = load_benchmark("study")
    results, runs = tmp_path / "results", tmp_path / "runs"
    results.mkdir()
    monkeypatch.setattr(study, "RESULTS", results)
    monkeypatch.setattr(study, "RUNS", runs)
    monkeypatch.setattr(study, "PARKED", tmp_path / "parked")
    part = runs / "s" / "max" / "seed0"
    part.mkdir(parents=True)
    epochs = [1, 2, 2]  # epoch 2 logged twice around a resume counts once
    lines = [f'{{"type": "epoch", "epoch": {e}}}' for e in epochs] + ['{"type": "step", "epoch": 3}']
    part.joinpath("metrics.jsonl").write_text("\n".join(lines) + "\n")
    mid = runs / "s" / "max" / "seed1" / "checkpoint"  # checkpointed half-way through epoch 3
    mid.mkdir(parents=True)
    mid.joinpath("state.json").write_text(json.dumps({"epoch": 2, "step_in_epoch": 50, "steps_per_epoch": 100}))
    trained = runs / "s" / "msd" / "seed0"  # trained, its evaluation a third of the way through L1
    (trained / "final").mkdir(parents=True)
    state = {
        "clean": "1101",
        "fingerprint": {"threats": ["linf:0.1", "l1:10"], "union_only": False},
        "threats": {"linf:0.1": {"chunks": {"0": "10", "1": "1"}}, "l1:10": {"chunks": {"0": "0"}}},
    }
    trained.joinpath("eval-apgd-1000.state.json").write_text(json.dumps(state))
    parked = tmp_path / "parked" / "s" / "msd" / "seed1" / "checkpoint"  # another machine's, a quarter into epoch 2
    parked.mkdir(parents=True)
    parked.joinpath("state.json").write_text(json.dumps({"epoch": 1, "step_in_epoch": 25, "steps_per_epoch": 100}))
    done = {"method": "sat", "seed": 0, "epochs": 5, "train_subset": None, "n": 1000, "suite": "apgd"}
    records = [{**done, "passes_per_example": 11.0}, {**done, "method": "max", "seed": 9, "passes_per_example": 33.0}]
    records[0] |= {"eval_seconds": 1800.0}
    records[1] |= {"eval_seconds": 9.0, "device": "cuda"}  # a GPU evaluation says nothing of the CPU's pace
    results.joinpath("s.json").write_text(json.dumps({"records": records}))
    speed = {"results": [{"seconds_per_60k_epoch": 300.0, "passes_per_example": 10.0}]}
    results.joinpath("train_speed.json").write_text(json.dumps(speed))
    methods = ["--methods", f"sat,max,msd,{LOOKAHEAD}", "--seeds", "0,1"]
    assert study.main(["--plan", "--study", "s", *methods]) == 0
    out = capsys.readouterr().out
    assert "| sat | 0 | done | 11.00 | 0 |" in out
    assert "| max | 0 | 2.00 of 5 epochs | 33.00 | 99 |" in out  # 3 epochs left at 33 passes
    assert "| max | 1 | 2.50 of 5 epochs | 33.00 | 82 |" in out  # 2.5 epochs left
    # no record prices these two: the training loop's meter over a few random batches does
    assert f"| {LOOKAHEAD} | 0 | not started | 7.12 (dry run) | 36 |" in out
    assert "| msd | 0 | trained, evaluation left (linf 100 %, l1 33 %) | 26.00 (dry run) | 0 |" in out
    # no run folder here: a worker would resume from the repository's parked copy
    assert "| msd | 1 | 1.25 of 5 epochs (parked copy) | 26.00 (dry run) | 98 |" in out
    # 55 (sat seed 1) + 99 + 82.5 + 97.5 + 2 x 35.6 pass-epochs, at 30 s each
    assert "training left: 405 pass-epochs, about 3.4 h at 2 threads" in out
    assert f"passes of {LOOKAHEAD}, msd from a dry run" in out
    # 7 of the 8 pieces still to score, at the one CPU record's 1,800 s
    assert "evaluations left: 7 piece(s), about 3.5 h of one core" in out
    assert "took 1,800 s, over 1 record(s)" in out
    assert not (runs / "s" / "sat").exists()  # --plan runs nothing


def test_a_piece_claimed_by_another_worker_is_skipped_and_shown_as_running(
    study_tmp: ModuleType, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    study = study_tmp

    def never(*_: object) -> None:
        raise AssertionError("a claimed piece must not run twice")

    monkeypatch.setattr(study, "run_one", never)
    with study.claimed(study.RUNS / "s" / "max" / "seed0.lock") as mine:  # "another worker" holds it
        assert mine
        assert study.main(["--study", "s", "--methods", "max", "--seeds", "0"]) == 0
        assert "max seed 0: running in another process, skipped" in capsys.readouterr().out
        assert study.main(["--plan", "--study", "s", "--methods", "max", "--seeds", "0"]) == 0
        assert "| max | 0 | not started, training now |" in capsys.readouterr().out
    assert not study.is_claimed(study.RUNS / "s" / "max" / "seed0.lock")  # released with its holder


def test_workers_appending_records_at_once_lose_none(study_tmp: ModuleType) -> None:
    study = study_tmp
    import multiprocessing

    out = study.RESULTS / "s.json"
    base = {"epochs": 5, "train_subset": None, "n": 1000, "suite": "apgd"}

    def worker(method: str) -> None:
        for seed in range(25):
            study.add_record(out, "s", {**base, "method": method, "seed": seed})

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=worker, args=(m,)) for m in ("a", "b", "c")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    records = study.load_records(out)
    assert sorted((r["method"], r["seed"]) for r in records) == [(m, s) for m in "abc" for s in range(25)]
    study.add_record(out, "s", {**base, "method": "a", "seed": 0, "clean": 0.5})  # same key: replaced
    again = study.load_records(out)
    assert len(again) == 75 and [r.get("clean") for r in again if (r["method"], r["seed"]) == ("a", 0)] == [0.5]


def test_the_full_study_scores_held_out_test_points_and_older_slices_are_not_done(
    study_tmp: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    study = study_tmp
    old = {"method": "sat", "seed": 0, "epochs": 5, "train_subset": None, "n": 1000, "suite": "apgd"}
    study.RESULTS.joinpath("fmnist_study.json").write_text(json.dumps({"records": [old]}))
    args = ["--plan", "--methods", "sat", "--seeds", "0"]
    assert study.main(args) == 0  # fmnist_study: test points 9,000-9,999, so the 0-999 record is not this piece
    assert "| sat | 0 | not started |" in capsys.readouterr().out
    assert study.main([*args, "--test-start", "0"]) == 0
    assert "| sat | 0 | done |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        study.main([*args, "--test-start", "9500"])  # 9,500 + 1,000 points run past the test set
    assert "the test points must lie in 0..9999" in capsys.readouterr().err


def test_a_superseded_record_is_not_done_and_is_kept_beside_its_replacement(
    study_tmp: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    study = study_tmp
    key = {"method": "eat", "seed": 0, "epochs": 5, "train_subset": None, "n": 1000, "suite": "apgd"}
    old = {**key, "clean": 0.1, "superseded": "an earlier sampling law"}
    out = study.RESULTS / "s.json"
    out.write_text(json.dumps({"records": [old]}))
    assert study.main(["--plan", "--study", "s", "--methods", "eat", "--seeds", "0"]) == 0
    assert "| eat | 0 | not started |" in capsys.readouterr().out
    study.add_record(out, "s", {**key, "clean": 0.8})
    assert [r.get("clean") for r in study.load_records(out)] == [0.1, 0.8]


def _state(path: Path, union_only: bool, chunks: dict[str, dict[str, str]], clean: str) -> Path:
    threats = ["linf:0.1", "l2:1.5", "l1:10"]
    state = {
        "format": "metaat.eval-state",
        "clean": clean,
        "fingerprint": {"threats": threats, "union_only": union_only},
        "threats": {t: {"chunks": c} for t, c in chunks.items()},
    }
    path.write_text(json.dumps(state), encoding="utf-8")
    return path


def test_eval_progress_shares_per_threat_and_union_only_counts_out_of_the_survivors(
    load_benchmark: Loader, tmp_path: Path
) -> None:
    study = load_benchmark("study")
    clean = "1" * 8 + "0" * 2  # 8 clean-correct points
    full = _state(tmp_path / "a.json", False, {"linf:0.1": {"0": "1101", "1": "1111"}, "l2:1.5": {"0": "11"}}, clean)
    assert study.eval_progress(full) == "linf 100 %, l2 25 %, l1 0 %"
    # union-only: L∞ finished with 6 of 8 robust, so L2 attacks those 6 (4 so far, 3 robust); L1's
    # share is unknown until L2 ends
    chunks = {"linf:0.1": {"0": "1101", "1": "1110"}, "l2:1.5": {"0": "1011"}}
    union = _state(tmp_path / "b.json", True, chunks, clean)
    assert study.eval_progress(union) == "linf 8 of 8 points, l2 4 of 6 points, l1 0 points"
    chunks["l2:1.5"]["1"] = "10"
    assert study.eval_progress(_state(union, True, chunks, clean)) == (
        "linf 8 of 8 points, l2 6 of 6 points, l1 0 of 4 points"
    )
    assert study.eval_progress(tmp_path / "missing.json") == ""
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    assert study.eval_progress(tmp_path / "bad.json") == ""


def test_a_finished_piece_keeps_its_small_files_as_evidence(study_tmp: ModuleType) -> None:
    study = study_tmp
    run = study.run_path("s", "max", 0)
    run.mkdir(parents=True)
    state = study.eval_state_path(run, "apgd", 10, 0)
    for path, text in ((state, "{}"), (run / "metrics.jsonl", "{}\n"), (run / "summary.json", "{}")):
        path.write_text(text, encoding="utf-8")
    (run / "final").mkdir()  # models stay out of the repository
    copied = study.keep_evidence("s", "max", 0, [state, run / "missing.state.json"])
    kept = study.evidence_path("s", "max", 0)
    assert sorted(p.name for p in copied) == sorted([state.name, "metrics.jsonl", "summary.json"])
    assert sorted(p.name for p in kept.iterdir()) == sorted(p.name for p in copied)
    assert kept.is_relative_to(study.RESULTS) and not kept.is_relative_to(study.RUNS)
    assert study.run_dirs("s", "max", 0) == (run, kept)  # readers look in the run folder first


class _Result:
    clean, union, robust, timings = 0.9, 0.5, {"linf:0.1": 0.7, "l2:1.5": 0.6, "l1:10": 0.55}, {"total": 1.0}


def test_a_headline_run_reevaluates_lost_study_flags_resuming_a_cut_off_rerun(
    study_tmp: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    import metaat.eval

    study = study_tmp
    calls: list[Path] = []

    def evaluate(*args: object, state_path: Path, **kwargs: object) -> _Result:
        calls.append(state_path)
        return _Result()

    monkeypatch.setattr(metaat.eval, "evaluate", evaluate)
    args = argparse.Namespace(epochs=5, train_subset=None, n=10, test_start=0, suite="standard", union_only=True)
    rerun = study.study_protocol_rerun
    assert rerun("max", 0, args, "s", None, None, None) is None and calls == []  # no study record: nothing to do
    record = {"method": "max", "seed": 0, "epochs": 5, "n": 10, "test_start": 0, "suite": "apgd"}
    study.RESULTS.joinpath("s.json").write_text(
        json.dumps({"records": [{**record, "clean": 0.9, "robust": {"union": 0.5}}]}), encoding="utf-8"
    )
    state = study.eval_state_path(study.run_path("s", "max", 0), "apgd", 10, 0)
    state.parent.mkdir(parents=True)
    state.write_text("{}", encoding="utf-8")  # a rerun cut off part-way: evaluate resumes it, not skipped
    out = rerun("max", 0, args, "s", None, None, None)
    assert calls == [state] and out is not None and out["matches_record"]
    assert (study.evidence_path("s", "max", 0) / state.name).is_file()  # kept, so the next headline skips it
    assert rerun("max", 0, args, "s", None, None, None) is None and calls == [state]


def test_a_record_names_both_machines_when_its_model_trained_elsewhere(study_tmp: ModuleType, tmp_path: Path) -> None:
    label = study_tmp.hardware_label
    assert label(tmp_path, "cuda", "cpu", "x86_64, 2 cores") == "x86_64, 2 cores"  # no environment.json
    (tmp_path / "environment.json").write_text(json.dumps({"hardware": "GPU H100"}), encoding="utf-8")
    assert label(tmp_path, "cpu", "cpu", "x86_64, 2 cores") == "x86_64, 2 cores"
    assert label(tmp_path, "cuda:0", "cuda", "GPU H100") == "GPU H100"
    assert label(tmp_path, "cuda", "cpu", "x86_64, 2 cores") == "trained on GPU H100, evaluated on x86_64, 2 cores"


def test_a_row_not_run_yet_takes_the_passes_of_its_twin(study_tmp: ModuleType) -> None:
    study = study_tmp
    records = [
        {"method": "metaat-v2-no-pgd", "passes_per_example": 6.0},
        {"method": "sat", "passes_per_example": 11},
        {"method": "mng", "passes_per_example": 15.5},
        {"method": "metaat-v2", "passes_per_example": 6.25},
    ]
    (study.RESULTS / "x.json").write_text(json.dumps({"records": records}), encoding="utf-8")
    passes = study.known_passes()
    assert passes["metaat"] == 6.0 and passes["sat"] == 11.0  # learned start: the same passes
    assert passes["metaat-no-learned"] == 6.0  # the same row as metaat-v2-no-pgd, spelled otherwise
    assert passes["mng-noise"] == 15.5  # MNG-AC's generator input: no target pass either
    assert passes["metaat-v3"] == 6.25 and passes[NO_DISTILL] == 6.25  # nor the distillation
    assert LOOKAHEAD not in passes and "metaat-no-consistency" not in passes  # other options: no twin


def test_a_row_no_record_prices_is_priced_by_a_dry_run_of_the_meter(load_benchmark: Loader) -> None:
    study = load_benchmark("study")
    assert study.dry_run_passes("metaat") == pytest.approx(6.0)  # the documented count
    assert study.dry_run_passes("sat") == pytest.approx(11.0)
    # the look-ahead's second-order step adds 3.5 passes on each PGD batch (one in four)
    assert study.dry_run_passes(LOOKAHEAD) == pytest.approx(6.25 + 3.5 / 4)


def test_a_resumed_evaluation_counts_every_process_time(load_benchmark: Loader) -> None:
    study = load_benchmark("study")
    # resumed: the last process ran only L1's rest, while the per-threat seconds add up every process's
    resumed = {"eval_seconds": 500.0, "eval_threat_seconds": {"linf:0.1": 1000.0, "l2:1.5": 900.0, "l1:10": 500.0}}
    assert study.evaluation_seconds(resumed) == 2400.0
    # in one go: the total also holds the unseen summary, which no threat's seconds include
    whole = {"eval_seconds": 2600.0, "eval_threat_seconds": {"linf:0.1": 1000.0, "l2:1.5": 900.0}}
    assert study.evaluation_seconds(whole) == 2600.0
    assert study.evaluation_seconds({"eval_seconds": 12.0}) == 12.0  # an old record without per-threat times


def test_a_parked_piece_resumes_on_a_fresh_machine_bit_exact(
    study_tmp: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--park keeps a stopped run's checkpoint in the repository; with the run folder gone (a new
    machine), the piece restores it and training ends on the same weights as an uninterrupted run. A
    damaged checkpoint is refused and the parked copy before it stays whole; once done, a parked checkpoint
    goes and a parked trained model stays."""
    import torch
    from safetensors.torch import load_file
    from test_train_resume import kill_after_a_mid_epoch_checkpoint

    from metaat.train import TrainConfig, resume_run, train

    run_dir = study_tmp.run_path("s", "m", 0)
    stopped = kill_after_a_mid_epoch_checkpoint(run_dir, signal.SIGTERM)
    assert stopped.returncode == 130
    args = Namespace(epochs=2, train_subset=None, n=10, test_start=0, suite="apgd")
    assert study_tmp.park(["m"], [0], args, "s", set()).startswith("m seed 0: parked (checkpoint at epoch ")
    parked = study_tmp.parked_path("s", "m", 0)
    assert not (parked / "checkpoint.prev").exists() and (parked / "config.yaml").is_file()

    # a damaged run checkpoint is refused; the parked copy before it is untouched
    weights = run_dir / "checkpoint" / "state.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(Exception, match="state.safetensors"):
        study_tmp.park_one("s", "m", 0)
    assert (parked / "checkpoint" / "state.safetensors").read_bytes() == good
    assert not list(parked.parent.glob(".*tmp"))

    shutil.rmtree(run_dir)  # a fresh machine: the run folder is gone, the repository's copy is not
    assert study_tmp.restore_parked("s", "m", 0)
    assert not study_tmp.restore_parked("s", "m", 0)  # this machine's own checkpoint is never overwritten
    assert resume_run(run_dir, quiet=True).status == "completed"
    reference = train(TrainConfig.from_yaml(run_dir / "config.yaml"), tmp_path / "reference", quiet=True)
    assert reference.status == "completed"
    a = load_file(str(run_dir / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "reference" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # once done, a parked trained model stays (a headline suite may still evaluate it) ...
    done = {study_tmp.wanted_key("m", 0, args)}
    assert study_tmp.park(["m"], [0], args, "s", set()) == "m seed 0: parked (trained model)"
    assert (parked / "final").is_dir() and not (parked / "checkpoint").exists()
    assert study_tmp.park(["m"], [0], args, "s", done) == (
        "m seed 0: done, parked trained model kept (other suites may need it)"
    )
    assert (parked / "final" / "model.safetensors").is_file()
    # ... while a parked checkpoint of a piece now done is stale and goes
    shutil.rmtree(parked / "final")
    (parked / "checkpoint").mkdir()
    assert study_tmp.park(["m"], [0], args, "s", done) == "m seed 0: done, parked checkpoint removed"
    assert not parked.exists()
