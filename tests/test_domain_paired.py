"""The domain studies' paired comparison: union flags rebuilt from evaluation state files, counted
point by point; a damaged or foreign state file is skipped with its reason, never used."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

THREATS = ["linf:0.25", "drift:0.5"]


def _state(clean: str, flags: dict[str, str]) -> dict[str, object]:
    """A finished state file: each threat's flags cover the clean-correct points, one chunk."""
    from metaat.eval.state import DIGEST, FORMAT, content_digest

    data: dict[str, object] = {
        "format": FORMAT,
        "version": "1",
        "fingerprint": {"threats": THREATS},
        "clean": clean,
        "threats": {t: {"chunks": {"0": f}, "seconds": 1.0} for t, f in flags.items()},
        "sections": {},
    }
    data[DIGEST] = content_digest(data)
    return data


def _write(root: Path, key: str, state: dict[str, object], where: str = "runs") -> None:
    folder = root / where / "sensor_study" / key
    folder.mkdir(parents=True)
    (folder / "eval_state.json").write_text(json.dumps(state), encoding="utf-8")


def _record(n: int, clean: int, union: int) -> dict[str, object]:
    return {"n": n, "clean": clean / n, "union": union / n}


def test_counts_both_sides_and_skips_what_cannot_be_trusted(
    tmp_path: Path, load_benchmark: Callable[[str], ModuleType]
) -> None:
    domain_paired = load_benchmark("domain_paired")
    # reference: clean 11110, union (AND over threats) 11000; method: clean 11111, union 10011.
    _write(tmp_path, "metaat/seed0", _state("11110", {"linf:0.25": "1110", "drift:0.5": "1101"}))
    _write(tmp_path, "max/seed0", _state("11111", {"linf:0.25": "10111", "drift:0.5": "11011"}), "parked")
    tampered = _state("11111", {"linf:0.25": "11111", "drift:0.5": "11111"})
    tampered["clean"] = "11110"
    _write(tmp_path, "sat/seed0", tampered)
    _write(tmp_path, "pgd/seed0", _state("11111", {"linf:0.25": "11111", "drift:0.5": "11111"}))
    rows = {
        "metaat/seed0": _record(5, 4, 2),
        "max/seed0": _record(5, 5, 3),
        "sat/seed0": _record(5, 4, 4),
        "pgd/seed0": _record(5, 5, 4),  # the file says 5 robust: another evaluation's file
        "msd/seed0": _record(5, 5, 1),  # no file anywhere
    }
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "sensor_study.json").write_text(json.dumps({"rows": rows}), encoding="utf-8")

    out = domain_paired.paired("sensor", "metaat", tmp_path)

    (cmp,) = out["per_seed"]
    assert (cmp["method"], cmp["both"], cmp["only_method"], cmp["only_reference"], cmp["neither"]) == (
        "max",
        1,
        2,
        1,
        1,
    )
    assert cmp["difference_points"] == 20.0
    assert out["pooled"]["max"]["seeds"] == [0]
    assert set(out["skipped"]) == {"sat/seed0", "pgd/seed0", "msd/seed0"}
    assert "sha256" in out["skipped"]["sat/seed0"]
    assert "does not reproduce" in out["skipped"]["pgd/seed0"]
    assert "absent" in out["skipped"]["msd/seed0"]
