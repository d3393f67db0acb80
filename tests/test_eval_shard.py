"""evaluate(shard=...) in-process: two threads stand in for two torchrun processes (their collectives
are a barrier), so that a shard cut off mid-evaluation and both resumed can be checked in seconds —
the resumed evaluation gives the unsharded numbers and re-attacks no chunk that was saved."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_mlp

from metaat.eval import evaluate
from metaat.eval.suites import QuickSuite
from metaat.eval.union import Shard

THREATS = ["linf:0.1", "l2:1.0", "l1:6"]


class Collective:
    """All-reduce and all-gather over ``world`` threads; a thread that fails breaks the barrier, so the
    others fail at their next collective instead of waiting (as a killed torchrun process would)."""

    def __init__(self, world: int) -> None:
        self.world, self.barrier = world, threading.Barrier(world, timeout=60)
        self.slots: list[Any] = [None] * world

    def _exchange(self, rank: int, value: Any) -> list[Any]:
        self.slots[rank] = value
        self.barrier.wait()
        values = list(self.slots)
        self.barrier.wait()  # nobody overwrites a slot before everyone has read them all
        return values

    def shard(self, rank: int) -> Shard:
        return Shard(
            rank,
            self.world,
            lambda t: torch.stack(self._exchange(rank, t.clone())).sum(0),
            lambda v: self._exchange(rank, v),
        )


@dataclasses.dataclass(frozen=True)
class CountingSuite(QuickSuite):
    """The quick suite, recording which chunk (first point index) each attack call was given."""

    calls: list[tuple[str, int]] = dataclasses.field(default_factory=list)

    def attack(self, model: Any, x: Any, y: Any, ids: Any, threat: Any, seed: int) -> Any:
        self.calls.append((str(threat), int(ids[0])))
        return super().attack(model, x, y, ids, threat, seed)


def _suite(calls: list[tuple[str, int]]) -> CountingSuite:
    return CountingSuite(steps=5, calls=calls)


class Cut(Exception):
    pass


def _sharded(
    model: Any, x: Any, y: Any, states: list[Path], calls: list[tuple[str, int]], cut_after: int = 0
) -> list[Any]:
    """Both shards' results (an exception where a shard failed); rank 1 is cut off after
    ``cut_after`` attacked chunks when that is > 0."""
    group = Collective(2)
    out: list[Any] = [None, None]

    def work(rank: int) -> None:
        seen = [0]

        def progress(stage: str, done: int, total: int) -> None:
            seen[0] += stage in THREATS  # attacked chunks only (the clean pass reports progress too)
            if rank == 1 and cut_after and seen[0] >= cut_after:
                raise Cut("killed")

        try:
            out[rank] = evaluate(
                model, x, y, THREATS, suite=_suite(calls), seed=3, state_path=states[rank], batch_size=8,
                unseen=False, checks=False, examples=0, progress=progress, shard=group.shard(rank),
            )  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            group.barrier.abort()
            out[rank] = exc

    threads = [threading.Thread(target=work, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_a_cut_off_shard_resumes_to_the_unsharded_numbers_without_repeating_saved_chunks(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny_mlp()
    x = torch.rand(40, 1, 12, 12)
    y = model(x).argmax(1)  # every point clean-correct: 5 chunks of 8 per threat
    single = evaluate(
        model, x, y, THREATS, suite=_suite([]), seed=3, batch_size=8, unseen=False, checks=False, examples=0
    )
    states = [tmp_path / "rank0.json", tmp_path / "rank1.json"]
    first: list[tuple[str, int]] = []
    cut = _sharded(model, x, y, states, first, cut_after=2)  # rank 1 dies after its 2nd chunk of the 1st threat
    assert isinstance(cut[1], Cut) and isinstance(cut[0], threading.BrokenBarrierError)
    again: list[tuple[str, int]] = []
    done = _sharded(model, x, y, states, again)
    for result in done:
        assert not isinstance(result, BaseException), result
        assert result.robust == single.robust and result.union == single.union and result.clean == single.clean
    assert done[0].protocol["processes"] == 2
    # nothing attacked twice over the two runs: the saved chunks were read back, not recomputed
    assert len(first) + len(again) == len(set(first + again)) == 3 * 5
    assert sorted({i for t, i in first if t == THREATS[0]}) == [0, 8, 16, 24, 32]  # rank 0: 0, 16, 32; rank 1: 8, 24
    assert not [c for c in again if c[0] == THREATS[0]]


def test_a_shard_rank_outside_the_world_is_refused() -> None:
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\)"):
        Shard(2, 2, lambda t: t, lambda v: [v])
