"""The sensor and text studies' row bookkeeping: a row the catastrophic-overfitting guard stopped is kept at the
epoch it rolled back to, says so, and counts every pass spent; candidate rows carry their options."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

Loader = Callable[[str], ModuleType]


@pytest.fixture
def sensor_study(load_benchmark: Loader) -> ModuleType:
    return load_benchmark("sensor_study")


def _epoch(k: int, passes: float, union: float) -> dict[str, object]:
    return {
        "type": "epoch",
        "epoch": k,
        "epoch_seconds": 10.0 * k,
        "eval": {"robust/union": union},
        "cost": {"passes_per_example": passes},
    }


def _run(tmp_path: Path, lines: list[dict[str, object]]) -> Path:
    run = tmp_path / "l2l" / "seed0"
    (run / "final").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    (run / "summary.json").write_text(json.dumps({"cost": {}, "defense": "L2L(...)"}), encoding="utf-8")
    return run


def test_a_guard_stopped_row_keeps_its_rolled_back_epoch_and_every_pass(
    tmp_path: Path, sensor_study: ModuleType
) -> None:
    event = {"type": "event", "event": "catastrophic_overfitting", "epoch": 3, "rolled_back_to_epoch": 2}
    run = _run(tmp_path, [_epoch(1, 2.0, 0.1), _epoch(2, 2.0, 0.3), _epoch(3, 2.0, 0.05), event])
    summary = sensor_study.trained(run, config=None)  # final/ exists: nothing is trained
    assert summary["epochs"] == 2 and summary["monitor"] == {"robust/union": 0.3}
    assert summary["stopped"]["rolled_back_to_epoch"] == 2
    assert summary["passes_per_example"] == 2.0 and summary["seconds_per_epoch"] == pytest.approx(20.0)
    assert json.loads((run / "summary.json").read_text(encoding="utf-8")) == summary  # kept for the next read
    assert sensor_study.trained(run, config=None) == summary


def test_a_completed_row_has_no_stop_and_its_last_epoch(tmp_path: Path, sensor_study: ModuleType) -> None:
    run = _run(tmp_path, [_epoch(1, 6.0, 0.1), _epoch(2, 6.0, 0.2)])
    summary = sensor_study.trained(run, config=None)
    assert "stopped" not in summary and summary["epochs"] == 2 and summary["monitor"] == {"robust/union": 0.2}


def test_candidate_rows_record_their_options_and_train_on_every_threat(sensor_study: ModuleType) -> None:
    assert sensor_study.row_recipe("metaat-drift10") == ("metaat", sensor_study.THREATS)
    assert sensor_study.recipe_fields("metaat-drift10")["options"] == {"refine_by_norm": {"drift": 10}}
    assert "options" not in sensor_study.recipe_fields("metaat")
    assert sensor_study.row_recipe("pgd-linf") == ("pgd", ("linf:0.25",))


def test_text_candidate_rows_set_their_recipe_and_study_rows_keep_the_defaults(load_benchmark: Loader) -> None:
    text_study = load_benchmark("text_study")
    assert text_study.row_recipe("metaat-clean30") == text_study.Variant("metaat", {}, 0.3)
    assert text_study.recipe_fields("metaat-clean30") == {"defense": "metaat", "options": {}, "clean_ratio": 0.3}
    assert text_study.row_recipe("a2t") == text_study.Variant("a2t", {}, 0.0)
    assert text_study.recipe_fields("a2t") == {}
