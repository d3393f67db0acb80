"""configs/presets: every preset loads, builds its defense and spells out every option; names are unique
and say what they train; the default link points at metaat's defaults; every study row trains one preset
and every record names the preset of its row (records are never renamed)."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

import metaat.defenses as defenses
from metaat.train import TrainConfig

Loader = Callable[[str], ModuleType]  # the load_benchmark fixture (conftest.py)
ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
PRESETS = CONFIGS / "presets"
RESULTS = ROOT / "benchmarks" / "results"
NAMES = sorted(p.stem for p in PRESETS.glob("*.yaml") if p.name != "default.yaml")
ALL = ["linf:0.1", "l2:1.5", "l1:10"]


def resolved(cfg: TrainConfig) -> dict[str, Any]:
    """The options ``cfg``'s defense is built with, every one resolved, as JSON values."""
    defense = defenses.create(cfg.defense, list(cfg.threats), **cfg.options)
    out: dict[str, Any] = json.loads(json.dumps(defense.config.to_dict(), default=str))
    return out


def header(name: str) -> str:
    """A preset's leading comment as one line."""
    lines = (PRESETS / f"{name}.yaml").read_text(encoding="utf-8").splitlines()
    return " ".join(line.removeprefix("# ") for line in lines if line.startswith("#"))


def metaat_name(options: dict[str, Any], threats: list[str]) -> str:
    """The name a metaat preset must have (configs/presets/README.md): what it trains, part by part."""
    o = options
    by_norm = o["refine_by_norm"]
    refine = "-".join(str(by_norm[n]) for n in ("linf", "l2", "l1")) if by_norm else str(o["refine_steps"])
    start = ("pretrained" if o["attacker_path"] else "learned") if o["learned_start"] else "pgdstart"
    parts = ["metaat", start, f"refine{refine}"]
    parts += [f"free{o['replays']}"] if o.get("replays", 1) > 1 else []  # options added later: absent = off
    parts += [f"l1top{o['l1_topk']}"] if o.get("l1_topk", 0) else []
    if o["pgd_every"]:
        parts += [f"pgd{o['pgd_steps']}", f"every{o['pgd_every']}"]
        parts += ["distill"] if o["learned_start"] and o["distill"] > 0 else []
        parts += ["lookahead"] if o["lookahead"] else []
    parts.append("adaptive" if o["adaptive"] else "uniform")
    parts += [f"l1x{o['l1_weight']:g}"] if o["l1_weight"] != 1 else []
    parts += [] if o["consistency"] == 0 else ["js" if o["consistency"] == 1 else f"js{o['consistency']:g}"]
    parts += [] if threats == ALL else [t.split(":")[0] for t in threats]
    return "-".join(parts)


@pytest.mark.parametrize("name", NAMES)
def test_a_preset_loads_builds_its_defense_and_spells_out_every_option(name: str, load_benchmark: Loader) -> None:
    study = load_benchmark("study")
    written = yaml.safe_load((PRESETS / f"{name}.yaml").read_text(encoding="utf-8"))
    assert list(written) == list(study.RECIPE_FIELDS)  # nothing left to a default that may change
    cfg = TrainConfig.from_yaml(PRESETS / f"{name}.yaml")
    assert list(cfg.threats) == written["threats"]  # radii written out, not taken from DEFAULT_THREATS
    assert cfg.options == resolved(cfg)  # every option of the defense, each as it is built
    assert isinstance(cfg.fo_overfit_guard, bool)
    assert "forward+backward pass" in header(name).lower(), "the header states the cost"


def test_names_are_unique_and_no_two_presets_train_the_same_recipe() -> None:
    assert len({n.lower() for n in NAMES}) == len(NAMES) and all(re.fullmatch(r"[a-z0-9.-]+", n) for n in NAMES)
    recipes = {json.dumps(TrainConfig.from_yaml(PRESETS / f"{n}.yaml").to_dict(), sort_keys=True): n for n in NAMES}
    assert len(recipes) == len(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_a_name_says_what_its_preset_trains(name: str) -> None:
    cfg = TrainConfig.from_yaml(PRESETS / f"{name}.yaml")
    if cfg.defense == "metaat":
        assert name == metaat_name(cfg.options, list(cfg.threats))
    else:
        assert name.startswith(cfg.defense) and "v1" not in name.split("-")


def test_metaat_names_follow_the_options() -> None:
    base = resolved(TrainConfig(defense="metaat", threats=tuple(ALL)))
    assert metaat_name(base, ALL) == "metaat-learned-refine3-adaptive-l1x2-js"
    changed = {**base, "learned_start": False, "pgd_every": 4, "adaptive": False, "consistency": 0.0}
    assert metaat_name(changed, ALL[::2]) == "metaat-pgdstart-refine3-pgd5-every4-uniform-l1x2-linf-l1"
    levers = {**base, "replays": 4, "refine_steps": 0, "l1_topk": 20, "attacker_path": "attackers/images"}
    assert metaat_name(levers, ALL) == "metaat-pretrained-refine0-free4-l1top20-adaptive-l1x2-js"


def test_the_default_link_points_at_the_preset_of_metaat_defaults(load_benchmark: Loader) -> None:
    link = PRESETS / "default.yaml"
    assert link.is_symlink() and link.resolve().parent == PRESETS.resolve()
    default = load_benchmark("study").default_preset()
    assert default in NAMES and link.resolve().name == f"{default}.yaml"
    cfg = TrainConfig.from_yaml(link)
    assert cfg.defense == "metaat" and list(cfg.threats) == ALL
    # the defaults of the code are what the link says: a change of default must add a preset and move it
    assert cfg.options == resolved(TrainConfig(defense="metaat", threats=tuple(ALL)))


def test_the_old_config_paths_link_to_presets() -> None:
    old = sorted(CONFIGS.glob("*.yaml"))
    assert {p.stem for p in old} >= {"standard", "fast", "pgd", "trades", "sat", "avg", "max", "msd", "eat", "metaat"}
    for path in old:
        assert path.is_symlink() and path.resolve().parent == PRESETS.resolve(), path
        assert TrainConfig.from_yaml(path).defense == path.stem


def test_configs_carry_no_dates() -> None:
    date = re.compile(r"20\d\d-\d\d-\d\d")
    for path in CONFIGS.rglob("*"):
        if path.is_file():
            assert not date.search(path.read_text(encoding="utf-8")), path


def test_every_study_row_trains_one_preset(load_benchmark: Loader) -> None:
    study = load_benchmark("study")
    recorded = {r["method"] for r in records()}
    assert set(study.ROWS) == set(study.METHODS)
    for row, preset in study.ROWS.items():
        cfg = TrainConfig.from_yaml(study.preset_path(preset))
        assert study.METHODS[row] == (cfg.defense, cfg.threats, cfg.options)
        # a new row is named after its preset; only rows with records from before presets are not
        assert row == preset or row in recorded, row
    with pytest.raises(KeyError, match="no preset 'nope'; presets: avg-pgd10"):
        study.preset_path("nope")


def records() -> list[dict[str, Any]]:
    out = []
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("records"), list):
            out += [{**r, "file": path.name} for r in data["records"]]
    return out


def test_every_record_names_the_preset_of_its_row(load_benchmark: Loader) -> None:
    study = load_benchmark("study")
    every = records()
    assert len(every) > 100
    for r in every:
        where = f"{r['file']}: {r['method']} seed {r['seed']} ({r['suite']})"
        if r["preset"] is None:  # trained by code since changed: no preset reproduces it
            assert r.get("superseded"), where
            continue
        assert r["preset"] == study.ROWS[r["method"]], where
        cfg = TrainConfig.from_yaml(PRESETS / f"{r['preset']}.yaml")
        assert (r["defense"], tuple(r["train_threats"])) == (cfg.defense, cfg.threats), where
        assert {k: cfg.options[k] for k in r["options"]} == r["options"], where
        if r.get("passes_per_example"):
            stated = header(r["preset"])
            if single := re.search(r"([\d.]+) forward\+backward pass", stated):
                assert r["passes_per_example"] == pytest.approx(float(single.group(1)), abs=0.02), where
            else:  # passes that depend on the threat drawn
                per_batch = [float(x) for x in re.findall(r"(\d+) on an? \S+ batch", stated)]
                assert min(per_batch) <= r["passes_per_example"] <= max(per_batch), where


def test_a_preset_no_record_prices_states_the_passes_the_meter_counts(load_benchmark: Loader) -> None:
    study = load_benchmark("study")
    priced = {r["preset"] for r in records() if r.get("passes_per_example")}
    unpriced = [row for row, preset in study.ROWS.items() if preset not in priced]
    assert unpriced  # the rows named after their presets, which have no record yet
    for row in unpriced:
        stated = re.search(r"([\d.]+) forward\+backward pass", header(study.ROWS[row]))
        assert stated and study.dry_run_passes(row) == pytest.approx(float(stated.group(1))), row


def built_with(summary: Path) -> tuple[list[str], dict[str, Any]]:
    """(threats, options) from a run's summary.json, which holds the defense as it was built:
    ``Name(threats=[linf:0.1, ...], steps=10, ...)``."""
    text = json.loads(summary.read_text(encoding="utf-8"))["defense"]
    match = re.fullmatch(r"\w+\(threats=\[([^\]]*)\](?:, )?(.*)\)", text)
    assert match, text
    call = ast.parse(f"f({match.group(2)})", mode="eval").body
    assert isinstance(call, ast.Call)
    options = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
    return match.group(1).split(", "), {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def test_kept_evidence_was_built_as_its_records_preset_says(load_benchmark: Loader) -> None:
    study = load_benchmark("study")
    summaries = sorted((RESULTS / "evidence").glob("*/*/seed*/summary.json"))
    assert len(summaries) > 40
    for summary in summaries:
        row = summary.parent.parent.name
        threats, options = built_with(summary)
        cfg = TrainConfig.from_yaml(PRESETS / f"{study.ROWS[row]}.yaml")
        assert (threats, options) == (list(cfg.threats), cfg.options), summary
