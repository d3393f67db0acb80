"""Task files: validation (one-line errors), held-out tasks really held out, the shipped files."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from metaat.meta.tasks import TaskId, load_task_file, parse_task_file

ROOT = Path(__file__).resolve().parents[1]

RAW: dict[str, Any] = {
    "name": "t",
    "domain": "sensors",
    "train": {
        "datasets": ["watch", "basic-motions"],
        "models": ["fcn-small"],
        "defenses": ["standard"],
        "stages": [5, 10],
        "threats": ["linf:0.25", "spike:5,2"],
    },
    "heldout": {"datasets": ["gun-point"], "models": ["resnet1d"], "threats": ["linf:0.5"]},
}


def raw(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(RAW)
    for dotted, value in changes.items():
        node = out
        *path, last = dotted.split("__")
        for key in path:
            node = node[key]
        node[last] = value
    return out


def test_train_and_heldout_tasks() -> None:
    tf = parse_task_file(raw())
    train = tf.train_tasks()
    assert len(train) == 2 * 1 * 1 * 2 * 2
    held = tf.heldout_tasks()
    assert TaskId("gun-point", "fcn-small", "standard", 10, "linf:0.25") in held  # unseen dataset alone
    assert TaskId("watch", "resnet1d", "standard", 10, "linf:0.25") in held  # unseen architecture alone
    assert TaskId("watch", "fcn-small", "standard", 10, "linf:0.5") in held  # unseen budget alone
    assert TaskId("gun-point", "resnet1d", "standard", 10, "linf:0.5") in held  # all at once
    assert len(held) == 4


@pytest.mark.parametrize("path", sorted((ROOT / "configs/tasks").glob("*.yaml")), ids=lambda p: p.name)
def test_heldout_tasks_are_really_held_out(path: Path) -> None:
    tf = load_task_file(path)
    train, held = tf.train_tasks(), tf.heldout_tasks()
    assert train and held and set(train).isdisjoint(held)
    seen = {axis: {getattr(t, axis) for t in train} for axis in ("dataset", "model", "defense", "threat")}
    for axis, values in (
        ("dataset", tf.heldout.datasets),
        ("model", tf.heldout.models),
        ("defense", tf.heldout.defenses),
        ("threat", tf.heldout.threats),
    ):
        assert not set(values) & seen[axis], axis
    for task in held:  # every held-out task has at least one never-seen value
        assert any(getattr(task, axis) not in seen[axis] for axis in seen), task


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"heldout__datasets": ["watch"]}, r"heldout.datasets: watch also in train.datasets"),
        ({"heldout__models": ["fcn-small"]}, r"heldout.models: fcn-small also in train.models"),
        ({"heldout__threats": ["linf:0.250"]}, r"heldout.threats: linf:0.25 also in train.threats"),
        ({"heldout": {}}, r"heldout must name at least one"),
        ({"train__datasets": ["watch", "nope"]}, r"unknown dataset 'nope'.*watch"),
        (
            {"train__datasets": ["watch", "fashion-mnist"]},
            r"is a images dataset, not sensors; sensors datasets: .*watch",
        ),
        ({"train__models": ["cnn-small"]}, r"'cnn-small' does not take sensors inputs; use one of .*fcn-small"),
        ({"train__defenses": ["pgd"]}, r"unknown pgd; valid defenses: standard, fast"),
        ({"train__stages": [10, 5]}, r"increasing"),
        ({"train__threats": ["linf"]}, r"train.threats"),
        (
            {"train__extra": 1},
            r"train: unknown key\(s\) extra; valid keys: datasets, models, defenses, threats, stages",
        ),
        ({"meta": {"algorithm": "sgd"}}, r"meta.algorithm must be one of reptile, fomaml"),
        ({"meta": {"bogus": 1}}, r"meta: unknown key\(s\) bogus; valid keys: algorithm"),
        ({"domain": "audio"}, r"unknown domain 'audio'; valid domains: images, sensors, text"),
    ],
)
def test_invalid_task_files_fail_with_one_line(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        parse_task_file(raw(**changes))
    assert "\n" not in str(info.value)


def test_task_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\ndomain: sensors\ntrain: [1\n")
    with pytest.raises(ValueError, match=r"bad.yaml: not a readable YAML task file") as info:
        load_task_file(bad)
    assert "\n" not in str(info.value)
    bad.write_text("name: t\ndomain: sensors\ntrain: {}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: missing key 'heldout'"):
        load_task_file(bad)
    with pytest.raises(FileNotFoundError, match="no task file"):
        load_task_file(tmp_path / "missing.yaml")


def test_yaml_is_read_safely(tmp_path: Path) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ValueError, match="not a readable YAML task file"):
        load_task_file(evil)
