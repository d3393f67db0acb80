"""metaat.eval.evaluate: union semantics, union-only mode, resumable state, suites, bad inputs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import metaat.data as datasets
import metaat.models as models
from metaat.eval import SUITES, EvalResult, QuickSuite, evaluate
from metaat.eval.state import StateMismatchError
from metaat.registry import UnknownNameError

THREATS = ["linf:0.08", "l2:0.8", "l1:6"]
Data = tuple[torch.Tensor, torch.Tensor]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run ~10x faster on one thread when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_small(seed: int = 0, image_size: int = 12) -> nn.Module:
    """A tiny MLP trained for a few seconds on synthetic data (clean accuracy > 90 %)."""
    torch.manual_seed(seed)
    x, y = datasets.load("synthetic", "train", n=2000, noise=0.5, image_size=image_size)
    model = models.create("mlp", num_classes=10, in_channels=1, image_size=image_size, hidden=32)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(3):
        for i in range(0, len(y), 100):
            loss = nn.functional.cross_entropy(model(x[i : i + 100]), y[i : i + 100])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return train_small()


@pytest.fixture(scope="module")
def data() -> Data:
    return datasets.load("synthetic", "test", n=64, noise=0.5)


class ForwardCounter(nn.Module):
    """Counts the examples passed through the wrapped model (to prove resumed work is skipped)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.examples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.examples += x.shape[0]
        return self.inner(x)


def quick(m: nn.Module, x: torch.Tensor, y: torch.Tensor, **kw: object) -> EvalResult:
    return evaluate(m, x, y, THREATS, suite="quick", checks=False, examples=0, **kw)  # type: ignore[arg-type]


def test_union_is_per_example_and_below_every_threat(model: nn.Module, data: Data) -> None:
    x, y = data
    r = quick(model, x, y)
    assert r.n == 64 and r.threats == tuple(THREATS)
    assert 0.9 <= r.clean <= 1.0
    assert r.union <= min(r.robust.values()) <= max(r.robust.values()) <= r.clean
    union = r.flags["clean"].clone()
    for t in THREATS:
        assert r.flags[t].dtype == torch.bool and r.flags[t].shape == (64,)
        assert not bool((r.flags[t] & ~r.flags["clean"]).any()), "robust implies clean-correct"
        union &= r.flags[t]
    assert torch.equal(union, r.flags["union"])
    assert r.union == int(union.sum()) / 64
    assert r.robust["l1:6"] < r.clean, "the attacks must break some points"
    assert not any(r.upper_bound.values())
    d = r.to_dict()
    json.dumps(d)
    assert d["union"] == r.union and d["robust"] == r.robust


def test_union_only_gives_the_same_union_with_less_work(model: nn.Module, data: Data) -> None:
    x, y = data
    full, lazy = quick(model, x, y), quick(model, x, y, union_only=True)
    assert torch.equal(full.flags["union"], lazy.flags["union"]) and full.union == lazy.union
    first = THREATS[0]
    assert lazy.robust[first] == full.robust[first] and not lazy.upper_bound[first]
    for t in THREATS[1:]:
        assert lazy.upper_bound[t]
        assert lazy.robust[t] >= full.robust[t], "union-only per-threat numbers are upper bounds"
    assert sum(lazy.attacked.values()) < sum(full.attacked.values())
    assert lazy.protocol["union_only"] is True


def test_same_seed_same_numbers_and_model_state_restored(data: Data) -> None:
    x, y = data
    m = train_small(seed=1)
    m.train()
    next(m.parameters()).requires_grad_(False)  # a frozen layer must stay frozen
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    a, b = quick(m, x, y, seed=3), quick(m, x, y, seed=3)
    assert a.robust == b.robust and torch.equal(a.flags["union"], b.flags["union"])
    assert m.training
    assert flags == {n: p.requires_grad for n, p in m.named_parameters()}


def test_resume_continues_from_state_file(model: nn.Module, data: Data, tmp_path: Path) -> None:
    x, y = data
    reference = quick(model, x, y, batch_size=16)
    wrapped = ForwardCounter(model)
    state = tmp_path / "state.json"
    calls: list[str] = []

    def interrupt(stage: str, done: int, total: int) -> None:
        calls.append(stage)
        if stage == THREATS[1] and done >= 32:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C half-way through the second threat

    with pytest.raises(KeyboardInterrupt):
        quick(wrapped, x, y, batch_size=16, state_path=state, progress=interrupt)
    saved = json.loads(state.read_text())
    assert saved["format"] == "metaat.eval-state"
    assert len(saved["threats"][THREATS[0]]["chunks"]) == 4
    assert len(saved["threats"][THREATS[1]]["chunks"]) == 2
    first_run = wrapped.examples

    wrapped.examples = 0
    resumed = quick(wrapped, x, y, batch_size=16, state_path=state)
    assert resumed.robust == reference.robust and resumed.union == reference.union
    assert torch.equal(resumed.flags["union"], reference.flags["union"])

    fresh = ForwardCounter(model)
    quick(fresh, x, y, batch_size=16)
    # Interrupted + resumed work = one fresh run + the resumed run's single shape-check forward:
    # no finished chunk was attacked twice.
    assert first_run + wrapped.examples == fresh.examples + 1
    again = ForwardCounter(model)
    quick(again, x, y, batch_size=16, state_path=state)  # finished state: nothing is attacked again
    assert again.examples < 64


def test_state_of_another_evaluation_is_refused(model: nn.Module, data: Data, tmp_path: Path) -> None:
    x, y = data
    state = tmp_path / "state.json"
    quick(model, x[:16], y[:16], state_path=state)
    with pytest.raises(StateMismatchError, match="differs in: .*threats"):
        evaluate(model, x[:16], y[:16], ["linf:0.2"], suite="quick", checks=False, examples=0, state_path=state)
    state.write_text("not json")
    with pytest.raises(ValueError, match="not a readable evaluation state"):
        quick(model, x[:16], y[:16], state_path=state)


def undigested(saved: dict[str, Any]) -> dict[str, Any]:
    """A state file as written before the digest existed."""
    return {k: v for k, v in saved.items() if k != "sha256"}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: {**d, "clean": "1" * 16}, "does not match its sha256"),
        (lambda d: {**d, "sha256": "0" * 64}, "does not match its sha256"),
        (
            lambda d: undigested(d) | {"clean": "x" * 16},
            "clean must be a string of 0/1",
        ),
        (lambda d: undigested(d) | {"clean": 5}, "clean must be a string of 0/1"),
        (lambda d: undigested(d) | {"threats": []}, "threats and sections must be"),
        (lambda d: undigested(d) | {"clean": "1" * 5}, "clean flags cover 5 points"),
        (lambda d: [1], "not a metaat evaluation state file"),
    ],
)
def test_a_hand_edited_or_damaged_state_file_is_refused(
    model: nn.Module, data: Data, tmp_path: Path, edit: Any, message: str
) -> None:
    x, y = data
    state = tmp_path / "state.json"
    quick(model, x[:16], y[:16], state_path=state)
    saved = json.loads(state.read_text())
    state.write_text(json.dumps(edit(saved)))
    with pytest.raises(ValueError, match=message):
        quick(model, x[:16], y[:16], state_path=state)


def test_the_state_file_digest_survives_the_trip_through_json() -> None:
    from metaat.eval.state import content_digest

    data = {"sections": {"unseen": {3: (0.5, 0.25), 10: None}}, "clean": "101"}
    assert content_digest(data) == content_digest(json.loads(json.dumps(data)))
    assert content_digest(data) != content_digest({**data, "clean": "111"})


def test_a_state_file_without_a_digest_still_resumes(model: nn.Module, data: Data, tmp_path: Path) -> None:
    """Files written before the digest existed carry none; intact ones resume to the same result."""
    x, y = data
    state = tmp_path / "state.json"
    first = quick(model, x[:16], y[:16], state_path=state)
    saved = json.loads(state.read_text())
    del saved["sha256"]
    state.write_text(json.dumps(saved))
    again = quick(model, x[:16], y[:16], state_path=state)
    assert again.union == first.union and torch.equal(again.flags["union"], first.flags["union"])


def test_reference_apgd_suite_records_its_protocol(model: nn.Module, data: Data) -> None:
    from metaat.attacks.autoattack import SUB_ATTACK_SECONDS

    x, y = data
    before = SUB_ATTACK_SECONDS.get("linf:0.1 apgd-ce", 0.0)
    r = evaluate(model, x[:12], y[:12], ["linf:0.1"], suite="apgd", checks=False, examples=1)
    assert SUB_ATTACK_SECONDS["linf:0.1 apgd-ce"] > before, "each reference sub-attack is timed"
    assert r.protocol["suite"] == "apgd"
    assert r.protocol["reference_package"] == "pyautoattack"
    assert r.protocol["reference_version"] == "0.2.0"
    assert any("apgd-t" in a for a in r.protocol["attacks"]["linf:0.1"])
    assert r.robust["linf:0.1"] <= r.clean
    q = evaluate(model, x[:12], y[:12], ["linf:0.1"], suite="quick", checks=False, examples=0)
    assert r.robust["linf:0.1"] <= q.robust["linf:0.1"] + 1 / 12, "APGD-CE+T is not weaker than PGD-25"
    assert r.examples and r.examples[0]["threat"] == "linf:0.1"


@pytest.mark.slow
def test_standard_suite_is_at_least_as_strong_as_apgd(model: nn.Module, data: Data) -> None:
    """The standard version adds FAB-T and Square after the same APGD-CE / APGD-T runs."""
    x, y = data
    apgd = evaluate(model, x[:16], y[:16], ["linf:0.1"], suite="apgd", checks=False, examples=0)
    standard = evaluate(model, x[:16], y[:16], ["linf:0.1"], suite="standard", checks=False, examples=0)
    assert not bool((standard.flags["linf:0.1"] & ~apgd.flags["linf:0.1"]).any())
    names = " ".join(standard.protocol["attacks"]["linf:0.1"])
    assert all(a in names for a in ("apgd-ce", "apgd-t", "fab-t", "square"))


def test_custom_quick_suite_options(model: nn.Module, data: Data) -> None:
    x, y = data
    r = evaluate(
        model, x[:16], y[:16], ["linf:0.08"], suite=QuickSuite(steps=5, losses=("ce",)), checks=False, examples=0
    )
    assert r.protocol["attacks"]["linf:0.08"] == ["metaat pgd-ce (5 steps, step 0.04, 1 restart(s), random start)"]


@pytest.mark.parametrize(
    ("threats", "message"),
    [
        (["linf:0.1", "lp:3"], r"unknown norm 'lp'; valid norms: linf, l2, l1"),
        (["linf:0"], r"eps must be a finite number > 0"),
        (["l2:-1.5"], r"eps must be a finite number > 0"),
        (["linf"], r"threat must look like 'linf:0.1'"),
        (["linf:0.1", "linf:0.1"], r"duplicate threat"),
    ],
)
def test_bad_threats_are_one_line_errors(model: nn.Module, data: Data, threats: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        evaluate(model, *data, threats, suite="quick", checks=False)
    assert "\n" not in str(info.value)


def test_bad_inputs_are_clear_errors(model: nn.Module, data: Data) -> None:
    x, y = data
    with pytest.raises(ValueError, match=r"n=1000 is larger than the data \(64 points\)"):
        evaluate(model, x, y, ["linf:0.1"], suite="quick", n=1000)
    with pytest.raises(UnknownNameError, match="valid suites: apgd, quick, standard"):
        evaluate(model, x, y, ["linf:0.1"], suite="autoattack-plus")
    other = models.create("mlp", num_classes=10, in_channels=3, image_size=32)
    with pytest.raises(ValueError, match=r"expects inputs of shape \(3, 32, 32\) but the data has \(1, 12, 12\)"):
        evaluate(other, x, y, ["linf:0.1"], suite="quick")
    few = models.create("mlp", num_classes=5, in_channels=1, image_size=12)
    with pytest.raises(ValueError, match="labels go up to 9 but the model outputs only 5 classes"):
        evaluate(few, x, y, ["linf:0.1"], suite="quick")
    with pytest.raises(ValueError, match=r"pixels must lie in \[0, 1\]"):
        evaluate(model, x * 2, y, ["linf:0.1"], suite="quick")


def test_suites_are_registered() -> None:
    assert SUITES.available() == ["apgd", "quick", "standard"]
