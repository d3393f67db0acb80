"""benchmarks/make_tables.py: mean ± std over seeds, the unseen column, and who trained on what."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

Loader = Callable[[str], ModuleType]  # the load_benchmark fixture (conftest.py)
ALL = ["linf:0.1", "l2:1.5", "l1:10"]


def _record(method: str, seed: int, union: float, unseen: float | None, threats: list[str]) -> dict[str, Any]:
    r: dict[str, Any] = {
        "method": method,
        "seed": seed,
        "clean": 0.8,
        "robust": {"linf": 0.6, "l2": 0.55, "l1": union + 0.01, "union": union},
        "passes_per_example": 6.25,
        "seconds_per_epoch": 60.0,
        "train_threats": threats,
    }
    if unseen is not None:
        r["unseen"] = {"mean": unseen, "n": 200}
    return r


def test_rows_aggregate_seeds_and_sort_by_union(load_benchmark: Loader) -> None:
    mt = load_benchmark("make_tables")
    records = [
        _record("a", 0, 0.40, 0.30, ALL),
        _record("a", 1, 0.44, None, ALL),
        _record("b", 0, 0.50, 0.35, ["linf:0.1", "l1:10"]),
    ]
    rows = mt.aggregate(records)
    assert [r["method"] for r in rows] == ["b", "a"]
    md = mt.table(rows).splitlines()
    assert "| unseen |" in md[0]
    assert md[2].startswith("| b | 80.0 | 60.0 | 55.0 | 51.0 | **50.0** | 35.0 | 6.25 |")
    # two seeds: mean ± sample std; the seed without an unseen summary is left out of that column
    assert "**42.0 ± 2.8**" in md[3] and "| 30.0 |" in md[3] and md[3].endswith("| 0, 1 |")


def test_unseen_column_is_a_dash_without_summaries(load_benchmark: Loader) -> None:
    mt = load_benchmark("make_tables")
    rows = mt.aggregate([_record("a", 0, 0.4, None, ALL)])
    assert "**40.0** | – |" in mt.table(rows)


def test_train_threats_names_the_exceptions(load_benchmark: Loader) -> None:
    mt = load_benchmark("make_tables")
    records = [
        _record("a", 0, 0.4, None, ALL),
        _record("c", 0, 0.4, None, ALL),
        _record("b", 0, 0.5, None, ["linf:0.1", "l1:10"]),
    ]
    text = mt._train_threats(records)
    assert text == "methods train on linf:0.1, l2:1.5, l1:10, except `b` on linf:0.1, l1:10"
    assert mt._train_threats(records[:2]) == "methods train on linf:0.1, l2:1.5, l1:10"


def test_hardware_names_the_records_that_ran_elsewhere(load_benchmark: Loader) -> None:
    mt = load_benchmark("make_tables")
    records = [_record(m, s, 0.4, None, ALL) for m, s in (("a", 0), ("a", 1), ("b", 2), ("c", 0), ("c", 1))]
    for r, threads in zip(records, (1, 1, 2, 1, 1), strict=True):
        r["hardware"] = f"x86_64, 2 cores, torch threads {threads}"
        r["environment"] = {"torch": "2.13.0+cpu"}
    records[3:] = [
        {**r, "hardware": "GPU H100", "environment": {"torch": "2.11"}, "device": "cuda"} for r in records[3:]
    ]
    records[4]["eval_chunk"] = 1024
    records[3]["hardware"] = "trained on GPU H100, evaluated on x86_64"
    expected = (
        "x86_64, 2 cores, torch threads 1, torch 2.13.0+cpu (except b 2 on x86_64, 2 cores, torch threads 2, "
        "torch 2.13.0+cpu; c 0 trained on GPU H100, evaluated on x86_64, torch 2.11; "
        "c 1 on GPU H100, torch 2.11, attack chunks of 1,024)"
    )
    assert mt._hardware(records) == expected
    assert mt._hardware(records[:2]) == "x86_64, 2 cores, torch threads 1, torch 2.13.0+cpu"
    rows = {row["method"]: row for row in mt.aggregate(records)}
    assert "(GPU)" in mt.table(list(rows.values())).split("| c |")[1].split("\n")[0]
    assert "(GPU)" not in mt.table([rows["a"]])
    assert mt._gpu_note(records) and not mt._gpu_note(records[:3])


def test_unseen_summary_on_a_tiny_model(load_benchmark: Loader) -> None:
    import torch

    import metaat.models as models

    us = load_benchmark("unseen_summary")
    torch.manual_seed(0)
    model = models.create("mlp", num_classes=10, in_channels=1, image_size=28).eval()
    x = torch.rand(12, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)  # every point clean-correct, so the robust parts can be non-zero
    out = us.summary(model, x, y, ("linf:0.1", "l2:1.5", "l1:10"), seed=0)
    assert set(us.PARTS) <= set(out) and out["n"] == 12 and out["start"] == 0
    assert all(0.0 <= out[p] <= 1.0 for p in us.PARTS)
    assert abs(out["mean"] - sum(out[p] for p in us.PARTS) / 4) < 1e-12
    assert out["corruptions"] > 0  # mild corruptions leave an untrained model's argmax mostly intact


def test_unseen_points_name_the_slice_a_summary_read(load_benchmark: Loader) -> None:
    us = load_benchmark("unseen_summary")
    # study.py wrote summaries without "start" from the first points of the record's own slice
    assert us.unseen_points({"test_start": 9000, "unseen": {"n": 200}}) == (200, 9000)
    assert us.unseen_points({"unseen": {"n": 200}}) == (200, 0)
    assert us.unseen_points({"test_start": 9000, "unseen": {"n": 200, "start": 0}}) == (200, 0)
    assert us.unseen_points({"test_start": 9000}) == (None, 9000)  # no summary yet: always redone
    fresh = {"method": "max", "test_start": 9000, "unseen": {"n": 200}}
    assert not us.needs_summary(fresh, 200, 9000)
    assert us.needs_summary(fresh, 200, 0) and us.needs_summary(fresh, 100, 9000)
    missing = {"method": "max", "test_start": 9000}
    assert us.needs_summary(missing, 200, 9000) and not us.needs_summary(missing, 200, 9000, {"sat"})
    assert not us.needs_summary({**missing, "suite": "standard"}, 200, 9000)  # headline rows: none
    assert not us.needs_summary({**missing, "superseded": "scored on test points 0-999"}, 200, 9000)


def test_paired_delta_compares_with_the_best_target_baseline_on_shared_seeds_only(load_benchmark: Loader) -> None:
    mt = load_benchmark("make_tables")
    records = [
        _record("max", 0, 0.50, None, ALL),
        _record("max", 1, 0.46, None, ALL),
        _record("max", 2, 0.40, None, ALL),
        _record("sat", 0, 0.47, None, ALL),
        _record("metaat", 0, 0.51, None, ALL),
        _record("metaat", 1, 0.45, None, ALL),
        _record("metaat", 2, 0.30, None, ALL),
        _record("metaat", 3, 0.30, None, ALL),  # no max on seed 3: left out of the difference
        _record("other", 5, 0.60, None, ALL),
        _record("msd", 0, 0.49, None, ALL),  # above max's 3-seed mean, below max on seed 0 alone
    ]
    rows = mt.aggregate(records)
    # best union among sat / avg / max / msd on the seeds all of them ran (seed 0 here)
    assert mt.reference_row(rows)["method"] == "max"
    md = mt.table(rows).splitlines()
    assert md[0].endswith("| seeds | Δ union vs max (same seeds) |")
    by_method = {line.split(" | ")[0][2:]: line for line in md[2:]}
    assert by_method["metaat"].endswith("| 0, 1, 2, 3 | -3.3 ± 5.9 (3) |")
    assert by_method["sat"].endswith("| -3.0 (1) |")
    assert by_method["max"].endswith("| – |") and by_method["other"].endswith("| – |")


def test_headline_records_get_their_own_table_and_are_never_averaged(load_benchmark: Loader) -> None:
    mt = load_benchmark("make_tables")
    study = [_record("metaat", 0, 0.50, None, ALL), _record("max", 0, 0.48, None, ALL)]
    for r in study:
        r.update(suite="apgd", epochs=5, n=1000)
    head = _record("metaat", 0, 0.47, None, ALL)
    head.update(suite="standard", epochs=5, n=1000, protocol={"union_only": True})
    lone = _record("msd", 1, 0.45, None, ALL)  # no study record for this model: no comparison
    lone.update(suite="standard", epochs=5, n=1000, protocol={"union_only": False})
    records, headline = mt.split_headline([*study, head, lone])
    assert records == study and headline == [head, lone]
    rows = mt.aggregate(records)
    assert {r["method"]: r["union"] for r in rows}["metaat"] == [0.50]  # the headline 0.47 is not mixed in
    lines = mt.headline_table(headline, records).splitlines()
    assert lines[2] == "| metaat | 0 | 80.0 | **47.0** | 50.0 | -3.0 | 1,000 | standard (union only) |"
    assert lines[3] == "| msd | 1 | 80.0 | **45.0** | – | – | 1,000 | standard (every threat) |"
    # a headline run on a retrained model sits beside that model's own study-protocol rerun
    head["study_protocol_rerun"] = {"robust": {"union": 0.49}, "matches_record": False}
    line = mt.headline_table([head], records).splitlines()[2]
    assert line == "| metaat | 0 | 80.0 | **47.0** | 49.0 (retrained model) | -2.0 | 1,000 | standard (union only) |"
    head["study_protocol_rerun"] = {"robust": {"union": 0.50}, "matches_record": True}
    assert "| 50.0 | -3.0 |" in mt.headline_table([head], records)


def test_an_unknown_study_is_one_clear_error_and_the_readme_is_untouched(
    load_benchmark: Loader, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    mt = load_benchmark("make_tables")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "small.json").write_text('{"records": []}')
    (tmp_path / "results" / "speed.json").write_text('{"results": []}')  # not a study
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{mt.START}\nold\n{mt.END}\n")
    monkeypatch.setattr(mt, "ROOT", tmp_path)
    monkeypatch.setattr(mt, "RESULTS", tmp_path / "results")
    with pytest.raises(SystemExit):
        mt.main(["--study", "small", "--study", "nope", "--page", "README.md"])
    err = capsys.readouterr().err
    assert "no records for nope" in err and "studies with records: small" in err
    assert readme.read_text() == f"x\n{mt.START}\nold\n{mt.END}\n"


def _sandbox(mt: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Point make_tables at an empty project under ``tmp_path``; the fields every record shares."""
    monkeypatch.setattr(mt, "RESULTS", tmp_path / "benchmarks" / "results")
    monkeypatch.setattr(mt, "ROOT", tmp_path)
    mt.RESULTS.mkdir(parents=True)
    env = {"torch": "2.13.0+cpu", "pyautoattack": "0.2.0"}
    common = {"epochs": 5, "n": 1000, "suite": "apgd", "hardware": "x86_64", "environment": env}
    return common | {"metaat_version": "0.1.0", "command": "python benchmarks/study.py"}


def test_superseded_records_are_kept_but_not_shown_and_the_test_slice_is_named(
    load_benchmark: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mt = load_benchmark("make_tables")
    common = _sandbox(mt, tmp_path, monkeypatch)
    new = {**_record("a", 0, 0.5, None, ALL), **common, "test_start": 9000}
    old = {**_record("a", 0, 0.3, None, ALL), **common, "superseded": "scored on tuning points"}
    mt.RESULTS.joinpath("s.json").write_text(json.dumps({"records": [old, new]}))
    md, text = mt.section("s")
    assert "**50.0**" in md and "**30.0**" not in md  # the superseded row is not averaged in
    assert "test points 9,000–9,999 (held out" in text
    assert "1 superseded record(s) stay in that file" in text
    mt.RESULTS.joinpath("t.json").write_text(json.dumps({"records": [old]}))
    assert mt.section("t")[1].startswith("No record on the current protocol yet.")


QUOTED_PAGES = ["README.md", "docs/studies/fmnist.md", "docs/studies/fmnist-reduced.md"]


@pytest.mark.parametrize("page", QUOTED_PAGES)
def test_the_quoted_tables_are_what_the_records_give(load_benchmark: Loader, page: str) -> None:
    """Every number in the benchmark sections of the README and of the docs' study pages comes from
    benchmarks/results/: regenerating each with the command it names changes nothing (a record added
    or edited without rerunning make_tables.py fails here)."""
    import re
    import shlex

    mt = load_benchmark("make_tables")
    text = (mt.ROOT / page).read_text(encoding="utf-8")
    found = re.search(r"Regenerate this section: `python benchmarks/make_tables.py ([^`]*)`", text)
    assert found, f"{page}'s benchmark section names no regenerate command"
    args = shlex.split(found.group(1))
    assert args[args.index("--page") + 1] == page  # the command rewrites this very page
    assert mt.main([*args, "--check"]) == 0


def test_every_quoted_table_is_tested() -> None:
    """A page that carries a benchmark section is in QUOTED_PAGES, so none escapes the check above."""
    root = Path(__file__).resolve().parents[1]
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    with_section = {p.relative_to(root).as_posix() for p in pages if "<!-- benchmark:start -->" in p.read_text("utf-8")}
    assert with_section == set(QUOTED_PAGES)


def test_the_readme_summary_shows_the_named_rows_only(
    load_benchmark: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mt = load_benchmark("make_tables")
    common = _sandbox(mt, tmp_path, monkeypatch)
    recs = [{**_record(m, s, u, None, ALL), **common} for m, s, u in (("a", 0, 0.5), ("a", 1, 0.4), ("b", 0, 0.6))]
    recs.append({**_record("c", 0, 0.7, None, ALL), **common})  # an ablation the README leaves out
    mt.RESULTS.joinpath("s.json").write_text(json.dumps({"records": recs}))
    (tmp_path / "README.md").write_text(f"# R\n{mt.START}\nold\n{mt.END}\n")
    assert mt.main(["--study", "s", "--page", "README.md", "--rows", "a,b"]) == 0
    body = (tmp_path / "README.md").read_text()
    table = [ln for ln in body.splitlines() if ln.startswith("| `")]
    assert table == ["| `b` | 80.0 | **60.0** | 6.25 | 0 |", "| `a` | 80.0 ± 0.0 | **45.0 ± 7.1** | 6.25 | 0, 1 |"]
    assert all(len(ln) <= 120 for ln in body.splitlines() if not ln.startswith("|"))
    assert "--rows a,b" in body and not (mt.RESULTS / "s_union_vs_cost.svg").exists()  # no plot for a summary
    assert mt.main(["--study", "s", "--page", "README.md", "--rows", "a,b", "--check"]) == 0
    with pytest.raises(SystemExit):
        mt.main(["--study", "s", "--page", "README.md", "--rows", "a,nope"])
    assert "no records for nope" in capsys.readouterr().err


def test_rows_name_the_preset_their_records_trained(load_benchmark: Loader) -> None:
    """Once records say which preset (configs/presets/<name>.yaml) trained them, both tables show it;
    a row whose records name none shows a dash, and records without presets add no column."""
    mt = load_benchmark("make_tables")
    records = [
        {**_record("metaat", 0, 0.5, None, ALL), "preset": "metaat-learned-refine3"},
        {**_record("metaat", 1, 0.4, None, ALL), "preset": "metaat-learned-refine3"},
        _record("old", 0, 0.3, None, ALL),
    ]
    rows = mt.aggregate(records)
    full = mt.table(rows).splitlines()
    assert full[0].endswith("| seeds | preset |") and full[1].endswith("|---|---|")
    assert full[2].endswith("| 0, 1 | `metaat-learned-refine3` |") and full[3].endswith("| 0 | – |")
    short = mt.summary_table(rows, ["metaat", "old"]).splitlines()
    assert short[0] == "| method | clean | union | passes / example | seeds | preset |"
    assert short[2].endswith("| `metaat-learned-refine3` |")
    assert "preset" not in mt.table(mt.aggregate(records[2:]))
    assert "preset" not in mt.summary_table(rows, ["old"])


def test_a_docs_page_gets_the_plot_beside_it(
    load_benchmark: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documentation site serves only files under docs/: a docs page's plot is copied next to it."""
    mt = load_benchmark("make_tables")
    common = _sandbox(mt, tmp_path, monkeypatch)
    recs = [{**_record(m, 0, u, None, ALL), **common} for m, u in (("a", 0.5), ("b", 0.4))]
    mt.RESULTS.joinpath("s.json").write_text(json.dumps({"records": recs}))
    page = tmp_path / "docs" / "studies" / "s.md"
    page.parent.mkdir(parents=True)
    page.write_text(f"# S\n{mt.START}\n{mt.END}\n")
    assert mt.main(["--study", "s", "--page", "docs/studies/s.md"]) == 0
    copy = page.parent / "figures" / "s_union_vs_cost.svg"
    assert copy.read_bytes() == (mt.RESULTS / "s_union_vs_cost.svg").read_bytes()
    assert "](figures/s_union_vs_cost.svg)" in page.read_text()
    assert "Records: `../../benchmarks/results/s.json`" in page.read_text()


def test_a_section_in_another_page_links_from_that_page(
    load_benchmark: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mt = load_benchmark("make_tables")
    common = _sandbox(mt, tmp_path, monkeypatch)
    recs = [{**_record(m, 0, u, None, ALL), **common} for m, u in (("a", 0.5), ("b", 0.4))]
    mt.RESULTS.joinpath("s.json").write_text(json.dumps({"records": recs}))
    page = tmp_path / "benchmarks" / "README.md"
    page.write_text(f"# B\n{mt.START}\nold\n{mt.END}\n")
    (tmp_path / "README.md").write_text(f"# R\n{mt.START}\nuntouched\n{mt.END}\n")
    assert mt.main(["--study", "s", "--readme", "benchmarks/README.md"]) == 0
    body = page.read_text()
    assert "](results/s_union_vs_cost.svg)" in body and "Records: `results/s.json`" in body
    assert "--readme benchmarks/README.md" in body and "untouched" in (tmp_path / "README.md").read_text()
    assert mt.main(["--study", "s", "--readme", "benchmarks/README.md", "--check"]) == 0
    with pytest.raises(SystemExit):
        mt.main(["--study", "s", "--readme", "docs/nope.md"])
    assert "no file" in capsys.readouterr().err
    (mt.RESULTS / "s_table.md").unlink()
    assert mt.main(["--study", "s", "--readme", "docs/nope.md", "--no-readme"]) == 0  # tables only
    assert (mt.RESULTS / "s_table.md").is_file()


def test_check_reports_a_stale_section_and_writes_nothing(
    load_benchmark: Loader, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    mt = load_benchmark("make_tables")
    rec = {**_record("a", 0, 0.5, None, ALL), **_sandbox(mt, tmp_path, monkeypatch)}
    mt.RESULTS.joinpath("s.json").write_text(json.dumps({"records": [rec]}))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{mt.START}\nold table\n{mt.END}\noutro\n")
    assert mt.main(["--study", "s", "--page", "README.md", "--check"]) == 1
    assert "differs from the records" in capsys.readouterr().err
    assert "old table" in readme.read_text() and not (mt.RESULTS / "s_table.md").exists()
    assert mt.main(["--study", "s", "--page", "README.md"]) == 0  # regenerate
    assert mt.main(["--study", "s", "--page", "README.md", "--check"]) == 0
    assert readme.read_text().startswith("intro\n") and readme.read_text().endswith("outro\n")
