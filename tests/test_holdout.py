"""A validation split held out of training: ``metaat.data.load_holdout`` and ``TrainConfig.train_holdout``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import metaat.data as data
from metaat.eval.state import model_digest
from metaat.models import load_model
from metaat.train import TrainConfig, train

torch.set_num_threads(1)
TOTAL = 4000  # the synthetic data set's training split


@pytest.mark.parametrize("holdout", [1, 7, 1000, TOTAL - 1])
def test_the_parts_are_disjoint_and_cover_the_training_split(holdout: int) -> None:
    train_first, train_n = data.holdout_slice(TOTAL, holdout, "train")
    val_first, val_n = data.holdout_slice(TOTAL, holdout, "val")
    assert (train_first, train_n) == (0, TOTAL - holdout)
    assert (val_first, val_n) == (TOTAL - holdout, holdout)  # the last examples, right after the training part
    first, n = data.holdout_slice(TOTAL, holdout, "val", n=1, start=holdout - 1)
    assert first + n == TOTAL


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((TOTAL, TOTAL, "train"), "leaves nothing to train on"),
        ((TOTAL, 0, "val"), "no validation points: holdout is 0"),
        ((TOTAL, 100, "val", 101), r"n=101 examples from index 0 of the 100 held-out examples"),
        ((TOTAL, 100, "train", TOTAL - 99), r"of the first 3900 training examples \(the last 100 are held out\)"),
        ((TOTAL, 100, "val", None, 100), "start=100 is past the end of the 100 held-out examples"),
        ((TOTAL, -1, "train"), "holdout must be an integer >= 0"),
        ((TOTAL, 10, "test"), "unknown part 'test'; valid parts: train, val"),
    ],
)
def test_bad_slices_are_one_line_errors(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        data.holdout_slice(*args)  # type: ignore[arg-type]


def test_load_holdout_slices_the_training_split() -> None:
    x, y = data.load("synthetic", "train")
    xt, yt = data.load_holdout("synthetic", "train", 500)
    xv, yv = data.load_holdout("synthetic", "val", 500, n=20, start=10)
    assert torch.equal(xt, x[:3500]) and torch.equal(yt, y[:3500])
    assert torch.equal(xv, x[3510:3530]) and torch.equal(yv, y[3510:3530])
    x0, y0 = data.load_holdout("synthetic", "train", 0, n=64)  # nothing held out: exactly data.load
    assert torch.equal(x0, x[:64]) and torch.equal(y0, y[:64])


def test_the_config_field_defaults_off_round_trips_and_is_checked(tmp_path: Path) -> None:
    assert TrainConfig().train_holdout == 0
    cfg = TrainConfig(train_holdout=5000)
    cfg.to_yaml(tmp_path / "c.yaml")
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == cfg
    # a run folder written before the field existed reads as "nothing held out"
    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "train_holdout"}
    assert TrainConfig.from_dict(old) == TrainConfig()
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="train_holdout must be an integer >= 0"):
            TrainConfig(train_holdout=bad)  # type: ignore[arg-type]


def _config(**changes: object) -> TrainConfig:
    values: dict[str, object] = {
        "data": "synthetic",
        "model": "mlp",
        "defense": "standard",
        "epochs": 1,
        "batch_size": 64,
        "eval_n": 0,
        "threads": 1,
        "seed": 3,
    }
    return TrainConfig(**{**values, **changes})  # type: ignore[arg-type]


def test_a_held_out_run_trains_on_the_first_examples_only(tmp_path: Path) -> None:
    """Holding out the last 3,744 of 4,000 trains on exactly what ``train_subset=256`` trains on (same
    examples, same order, same weights); a subset of a held-out run is a prefix of the kept examples."""
    runs = {
        "holdout": _config(train_holdout=TOTAL - 256),
        "subset": _config(train_subset=256),
        "both": _config(train_holdout=1000, train_subset=256),
        "other": _config(train_subset=320),
    }
    digests = {}
    for name, cfg in runs.items():
        result = train(cfg, tmp_path / name, quiet=True)
        assert result.cost["train_examples"] == (320 if name == "other" else 256)
        digests[name] = model_digest(load_model(tmp_path / name / "final"))
    assert digests["holdout"] == digests["subset"] == digests["both"] != digests["other"]
    saved = TrainConfig.from_yaml(tmp_path / "holdout" / "config.yaml")
    assert saved.train_holdout == TOTAL - 256  # the setting is saved with the run


def test_the_monitor_reads_the_held_out_points_not_the_test_points(monkeypatch: pytest.MonkeyPatch) -> None:
    import metaat.train.entry as entry

    seen: dict[str, Any] = {}

    def capture(*args: object, **kw: object) -> None:  # fit(model, defense, x, y, config, out, x_eval, y_eval)
        seen.update(zip(("x", "x_eval", "y_eval"), (args[2], args[6], args[7]), strict=True))

    monkeypatch.setattr(entry, "fit", capture)
    train(_config(train_holdout=300, eval_n=40), "unused", quiet=True)
    x, y = data.load("synthetic", "train")
    assert torch.equal(seen["x"], x[:3700])
    assert torch.equal(seen["x_eval"], x[3700:3740]) and torch.equal(seen["y_eval"], y[3700:3740])
    train(_config(eval_n=40), "unused", quiet=True)  # nothing held out: the first test points, as before
    assert torch.equal(seen["x_eval"], data.load("synthetic", "test", n=40)[0])
