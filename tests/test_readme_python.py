"""The README's "Python in ten lines" runs as written: the same code, with only its sizes shrunk
(1 epoch on 256 training images instead of 3 on 60,000, 16 test points instead of 1,000, and the
evaluation's display examples and gradient-masking checks left out: they cost a minute even on 16
points and are tested in test_eval) so that it takes seconds. A renamed function, argument or result
field breaks this test, not a user's first try."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import metaat
import metaat.data as data
import metaat.train as train_module
from metaat.data import idx as idx_module

README = Path(__file__).resolve().parents[1] / "README.md"
FMNIST = idx_module.debian_dir() or idx_module.DEBIAN_DEFAULT_DIR
HAVE_DATA = (FMNIST / "train-images-idx3-ubyte.gz").is_file()


def tour() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "the README shows no Python block"
    return str(blocks[0])


def test_the_tour_is_short_and_uses_the_public_api() -> None:
    code = tour()
    lines = [ln for ln in code.splitlines() if ln.strip()]
    assert len(lines) <= 10, f"the README promises ten lines; its Python block has {len(lines)}"
    for name in ("data.load", "train(", "metaat.load_model", "attacks.create", "metaat.evaluate"):
        assert name in code


@pytest.mark.skipif(not HAVE_DATA, reason=f"Debian package dataset-fashion-mnist not installed ({FMNIST})")
def test_the_readme_python_tour_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_load, real_train = data.load, train_module.train

    def small_load(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("n") is not None:
            kwargs["n"] = min(int(kwargs["n"]), 16)
        return real_load(*args, **kwargs)

    def small_train(cfg: train_module.TrainConfig, out: Any, **kwargs: Any) -> Any:
        cfg = dataclasses.replace(cfg, epochs=1, train_subset=256, eval_n=32, threads=1)
        return real_train(cfg, out, **kwargs)

    real_evaluate = metaat.evaluate

    def lean_evaluate(*args: Any, **kwargs: Any) -> Any:
        return real_evaluate(*args, **{"checks": False, "examples": 0, **kwargs})

    monkeypatch.setattr(data, "load", small_load)
    monkeypatch.setattr(metaat, "evaluate", lean_evaluate)
    monkeypatch.setattr(train_module, "train", small_train)
    monkeypatch.chdir(tmp_path)
    printed: list[tuple[Any, ...]] = []
    namespace: dict[str, Any] = {"print": lambda *a: printed.append(a)}
    exec(compile(tour(), str(README), "exec"), namespace)  # the README's code, unchanged

    assert (tmp_path / "runs" / "metaat" / "final").is_dir()
    x, x_adv = namespace["x"], namespace["x_adv"]
    assert x.shape == x_adv.shape == (16, 1, 28, 28)
    assert float((x_adv - x).flatten(1).norm(dim=1).max()) <= 1.5 + 1e-4  # the L2 attack stayed in its ball
    ((clean, robust, union),) = printed
    assert 0.0 <= union <= min(robust.values()) <= clean <= 1.0
    assert set(robust) == {"linf:0.1", "l2:1.5", "l1:10"}
    assert isinstance(metaat.load_model(tmp_path / "runs" / "metaat"), torch.nn.Module)
