"""``metaat export --format onnx``: ONNX Runtime reproduces PyTorch's logits (within 1e-4 +
1e-4·|logit|) and clean accuracy (exactly) for image, signal (B, C, T) and text (B, T) int64 models,
the model card travels in the ONNX metadata, and a corrupt file or an unexportable model is one line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import metaat.data as data
import metaat.models as models
from metaat import cli

if any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime")):
    pytest.skip("the onnx extra is not installed (pip install 'metaat[onnx]')", allow_module_level=True)

from metaat.models.onnx_export import ExportError, check_onnx, export_onnx, read_metadata  # noqa: E402

pytestmark = pytest.mark.integration  # imports Keras / runs the ONNX exporters: tens of seconds
cli._load_command_modules()
runner = CliRunner()


@pytest.mark.parametrize(
    ("name", "channels", "size", "classes", "x"),
    [
        ("mlp", 1, 12, 10, lambda: data.load("synthetic", "test", n=200)[0]),
        ("fcn-small", 3, 32, 4, lambda: torch.randn(200, 3, 32)),
        ("word-cnn", 1, 20, 2, lambda: torch.randint(0, 50, (200, 20))),
    ],
)
def test_onnx_reproduces_logits_and_accuracy(
    tmp_path: Path, name: str, channels: int, size: int, classes: int, x: object
) -> None:
    torch.manual_seed(0)
    kwargs: dict[str, Any] = {"vocab_size": 50} if name == "word-cnn" else {}
    model = models.create(name, classes, channels, size, **kwargs).eval()
    inputs = x()  # type: ignore[operator]
    with torch.no_grad():
        labels = model(inputs).argmax(1)
    labels[::3] = (labels[::3] + 1) % classes  # an accuracy strictly between 0 and 1
    used = export_onnx(model, inputs[:4], tmp_path / "m.onnx", {"metaat.data": "x"}, exporter="torchscript")
    check = check_onnx(tmp_path / "m.onnx", model, inputs, labels)
    assert used == "torchscript" and check.n == 200 and check.max_abs_diff <= 1e-4
    assert check.onnx_accuracy == check.torch_accuracy and 0 < check.torch_accuracy < 1 and check.disagreements == 0
    assert read_metadata(tmp_path / "m.onnx") == {"metaat.data": "x", "metaat.exporter": "torchscript"}


def test_corrupt_file_and_unexportable_model_are_one_line(tmp_path: Path) -> None:
    model = models.create("mlp", 10, 1, 12).eval()
    x, y = data.load("synthetic", "test", n=8)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ExportError, match=r"bad.onnx: not a readable ONNX model") as info:
        check_onnx(bad, model, x, y)
    assert "\n" not in str(info.value)

    class Host(nn.Module):  # leaves the graph: no exporter can follow it
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("forward reads a file on the host")

    with pytest.raises(ExportError, match=r"cannot be exported to ONNX \(dynamo: .*; torchscript: .*\)") as info:
        export_onnx(Host(), x[:2], tmp_path / "host.onnx")
    assert "\n" not in str(info.value) and not (tmp_path / "host.onnx").exists()


def test_export_command_writes_a_checked_model_with_its_card(tmp_path: Path) -> None:
    from conftest import save_small_run

    run = save_small_run(tmp_path / "run")
    report = {"clean": 0.5, "robust": {"linf:0.1": 0.25}, "union": 0.25, "threats": ["linf:0.1"], "dataset": {"n": 100}}
    (run / "report.json").write_text(json.dumps(report))
    (run / "summary.json").write_text(json.dumps({"cost": {"passes_per_example": 2.0}, "epochs_completed": 1}))
    result = runner.invoke(cli.app, ["export", str(run), "--format", "onnx", "--n", "300"])
    assert result.exit_code == 0, result.output
    assert "max |Δlogit|" in result.output and "300 test points of synthetic" in result.output
    card = read_metadata(run / "model.onnx")
    assert card["metaat.exporter"] == "dynamo"
    assert card["metaat.defense"] == "standard" and json.loads(card["metaat.threats"]) == ["linf:0.1"]
    assert json.loads(card["metaat.robust_accuracy"])["robust"] == {"linf:0.1": 0.25}
    assert json.loads(card["metaat.cost"])["passes_per_example"] == 2.0
    check = json.loads(card["metaat.export_check"])
    assert check["onnx_accuracy"] == check["torch_accuracy"] and check["n"] == 300 and check["max_abs_diff"] <= 1e-4
    again = runner.invoke(cli.app, ["export", str(run), "--verify", "--n", "50"])
    assert again.exit_code == 0 and "matches the model" in again.output
    exists = runner.invoke(cli.app, ["export", str(run)])
    assert exists.exit_code == 2 and "already exists; pass --overwrite" in exists.output


def test_export_command_errors_are_one_line(tmp_path: Path) -> None:
    from conftest import save_small_run

    run = save_small_run(tmp_path / "run")
    (run / "model.onnx").write_bytes(b"not onnx")
    for args, message in [
        (["--verify"], "model.onnx: not a readable ONNX model"),
        (["--format", "tflite"], "unknown --format 'tflite'; valid: onnx"),
        (["--out", str(tmp_path / "m.txt")], "--out writes a .onnx file"),
    ]:
        result = runner.invoke(cli.app, ["export", str(run), *args])
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    missing = runner.invoke(cli.app, ["export", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no model at" in missing.output
