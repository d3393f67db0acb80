"""``metaat train``: presets + overrides, one-line errors, resume rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from metaat.cli import app
from metaat.cli.train import register
from metaat.train import TrainConfig

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["--data", "synthetic", "--model", "mlp", "--train-subset", "64", "--eval-n", "20", "--eval-steps", "2"]
TINY += ["--threads", "1", "--quiet"]

if not any(c.name == "train" for c in app.registered_commands):
    register(app)


def metaat(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_preset_plus_overrides_trains_and_saves_the_resolved_config(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, output = metaat(
        "train",
        "--config",
        str(CONFIGS / "presets" / "msd10.yaml"),
        *TINY,
        "--epochs",
        "1",
        "-o",
        "steps=1",
        "--out",
        str(out),
    )
    assert code == 0, output
    cfg = TrainConfig.from_yaml(out / "config.yaml")
    assert (cfg.defense, cfg.data, cfg.epochs, cfg.options["steps"]) == ("msd", "synthetic", 1, 1)
    assert cfg.options == {**TrainConfig.from_yaml(CONFIGS / "presets" / "msd10.yaml").options, "steps": 1}
    assert cfg.threats == TrainConfig.from_yaml(CONFIGS / "presets" / "msd10.yaml").threats
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["cost"]["passes_per_example"] == 1 * 5 / 2 + 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--defense", "nope"], "unknown defense 'nope'; valid defenses: "),
        (["--defense", "pgd", "--threat", "linf:x"], "eps 'x' is not a number"),
        (["--defense", "pgd", "--threat", "linf", "--threat", "l2"], "defense pgd trains against one threat"),
        (["--defense", "pgd", "-o", "stepz=2"], "unknown option(s) stepz; valid options:"),
        (["--defense", "pgd", "-o", "steps"], "--option must look like key=value"),
        (["--optimizer", "lion"], "unknown optimizer 'lion'; valid optimizers: sgd, adam"),
        (["--config", "missing.yaml"], "no config file at missing.yaml"),
        (["--data", "imagenet"], "unknown dataset 'imagenet'; valid datasets: "),
        (["--defense", "pgd", "-o", "steps=abc"], "defense pgd: option steps must be an integer; got 'abc'"),
        (["--defense", "trades", "-o", "beta=.inf"], "defense trades: option beta must be a finite number; got inf"),
    ],
)
def test_bad_input_is_a_one_line_error_with_status_2(tmp_path: Path, args: list[str], message: str) -> None:
    code, output = metaat("train", *TINY, *args, "--out", str(tmp_path / "run"))
    assert code == 2
    assert output.startswith("error: ") and message in output.replace("\n", " "), output
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_a_binary_config_or_an_out_file_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    code, output = metaat("train", *TINY, "--config", str(binary), "--out", str(tmp_path / "run"))
    assert code == 2 and "binary.yaml: not a text file" in " ".join(output.split()), output
    taken = tmp_path / "o.txt"
    taken.write_text("not a folder")
    code, output = metaat("train", *TINY, "--out", str(taken))
    assert code == 2 and "o.txt: it is a file" in " ".join(output.split()), output
    assert taken.read_text() == "not a folder"


def test_missing_tracker_names_the_extra_to_install(tmp_path: Path) -> None:
    code, output = metaat("train", *TINY, "--tracker", "tensorboard", "--out", str(tmp_path / "run"))
    if code == 0:
        pytest.skip("tensorboard is installed here")
    assert code == 2 and "pip install 'metaat[tensorboard]'" in output


def test_resume_rules_and_corrupt_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert metaat("train", *TINY, "--defense", "fast", "--epochs", "1", "--out", str(out))[0] == 0
    code, output = metaat("train", *TINY, "--defense", "fast", "--out", str(out))
    assert code == 2 and "already holds a run; resume it" in output
    code, output = metaat("train", "--resume", str(out), "--lr", "0.5", "--quiet")
    assert code == 2 and "cannot change --lr when resuming; allowed: --epochs" in output
    code, output = metaat("train", "--resume", str(out), "--config", str(CONFIGS / "presets" / "pgd10-linf.yaml"))
    assert code == 2 and "--config/--preset cannot be combined with --resume" in output
    code, output = metaat("train", "--resume", str(out), "--epochs", "2", "--quiet")
    assert code == 0, output
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    weights = out / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, output = metaat("train", "--resume", str(out), "--epochs", "3", "--quiet")
    assert code == 2 and f"{weights}: checksum mismatch" in output.replace("\n", "")
    code, output = metaat("train", "--resume", str(tmp_path / "nothing"))
    assert code == 2 and "no checkpoint in" in output


def test_a_preset_by_name_trains_its_recipe(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, output = metaat("train", "--preset", "sat-pgd10", *TINY, "--epochs", "1", "-o", "steps=1", "--out", str(out))
    assert code == 0, output
    cfg = TrainConfig.from_yaml(out / "config.yaml")
    assert (cfg.defense, cfg.options["steps"], cfg.options["weights"]) == ("sat", 1, None)
    code, output = metaat("train", "--preset", "nope", *TINY)
    assert code == 2 and "no preset 'nope'" in output and "sat-pgd10" in output
    code, output = metaat("train", "--preset", "default", "--config", str(CONFIGS / "msd.yaml"), *TINY)
    assert code == 2 and "give one" in output


def test_list_presets_names_each_and_the_default_link() -> None:
    code, output = metaat("list", "presets")
    assert code == 0 and "sat-pgd10 " in output and "default" in output
    assert "-> metaat-learned-refine3-adaptive-l1x2-js" in output
