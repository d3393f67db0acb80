"""``metaat eval`` / ``metaat compare`` end to end on a saved checkpoint and synthetic data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import typer
from conftest import save_small_run
from typer.testing import CliRunner

import metaat.cli.eval as commands
import metaat.data as datasets
import metaat.models as models

FAST = ["--data", "synthetic", "--n", "16", "--suite", "quick", "--no-unseen", "--no-checks", "--threads", "1"]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    commands.register(app)
    return app


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/small: a trained 12x12 MLP saved as checkpoint/ with a config.yaml naming its data."""
    return save_small_run(tmp_path_factory.mktemp("runs") / "small")


def invoke(app: typer.Typer, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_eval_writes_the_three_reports(app: typer.Typer, run_dir: Path) -> None:
    code, out, _ = invoke(app, "eval", str(run_dir), *FAST, "--threat", "linf:0.1", "--threat", "l2:1")
    assert code == 0, out
    for name in ("report.json", "report.md", "report.html"):
        assert (run_dir / name).is_file()
    assert not (run_dir / ".eval-state.json").exists(), "the default state file is removed once done"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["threats"] == ["linf:0.1", "l2:1"] and report["dataset"]["n"] == 16
    assert report["model"]["name"] == "mlp" and report["model"]["source"].endswith("checkpoint")
    assert f"HTML report: {run_dir / 'report.html'}" in out.replace("\n", "")
    assert f"{100 * report['union']:.2f}" in out

    code, out, _ = invoke(
        app,
        "eval",
        str(run_dir / "checkpoint"),
        *FAST,
        "--threat",
        "linf:0.1",
        "--json",
        "--out",
        str(run_dir / "again"),
    )
    assert code == 0
    printed = json.loads(out)
    assert printed["threats"] == ["linf:0.1"] and (run_dir / "again" / "report.html").is_file()


def test_eval_start_scores_a_later_slice_and_the_report_names_it(app: typer.Typer, run_dir: Path) -> None:
    out_dir = run_dir / "later"
    code, out, _ = invoke(app, "eval", str(run_dir), *FAST, "--start", "100", "--out", str(out_dir), "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["dataset"]["start"] == 100 and report["dataset"]["n"] == 16
    net = models.load_model(run_dir / "checkpoint")
    with torch.no_grad():
        clean = [
            (net(x).argmax(1) == y).float().mean().item()
            for x, y in (datasets.load("synthetic", "test", n=16, start=s) for s in (100, 0))
        ]
    assert clean[0] != clean[1], "the two slices must score differently for this test to tell them apart"
    assert report["clean"] == pytest.approx(clean[0])  # scored on points 100-115, not the first 16
    assert "n = 16 points (indices 100–115)" in (out_dir / "report.md").read_text()
    assert "n = 16 points (indices 100–115)" in (out_dir / "report.html").read_text()


def test_compare_ranks_runs(app: typer.Typer, run_dir: Path, tmp_path: Path) -> None:
    code, _, _ = invoke(app, "eval", str(run_dir), *FAST, "--threat", "linf:0.1")
    assert code == 0
    code, out, _ = invoke(app, "compare", str(run_dir), "--out", str(tmp_path))
    assert code == 0 and "| 1 | small | mlp | standard |" in out
    assert (tmp_path / "leaderboard.md").is_file() and (tmp_path / "leaderboard.html").is_file()


def test_eval_apgd_worst_reports_the_worst_case_and_what_the_extra_pass_broke(app: typer.Typer, run_dir: Path) -> None:
    args = ["--data", "synthetic", "--n", "8", "--no-unseen", "--no-checks", "--threads", "1", "--threat", "linf:0.1"]
    code, out, _ = invoke(app, "eval", str(run_dir), *args, "--suite", "apgd-worst", "--json")
    assert code == 0, out
    report = json.loads(out)
    protocol = report["protocol"]
    assert protocol["suite"] == "apgd-worst" and set(protocol["extra_broken"]) == {"linf:0.1", "union"}
    assert any("extra pass" in a and "5 restart(s)" in a for a in protocol["attacks"]["linf:0.1"])
    assert not list(run_dir.glob(".eval-state*")), "both default state files are removed once done"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threat", "lp:3"], "unknown norm 'lp'; valid norms: linf, l2, l1"),
        (["--threat", "linf:0"], "eps must be a finite number > 0"),
        (["--threat", "linf:0.1", "--n", "5000"], "asked for n=5000 examples but the synthetic test split holds"),
        (["--threat", "linf:0.1", "--start", "-1"], "start must be a non-negative integer"),
        (["--threat", "linf:0.1", "--start", "990"], "asked for n=16 examples from index 990 but the synthetic test"),
        (["--threat", "linf:0.1", "--suite", "best"], "valid suites: apgd, apgd-worst, quick, standard"),
        (["--threat", "linf:0.1", "--data", "cifar100"], "unknown dataset 'cifar100'; valid datasets:"),
    ],
)
def test_bad_inputs_fail_with_one_line(app: typer.Typer, run_dir: Path, args: list[str], message: str) -> None:
    code, out, err = invoke(app, "eval", str(run_dir), *FAST, *args)
    assert code == 2
    assert message in err, err
    assert len(err.strip().splitlines()) == 1, "a one-line error"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data: [mnist\n", "config.yaml is unreadable"),
        ("data: 5\n", "config.yaml: data must be a string; got 5"),
        ("- a list\n", "config.yaml must hold a mapping of options; got list"),
        (b"\xff\xfe\x00binary", "config.yaml is unreadable"),
    ],
)
def test_a_damaged_run_config_is_an_error_not_a_silent_default(
    app: typer.Typer, run_dir: Path, tmp_path: Path, text: str | bytes, message: str
) -> None:
    run = tmp_path / "damaged"
    models.save_model(models.load_model(run_dir / "checkpoint"), run / "checkpoint")
    config = run / "config.yaml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, _, err = invoke(app, "eval", str(run), *FAST, "--threat", "linf:0.1")
    assert code == 2 and message in " ".join(err.split()), err
    assert len(err.strip().splitlines()) == 1, "a one-line error"


def test_checkpoint_of_another_architecture_is_refused(app: typer.Typer, tmp_path: Path) -> None:
    wide = models.create("mlp", num_classes=10, in_channels=3, image_size=32)
    models.save_model(wide, tmp_path / "rgb")
    code, _, err = invoke(app, "eval", str(tmp_path / "rgb"), *FAST)
    assert code == 2 and "the checkpoint is a mlp for 3x32x32 inputs" in " ".join(err.split())

    # Weights of one architecture under the spec of another: the loader names the mismatch.
    models.save_model(models.create("lenet", num_classes=10, in_channels=1, image_size=12), tmp_path / "mixed")
    spec = json.loads((tmp_path / "mixed" / "model.json").read_text())
    spec["spec"]["name"] = "cnn-small"
    (tmp_path / "mixed" / "model.json").write_text(json.dumps(spec))
    code, _, err = invoke(app, "eval", str(tmp_path / "mixed"), *FAST)
    assert code == 2 and "does not match architecture" in " ".join(err.split())

    code, _, err = invoke(app, "eval", str(tmp_path / "nowhere"), *FAST)
    assert code == 2 and "no model at" in " ".join(err.split())


def test_the_installed_command_has_eval_and_compare(run_dir: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "metaat.cli", "eval", "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "--union-only" in proc.stdout and "--unseen" in proc.stdout and "--suite" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "metaat.cli", "compare", str(run_dir / "missing")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2 and "missing does not exist" in proc.stderr
