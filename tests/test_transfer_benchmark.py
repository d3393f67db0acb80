"""benchmarks/transfer.py: white-box flags from an evaluation state against transferred examples."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from conftest import studies_in, tiny_mlp

import metaat.attacks as attacks
import metaat.data as data
import metaat.models as models
from metaat.attacks.transfer import load_adversarial, save_adversarial
from metaat.eval.state import EvalState, model_digest, tensor_digest

Loader = Callable[[str], ModuleType]  # the load_benchmark fixture (conftest.py)


def test_threat_flags_place_each_chunk_flag_on_its_clean_point(load_benchmark: Loader) -> None:
    transfer = load_benchmark("transfer")
    state: dict[str, Any] = {"clean": "10110", "threats": {"a": {"chunks": {"0": "10", "1": "1"}}}}
    assert transfer.threat_flags(state, "a") == [True, False, False, True, False]
    state["threats"]["a"]["chunks"].pop("1")
    with pytest.raises(ValueError, match="2 flags for 3 clean points"):
        transfer.threat_flags(state, "a")


def test_a_target_is_scored_against_every_other_source(load_benchmark: Loader, tmp_path: Path) -> None:
    transfer = load_benchmark("transfer")
    net = tiny_mlp(seed=0)
    models.save_model(net, tmp_path / "target")
    x, y = data.load("synthetic", "test", n=40)
    with torch.no_grad():
        clean = (net(x).argmax(1) == y).tolist()
    n_clean = sum(clean)
    # white-box flags: every clean point robust under every threat (as a masked model would report)
    state: dict[str, Any] = {"clean": "".join("1" if c else "0" for c in clean)}
    state["threats"] = {t: {"chunks": {"0": "1" * n_clean}} for t in transfer.THREATS}
    state["fingerprint"] = {"data": tensor_digest(x, y)}  # the points the evaluation scored
    meta = {"data": "synthetic", "split": "test", "within_threat": True, "attack": "test"}

    def saved(name: str, make: Callable[[str], torch.Tensor]) -> dict[str, Any]:
        return {
            t: load_adversarial(
                save_adversarial(
                    tmp_path / f"{name}-{t[:2]}.safetensors", make(t), y, torch.arange(40), meta={**meta, "threat": t}
                )
            )
            for t in transfer.THREATS
        }

    def pgd(t: str) -> torch.Tensor:
        return attacks.create("pgd", threat=t, steps=10)(net, x, y)

    sets = {
        ("untouched", 0): saved("untouched", lambda t: x),  # no perturbation: breaks nothing
        ("strong", 0): saved("strong", pgd),  # white-box PGD on the target itself, as a stand-in source
        ("target", 0): saved("self", pgd),  # the target's own set is never used against it
    }
    out = transfer.evaluate_target(("target", 0, tmp_path / "target"), state, sets)
    rows = {r["source"]: r for r in out["sources"]}
    assert set(rows) == {"untouched", "strong"}
    assert rows["untouched"]["union"] == out["clean"] == out["white_box"]["union"]
    assert rows["untouched"]["union_broken_only_by_transfer"] == 0
    survive = torch.tensor(clean)
    for t in transfer.THREATS:
        with torch.no_grad():
            survive &= net(pgd(t)).argmax(1) == y
    broken = n_clean - int(survive.sum())
    assert broken > 0  # the tiny model is breakable, so the check below can fail
    assert rows["strong"]["union_broken_only_by_transfer"] == broken
    assert out["union_points_only_transfer_broke"] == broken and out["strongest_source"] == "strong seed 0"
    assert out["union_white_box_and_every_transfer"] == round(100 * int(survive.sum()) / 40, 1)
    state["fingerprint"] = {"data": tensor_digest(x[1:], y[1:])}  # a state of other points is refused
    with pytest.raises(RuntimeError, match="not the points target seed 0 was scored on"):
        transfer.evaluate_target(("target", 0, tmp_path / "target"), state, sets)


def test_the_ensemble_averages_logits_and_is_scored_on_its_first_points(load_benchmark: Loader, tmp_path: Path) -> None:
    transfer = load_benchmark("transfer")
    a, b = tiny_mlp(seed=0), tiny_mlp(seed=1)
    x, y = data.load("synthetic", "test", n=40)
    with torch.no_grad():
        assert torch.allclose(transfer.Ensemble([a, b])(x), (a(x) + b(x)) / 2)
    target = tiny_mlp(seed=2)
    models.save_model(target, tmp_path / "target")
    with torch.no_grad():
        clean = (target(x).argmax(1) == y).tolist()
    # white-box flags over all 40 points: every clean point robust (as a masked model would report)
    state: dict[str, Any] = {"clean": "".join("1" if c else "0" for c in clean)}
    state["threats"] = {t: {"chunks": {"0": "1" * sum(clean)}} for t in transfer.THREATS}
    meta = {"data": "synthetic", "split": "test", "within_threat": True, "attack": "test", "source_model": "a+b"}
    by_threat = {}
    for t in transfer.THREATS:
        x_adv = attacks.create("pgd", threat=t, steps=10)(transfer.Ensemble([a, b]), x[:16], y[:16])
        path = tmp_path / f"ens-{t[:2]}.safetensors"
        by_threat[t] = load_adversarial(
            save_adversarial(path, x_adv, y[:16], torch.arange(16), meta={**meta, "threat": t})
        )
    out = transfer.score_ensemble(("target", 0, tmp_path / "target"), state, by_threat)
    survive = torch.tensor(clean[:16])
    for adv in by_threat.values():
        with torch.no_grad():
            survive &= target(adv.x_adv).argmax(1) == y[:16]
    assert int(survive.sum()) < sum(clean[:16])  # the ensemble's examples do transfer, so the counts can fail
    assert out["n"] == 16 and out["source"] == "a+b"
    assert out["white_box_union_on_these_points"] == round(100 * sum(clean[:16]) / 16, 1)
    assert out["union_broken_only_by_transfer"] == sum(clean[:16]) - int(survive.sum())
    assert out["union"] == round(100 * int(survive.sum()) / 16, 1)


def test_table_only_rewrites_the_markdown_from_the_json(
    load_benchmark: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    transfer = load_benchmark("transfer")
    monkeypatch.setattr(transfer, "RESULTS", tmp_path)
    assert transfer.main(["--study", "s", "--table-only"]) == 2  # no results yet: one clear line, no traceback
    row = {
        "method": "m",
        "clean": 80.0,
        "white_box": {"union": 50.0},
        "strongest_source": "o seed 1",
        "strongest_transfer_union": 60.0,
        "union_white_box_and_every_transfer": 49.9,
        "union_points_only_transfer_broke": 1,
        "ensemble": {"white_box_union_on_these_points": 51.0, "union": 58.5, "union_broken_only_by_transfer": 0},
    }
    out = {"study": "s", "steps": 10, "n": 1000, "start": 9000, "ensemble_n": 200, "targets": [row]}
    (tmp_path / "s_transfer.json").write_text(json.dumps(out))
    assert transfer.main(["--study", "s", "--table-only"]) == 0
    text = (tmp_path / "s_transfer.md").read_text()
    assert "first 200 points" in text and "| m | 80.0 | 50.0 | o seed 1 | 60.0 | 49.9 | 1 | 51.0 | 58.5 | 0 |" in text
    header, rule, body = text.splitlines()[2:5]
    assert header.count("|") == rule.count("|") == body.count("|") == 11  # ten columns, the rule matching


def test_momentum_sources_are_named_and_kept_apart(
    load_benchmark: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse
    import json

    transfer = load_benchmark("transfer")
    plain, mi = argparse.Namespace(steps=10, momentum=0.0), argparse.Namespace(steps=10, momentum=1.0)
    assert transfer.attack_tag(plain) == "pgd10" and transfer.attack_tag(mi) == "pgd10-mi1"
    assert transfer.result_name("s", 0.0) == "s_transfer" and transfer.result_name("s", 1.0) == "s_transfer_mi1"
    monkeypatch.setattr(transfer, "RESULTS", tmp_path)
    out = {"study": "s", "steps": 10, "momentum": 1.0, "n": 10, "start": 0, "ensemble_n": 0, "targets": []}
    (tmp_path / "s_transfer_mi1.json").write_text(json.dumps(out))
    assert transfer.main(["--study", "s", "--momentum", "1", "--table-only"]) == 0
    assert "PGD-10 with momentum 1 (MI-FGSM) examples" in (tmp_path / "s_transfer_mi1.md").read_text()
    assert not (tmp_path / "s_transfer.md").exists()  # the plain results are not touched
    with pytest.raises(SystemExit):
        transfer.main(["--study", "s", "--momentum", "-1", "--table-only"])


def test_a_retrained_model_is_a_target_through_its_headline_runs_rerun(
    load_benchmark: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transfer = load_benchmark("transfer")
    study, results = sys.modules["study"], studies_in(tmp_path, monkeypatch)
    final = study.run_path("s", "a", 0) / "final"
    models.save_model(tiny_mlp(seed=0), final)
    digest = model_digest(models.resolve_model(final))
    apgd = study.eval_state_path(study.run_path("s", "a", 0), "apgd", 4, 0)

    def write(model: str, flags: str) -> None:  # a real, digest-carrying full-mode state of 4 points
        threats = {t: {"chunks": {"0": flags}, "seconds": 1.0} for t in transfer.THREATS}
        EvalState({"threats": list(transfer.THREATS), "model": model}, apgd, "1111", threats).save()

    base = {"method": "a", "seed": 0, "n": 4, "test_start": 0, "clean": 1.0}
    lost = {**base, "suite": "apgd", "robust": {"union": 0.5}}  # the record of a model since lost
    rerun = {"clean": 1.0, "robust": {"union": 0.75}}
    headline = {**base, "suite": "standard", "robust": {"union": 0.5}, "study_protocol_rerun": rerun}

    def records(*rs: dict[str, Any]) -> None:
        (results / "s.json").write_text(json.dumps({"records": list(rs)}), encoding="utf-8")

    records(lost, headline)
    write(digest, "1110")  # union 0.75: the rerun's, not the record's
    state, basis = transfer.target_state("s", "a", 0, final)
    assert basis == "retrained" and state["clean"] == "1111"
    records(lost, {**headline, "study_protocol_rerun": {**rerun, "robust": {"union": 0.5}}})
    assert "reproduces its record" in transfer.target_state("s", "a", 0, final)  # a rerun of other flags
    records(lost, headline)
    write(digest, "1100")  # union 0.5: the record's own evaluation is here after all
    assert transfer.target_state("s", "a", 0, final)[1] == "record"
    write("another model", "1100")
    assert "other weights" in transfer.target_state("s", "a", 0, final)


def test_a_run_that_would_drop_kept_sources_is_refused(
    load_benchmark: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a new machine (no run folders) the kept results cover models that are gone: a plain run
    must not replace them with fewer rows; --replace says so explicitly."""
    transfer = load_benchmark("transfer")
    monkeypatch.setattr(transfer, "RESULTS", tmp_path)
    monkeypatch.setattr(transfer, "models_of", lambda study: [("a", 0, tmp_path / "a")])
    kept = {"sources": [{"method": "a", "seed": 0, "sets": {}}, {"method": "b", "seed": 1, "sets": {}}]}
    (tmp_path / "s_transfer.json").write_text(json.dumps(kept))
    assert transfer.missing_sources("s_transfer", [("a", 0, tmp_path / "a")]) == ["b seed 1"]
    assert transfer.missing_sources("s_transfer_mi1", []) == []  # nothing kept: nothing to lose
    assert transfer.main(["--study", "s"]) == 2
    assert "b seed 1" in capsys.readouterr().err
    assert json.loads((tmp_path / "s_transfer.json").read_text()) == kept  # untouched
    (tmp_path / "s_transfer.json").write_text('{"sources": [')  # truncated: refused too, left as it is
    assert transfer.main(["--study", "s"]) == 2
    assert "unreadable" in capsys.readouterr().err and (tmp_path / "s_transfer.json").read_text() == '{"sources": ['
