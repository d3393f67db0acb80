"""The ``metaat`` command: ``list`` and ``attack`` (in-process through typer's runner, plus one real
subprocess call of the installed console script)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import metaat.attacks as attacks
import metaat.data as data
import metaat.models as models
from metaat import cli
from metaat.runtime import make_generator

cli._load_command_modules()
runner = CliRunner()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(cli.app, list(args))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MLP trained for a fraction of a second on synthetic 1x12x12 data, saved with save_model."""
    x, y = data.load("synthetic", "train", n=1000)
    torch.manual_seed(0)
    model = models.create("mlp", num_classes=10, in_channels=1, image_size=12, hidden=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        for i in range(0, len(y), 100):
            loss = F.cross_entropy(model(x[i : i + 100]), y[i : i + 100])
            opt.zero_grad()
            loss.backward()
            opt.step()
    path = tmp_path_factory.mktemp("cli") / "model"
    models.save_model(model, path)
    return path


def attack_args(model_dir: Path, *extra: str) -> list[str]:
    return ["attack", "--model", str(model_dir), "--data", "synthetic", "--n", "40", *extra]


# ---------------------------------------------------------------------------------------------------
# list


@pytest.mark.parametrize(
    ("family", "names"),
    [("datasets", data.available), ("models", models.available), ("attacks", attacks.available)],
)
def test_list_prints_every_registered_name_with_a_description(family: str, names) -> None:  # type: ignore[no-untyped-def]
    result = invoke("list", family)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    listed = [line.split()[0] for line in lines]
    assert listed == names()
    assert all(len(line.split()) > 1 for line in lines), "every entry has a one-line description"


def test_list_unknown_family_fails() -> None:
    result = invoke("list", "gadgets")
    assert result.exit_code != 0
    assert "gadgets" in result.output


# ---------------------------------------------------------------------------------------------------
# attack


def test_attack_prints_clean_and_robust_accuracy(model_dir: Path) -> None:
    result = invoke(*attack_args(model_dir, "--attack", "fgsm", "--threat", "linf:0.1"))
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert len(line.splitlines()) == 1
    assert line.startswith("fgsm linf:0.1 on 40 points: clean ")
    assert "%, robust " in line


def test_attack_json_matches_the_library(model_dir: Path) -> None:
    result = invoke(
        *attack_args(model_dir, "--attack", "pgd", "--threat", "l2:0.5", "-o", "steps=5", "--seed", "3", "--json")
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"model", "data", "n", "attack", "threat", "clean", "robust", "seconds", "seed"} <= set(report)
    assert report["n"] == 40 and report["threat"] == "l2:0.5" and report["seed"] == 3
    assert "steps=5" in report["attack"]
    # The same numbers straight from the library (one chunk, same seed, same generator stream).
    model = models.load_model(model_dir)
    x, y = data.load("synthetic", "test", n=40)
    x_adv = attacks.create("pgd", threat="l2:0.5", steps=5, seed=3)(model, x, y, generator=make_generator(3))
    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y
        robust_ok = (model(x_adv).argmax(1) == y) & clean_ok
    assert report["clean"] == pytest.approx(clean_ok.float().mean().item())
    assert report["robust"] == pytest.approx(robust_ok.float().mean().item())
    assert 0.5 < report["clean"] and report["robust"] < report["clean"]


def test_a_bare_norm_takes_its_default_radius_as_in_train(model_dir: Path) -> None:
    result = invoke(*attack_args(model_dir, "--attack", "fgsm", "--threat", "l2", "--json"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["threat"] == "l2:1.5"


def test_attack_is_reproducible(model_dir: Path) -> None:
    args = attack_args(model_dir, "--attack", "pgd", "-o", "steps=3", "--json")
    first, second = json.loads(invoke(*args).stdout), json.loads(invoke(*args).stdout)
    assert (first["clean"], first["robust"]) == (second["clean"], second["robust"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--attack", "pgdd"), "unknown attack 'pgdd'; valid attacks: "),
        (("--threat", "linf:0"), "eps must be a finite number > 0"),
        (("--threat", "linf:-0.1"), "eps must be a finite number > 0"),
        (("--threat", "linf0.1"), "give 'norm:eps' (e.g. linf:0.1) or a bare norm"),
        (("--threat", "l3:0.1"), "unknown norm 'l3'; valid norms: linf, l2, l1"),
        (("--threat", "linf:abc"), "is not a number"),
        (("-o", "stepz=3"), "unknown option(s) stepz; valid options:"),
        (("-o", "steps"), "--option must look like key=value"),
        (("--attack", "pgd", "-o", "steps=0"), "steps must be >= 1"),
        (("--attack", "pgd", "-o", "steps=1.5"), "pgd: option steps must be an integer; got 1.5"),
        (("--attack", "pgd", "-o", "step_size=.nan"), "pgd: option step_size must be a finite number"),
        (("--attack", "pgd", "-o", "targeted=2"), "pgd: option targeted must be true or false; got 2"),
        (("--attack", "patch", "-o", "patch_size=100"), "patch: patch_size 100 does not fit"),
    ],
)
def test_attack_bad_input_is_a_one_line_error(model_dir: Path, extra: tuple[str, ...], message: str) -> None:
    result = invoke(*attack_args(model_dir, *extra))
    assert_one_line_error(result, message)


def test_unknown_dataset_is_a_one_line_error(model_dir: Path) -> None:
    result = invoke("attack", "--model", str(model_dir), "--data", "imagenet-9000", "--n", "10")
    assert_one_line_error(result, "unknown dataset 'imagenet-9000'; valid datasets: ")


def test_missing_model_is_a_one_line_error(tmp_path: Path) -> None:
    result = invoke("attack", "--model", str(tmp_path / "nowhere"), "--data", "synthetic", "--n", "10")
    assert_one_line_error(result, "no model at")


def test_corrupt_model_is_a_one_line_error(model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text((model_dir / "model.json").read_text())
    (broken / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes()[:100])
    result = invoke("attack", "--model", str(broken), "--data", "synthetic", "--n", "10")
    assert_one_line_error(result, str(broken))


def test_model_for_other_images_is_a_one_line_error(model_dir: Path, tmp_path: Path) -> None:
    """A 12x12 model on 28x28 Fashion-MNIST, and a 3-class model on 10-class data."""
    try:
        data.load("fashion-mnist", "test", n=1)
    except FileNotFoundError:
        pass
    else:
        result = invoke("attack", "--model", str(model_dir), "--data", "fashion-mnist", "--n", "10")
        assert_one_line_error(result, "the model does not accept fashion-mnist images of shape (1, 28, 28)")
    three = tmp_path / "three"
    models.save_model(models.create("mlp", num_classes=3, in_channels=1, image_size=12, hidden=8), three)
    result = invoke("attack", "--model", str(three), "--data", "synthetic", "--n", "40")
    assert_one_line_error(result, "has labels up to 9")


def test_bad_numbers_are_one_line_errors(model_dir: Path) -> None:
    assert_one_line_error(invoke(*attack_args(model_dir)[:-2], "--n", "0"), "n must be a positive integer")
    assert_one_line_error(invoke(*attack_args(model_dir, "--batch-size", "0")), "batch_size must be >= 1")
    assert_one_line_error(invoke(*attack_args(model_dir, "--threads", "0")), "threads must be >= 1")


def assert_one_line_error(result, message: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    assert message in err
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------------
# the installed console script


def test_console_script_runs(model_dir: Path) -> None:
    exe = Path(sys.executable).parent / "metaat"
    if not exe.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    ok = subprocess.run(
        [str(exe), *attack_args(model_dir, "--attack", "fgsm", "--json")], capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    assert 0 <= json.loads(ok.stdout)["robust"] <= json.loads(ok.stdout)["clean"]
    bad = subprocess.run(
        [str(exe), *attack_args(model_dir, "--threat", "linf:0")], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.strip().splitlines() == ["error: eps must be a finite number > 0, got 0.0"]
