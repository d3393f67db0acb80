"""ONNX export of a metaat model, checked against PyTorch with ONNX Runtime.

:func:`export_onnx` writes one self-contained ``.onnx`` file (weights inside, dynamic batch size)
with the PyTorch exporter (``torch.onnx.export``; the ``torch.export``-based one, else the TorchScript
one), and a model card as ONNX ``metadata_props``. :func:`check_onnx` runs the file in ONNX Runtime
on test points and compares with the PyTorch model: the largest logit difference must stay within
``atol + rtol * |logit|`` and the clean accuracy must be the same. ONNX, ONNX Runtime and onnxscript
come with ``pip install 'metaat[onnx]'``.

Inputs keep the model's layout and units (images ``(B, C, H, W)`` float32 pixels in [0, 1],
signals ``(B, C, T)`` float32, text ``(B, T)`` int64 token ids); the output is ``(B, classes)`` logits.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metaat.runtime import atomic_write

EXTRA_HINT = "pip install 'metaat[onnx]'"
EXPORTERS = ("auto", "dynamo", "torchscript")
ATOL = 1e-4
RTOL = 1e-4


class ExportError(ValueError):
    """The model cannot be exported, the ONNX file is unreadable, or ONNX Runtime disagrees with PyTorch."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(f"ONNX export needs {module} ({EXTRA_HINT}): {_first_line(exc)}") from None


def _export(model: nn.Module, example: torch.Tensor, path: Path, exporter: str) -> None:
    """``torch.onnx.export`` of ``model`` into ``path`` with a dynamic batch dimension (its chatter silenced)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the exporter's notes on optional packages (torchvision ops) are not ours
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            _run_exporter(model, example, path, exporter)
        finally:
            logger.setLevel(level)


def _run_exporter(model: nn.Module, example: torch.Tensor, path: Path, exporter: str) -> None:
    names: dict[str, Any] = {"input_names": ["input"], "output_names": ["logits"]}
    if exporter == "dynamo":
        _require("onnxscript")
        shapes = ({0: torch.export.Dim("batch")},)
        torch.onnx.export(
            model, (example,), str(path), dynamo=True, external_data=False, dynamic_shapes=shapes, **names
        )
    else:
        axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
        torch.onnx.export(model, (example,), str(path), dynamo=False, dynamic_axes=axes, **names)


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
    exporter: str = "auto",
) -> str:
    """Write ``model`` (eval mode, CPU) as ONNX to ``path``, with ``metadata`` as ``metadata_props``.

    ``example``: a batch of at least two real inputs. ``exporter``: ``dynamo`` (``torch.export``),
    ``torchscript`` (tracing), or ``auto`` (dynamo, else torchscript). Returns the exporter used;
    :class:`ExportError` (one line) when neither can export the model.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; valid: {', '.join(EXPORTERS)}")
    onnx = _require("onnx")
    if example.shape[0] < 2:
        raise ExportError("export needs an example batch of at least 2 inputs (the batch size stays dynamic)")
    model = model.to("cpu").eval()
    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    reasons = []
    with tempfile.TemporaryDirectory(prefix="metaat-onnx-") as tmp:
        raw = Path(tmp) / "model.onnx"
        used = None
        for name in order:
            try:
                _export(model, example.cpu(), raw, name)
                used = name
                break
            except Exception as exc:  # noqa: BLE001 - the exporters raise many types; each becomes one line
                reasons.append(f"{name}: {_first_line(exc)}")
        if used is None:
            raise ExportError(f"the model cannot be exported to ONNX ({'; '.join(reasons)})")
        proto = onnx.load(str(raw))
    _write(proto, Path(path), {**(metadata or {}), "metaat.exporter": used})
    return used


def _write(proto: Any, path: Path, metadata: dict[str, str]) -> None:
    known = {p.key: p for p in proto.metadata_props}
    for key, value in sorted(metadata.items()):
        entry = known[key] if key in known else proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    data = proto.SerializeToString()

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(data)

    atomic_write(path, write)


def add_metadata(path: str | os.PathLike[str], metadata: dict[str, str]) -> None:
    """Set ``metadata`` (string keys and values) in the ``metadata_props`` of the ONNX file at ``path``."""
    onnx = _require("onnx")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise ExportError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from None
    _write(proto, Path(path), metadata)


def onnx_session(path: str | os.PathLike[str]) -> Any:
    """An ONNX Runtime CPU session for ``path``; :class:`ExportError` (one line) for a missing,
    corrupt or truncated file."""
    ort = _require("onnxruntime")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no ONNX file at {p}")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own error types
        raise ExportError(f"{p}: not a readable ONNX model ({_first_line(exc)})") from None


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``metadata_props`` of the ONNX file at ``path``."""
    return dict(onnx_session(path).get_modelmeta().custom_metadata_map)


@dataclass(frozen=True)
class OnnxCheck:
    """ONNX Runtime against PyTorch on ``n`` points."""

    n: int
    max_abs_diff: float
    atol: float
    rtol: float
    torch_accuracy: float
    onnx_accuracy: float
    disagreements: int

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def check_onnx(
    path: str | os.PathLike[str],
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    atol: float = ATOL,
    rtol: float = RTOL,
    batch_size: int = 256,
) -> OnnxCheck:
    """Run the ONNX file and ``model`` (eval mode, CPU) on ``x``; :class:`ExportError` when a logit
    differs by more than ``atol + rtol * |torch logit|`` or the clean accuracies differ."""
    session = onnx_session(path)
    model = model.to("cpu").eval()
    name = session.get_inputs()[0].name
    worst, ok, correct_t, correct_o, disagree = 0.0, True, 0, 0, 0
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i : i + batch_size].cpu(), y[i : i + batch_size].cpu()
        with torch.no_grad():
            ref = model(xb).float()
        try:
            got = torch.from_numpy(session.run(None, {name: xb.numpy()})[0]).float()
        except Exception as exc:  # noqa: BLE001
            raise ExportError(
                f"{path}: ONNX Runtime cannot run the model on the test points ({_first_line(exc)})"
            ) from None
        if got.shape != ref.shape:
            raise ExportError(
                f"{path}: ONNX Runtime returned logits of shape {tuple(got.shape)}, PyTorch {tuple(ref.shape)}"
            )
        diff = (got - ref).abs()
        worst = max(worst, float(diff.max()))
        ok = ok and bool((diff <= atol + rtol * ref.abs()).all())
        correct_t += int((ref.argmax(1) == yb).sum())
        correct_o += int((got.argmax(1) == yb).sum())
        disagree += int((ref.argmax(1) != got.argmax(1)).sum())
    n = int(x.shape[0])
    check = OnnxCheck(n, worst, atol, rtol, correct_t / max(n, 1), correct_o / max(n, 1), disagree)
    if not ok:
        raise ExportError(
            f"{path}: ONNX Runtime's logits differ from PyTorch's by up to {worst:.3g} on {n} test points "
            f"(tolerance {atol:g} + {rtol:g}·|logit|)"
        )
    if correct_t != correct_o:
        raise ExportError(
            f"{path}: clean accuracy {100 * check.onnx_accuracy:.2f}% in ONNX Runtime vs "
            f"{100 * check.torch_accuracy:.2f}% in PyTorch on {n} test points"
        )
    return check


__all__ = [
    "ATOL",
    "EXPORTERS",
    "RTOL",
    "ExportError",
    "OnnxCheck",
    "add_metadata",
    "check_onnx",
    "export_onnx",
    "onnx_session",
    "read_metadata",
]
