"""``apgd-worst``: the extra pass (APGD-CE x5 + APGD-T, a second seed) on the points the first pass
left robust, the per-point AND of both passes, and the count of points the extra pass broke."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import metaat.data as datasets
import metaat.models as models
from metaat.eval import QuickSuite, evaluate
from metaat.eval.state import StateMismatchError, read_state
from metaat.eval.suites import ReferenceSuite
from metaat.eval.worst import WORST_SUITE, WorstCase, evaluate_worst, extra_seed, extra_suite

THREATS = ["linf:0.08", "l2:0.8"]
N = 16
RESTARTS = 2  # the default is 5 (test_the_extra_suite_and_the_existing_suites): 2 keeps these tests short
WEAK = QuickSuite(steps=1, losses=("ce",))  # a one-step first pass: the extra pass surely breaks more


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """A tiny MLP trained for a second on synthetic data (clean accuracy > 90 %)."""
    torch.manual_seed(0)
    x, y = datasets.load("synthetic", "train", n=2000, noise=0.5)
    net = models.create("mlp", num_classes=10, in_channels=1, image_size=12, hidden=32)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(3):
        for i in range(0, len(y), 100):
            loss = nn.functional.cross_entropy(net(x[i : i + 100]), y[i : i + 100])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return datasets.load("synthetic", "test", n=N, noise=0.5)


def worst(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tmp: Path, **kw: object) -> WorstCase:
    return evaluate_worst(
        model,
        x,
        y,
        THREATS,
        checks=False,
        examples=0,
        batch_size=16,
        state_path=tmp / "first.json",
        extra_state_path=tmp / "extra.json",
        restarts=RESTARTS,
        **kw,  # type: ignore[arg-type]
    )


def assert_and_and_counts(w: WorstCase) -> int:
    """Every accuracy is the AND of both passes (never above the first's) and each count is exactly the
    number of points whose flag flipped; returns how many flipped in all."""
    flipped = 0
    for key in [*THREATS, "union"]:
        before, after = w.first.flags[key], w.result.flags[key]
        assert not bool((after & ~before).any()), f"{key}: the extra pass made a point robust"
        assert w.extra_broken[key] == int((before & ~after).sum())
        flipped += w.extra_broken[key]
        got = w.result.union if key == "union" else w.result.robust[key]
        assert got == int(after.sum()) / N <= (w.first.union if key == "union" else w.first.robust[key])
    assert torch.equal(
        w.result.flags["union"], w.result.flags["clean"] & torch.stack([w.result.flags[t] for t in THREATS]).all(0)
    )
    assert w.result.protocol["extra_broken"] == w.extra_broken and w.result.protocol["suite"] == WORST_SUITE
    return flipped


def test_the_extra_pass_can_only_lower_accuracy_and_counts_what_it_broke(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    x, y = data
    plain = evaluate(
        model, x, y, THREATS, suite="apgd", checks=False, examples=0, batch_size=16, state_path=tmp_path / "first.json"
    )
    w = worst(model, x, y, tmp_path)  # its first pass is that apgd evaluation, read back from its state file
    assert_and_and_counts(w)
    assert w.first.robust == plain.robust and torch.equal(w.first.flags["union"], plain.flags["union"])
    attacks = w.result.protocol["attacks"][THREATS[0]]
    assert any("extra pass" in a and f"apgd-ce (100 iterations, {RESTARTS} restart(s)" in a for a in attacks)
    assert w.result.protocol["extra_pass"]["seed"] == extra_seed(0) != 0
    # the extra pass attacked exactly the points the first left robust
    assert w.extra_attacked == {t: int(w.first.flags[t].sum()) for t in THREATS}


def test_after_a_weak_first_pass_the_extra_pass_breaks_points_and_says_how_many(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    x, y = data
    w = worst(model, x, y, tmp_path, first_suite=WEAK)
    assert assert_and_and_counts(w) > 0
    assert w.extra_broken["union"] > 0 and w.result.union < w.first.union
    section = read_state(tmp_path / "extra.json")["sections"]["worst_case"]  # the final flags stay on disk
    assert section["extra_broken"] == w.extra_broken
    assert section["flags"]["union"] == "".join("1" if f else "0" for f in w.result.flags["union"].tolist())


def test_union_only_attacks_fewer_points_and_counts_the_same_way(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    x, y = data
    full = worst(model, x, y, tmp_path / "full", first_suite=WEAK)
    lazy = worst(model, x, y, tmp_path / "lazy", first_suite=WEAK, union_only=True)
    assert torch.equal(lazy.first.flags["union"], full.first.flags["union"])  # quick: per-point deterministic
    assert lazy.extra_broken["union"] == int((lazy.first.flags["union"] & ~lazy.result.flags["union"]).sum())
    assert not bool((lazy.result.flags["union"] & ~lazy.first.flags["union"]).any())
    # the extra pass attacks each threat only on the points still robust under every threat before it
    assert lazy.extra_attacked[THREATS[0]] == int(lazy.first.flags["union"].sum())
    assert sum(lazy.extra_attacked.values()) < sum(full.extra_attacked.values())


def test_an_interrupted_extra_pass_resumes_to_the_same_flags(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    x, y = data
    reference = worst(model, x, y, tmp_path / "whole", first_suite=WEAK)

    def interrupt(stage: str, done: int, total: int) -> None:
        if stage == f"{THREATS[1]} (extra pass)":
            raise KeyboardInterrupt

    (tmp_path / "cut").mkdir()
    with pytest.raises(KeyboardInterrupt):
        worst(model, x, y, tmp_path / "cut", first_suite=WEAK, progress=interrupt)
    saved = json.loads((tmp_path / "cut" / "extra.json").read_text())
    assert THREATS[0] in saved["threats"] and "worst_case" not in saved["sections"]
    resumed = worst(model, x, y, tmp_path / "cut", first_suite=WEAK)
    for key in [*THREATS, "union"]:
        assert torch.equal(resumed.result.flags[key], reference.result.flags[key])
    assert resumed.extra_broken == reference.extra_broken
    # another first pass (here: the real apgd) is another evaluation: its extra state is refused
    with pytest.raises(StateMismatchError, match="first_pass"):
        evaluate_worst(
            model,
            x,
            y,
            THREATS,
            checks=False,
            examples=0,
            batch_size=16,
            extra_state_path=tmp_path / "cut" / "extra.json",
        )


def test_the_extra_suite_and_the_existing_suites() -> None:
    suite = extra_suite(10)
    assert suite.apgd_ce_restarts == 5 and suite.attacks == ("apgd-ce", "apgd-t")
    from metaat.threats import ThreatModel

    t = ThreatModel.parse("linf:0.1")
    assert (
        "apgd-ce (100 iterations, 1 restart(s))"
        in ReferenceSuite(version="custom", attacks=("apgd-ce",)).describe(t)[0]
    )
    with pytest.raises(ValueError, match="apgd_ce_restarts must be an integer >= 1"):
        ReferenceSuite(apgd_ce_restarts=0)
