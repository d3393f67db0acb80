"""``metaat export``: a trained run as an ONNX file, checked against PyTorch on the run's test points,
with the model card (threats, defense, robust accuracy, cost) in the ONNX ``metadata_props``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from metaat.cli import check_new_file, console, describe, fail, guarded, require_nonempty

FORMATS = ("onnx",)


def _card(model: Any, run: Path | None, data: str, info: Any, check: dict[str, Any]) -> dict[str, str]:
    from metaat import __version__
    from metaat.eval.report import read_cost, read_run_config

    config = read_run_config(run)
    spec = getattr(model, "metaat_spec", None) or {}
    card: dict[str, Any] = {
        "metaat.version": __version__,
        "metaat.run": str(run) if run is not None else None,
        "metaat.model": spec.get("name"),
        "metaat.data": data,
        "metaat.input": {
            "shape": ["batch", *info.input_shape],
            "dtype": "int64 token ids" if info.domain == "text" else "float32",
            "layout": "(B, T)" if info.domain == "text" else "channels first",
            "box": list(info.box),
        },
        "metaat.num_classes": info.num_classes,
        "metaat.defense": config.get("defense"),
        "metaat.defense_options": config.get("options"),
        "metaat.threats": config.get("threats"),
        "metaat.cost": read_cost(run),
        "metaat.export_check": check,
    }
    report_path = run / "report.json" if run is not None else None
    if report_path is not None and report_path.is_file():
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{report_path} is unreadable ({exc}); rerun metaat eval or move it away") from None
        card["metaat.robust_accuracy"] = {
            "clean": report.get("clean"),
            "robust": report.get("robust"),
            "union": report.get("union"),
            "threats": report.get("threats"),
            "n": (report.get("dataset") or {}).get("n"),
            "suite": (report.get("protocol") or {}).get("suite"),
            "upper_bound": report.get("robust_upper_bound"),
        }
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in card.items() if v is not None}


def export_cmd(
    target: Annotated[str, typer.Argument(help="run folder, checkpoint folder, model .safetensors or .keras file")],
    format: Annotated[str, typer.Option("--format", "-f", help="export format: onnx")] = "onnx",
    out: Annotated[Path | None, typer.Option(help="file to write (default: <run folder>/model.onnx)")] = None,
    data: Annotated[str | None, typer.Option(help="dataset of the check (default: the run's)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="folder holding the dataset files")] = None,
    n: Annotated[int, typer.Option("--n", help="test points the export is checked on")] = 500,
    exporter: Annotated[
        str, typer.Option(help="auto (torch.export, else TorchScript), dynamo or torchscript")
    ] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing file")] = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="write nothing: check the existing --out file against the model")
    ] = False,
) -> None:
    """Export a model to ONNX, checked on export: ONNX Runtime's logits equal PyTorch's within
    1e-4 + 1e-4·|logit| and the clean accuracy is the same on the run's first --n test points.
    ``--verify`` repeats the check on a file exported before."""
    import metaat.data as datasets
    import metaat.models as models
    from metaat.eval.report import read_run_config
    from metaat.models.onnx_export import ATOL, RTOL, ExportError, add_metadata, check_onnx, export_onnx, read_metadata

    try:
        require_nonempty("target", target)
        require_nonempty("--data", data)
        if format not in FORMATS:
            raise ValueError(f"unknown --format {format!r}; valid: {', '.join(FORMATS)}")
        if n < 2:
            raise ValueError(f"--n must be at least 2; got {n}")
        path, run = models.locate_model(target)
        folder = run if run is not None else (path if path.is_dir() else path.parent)
        dest = out if out is not None else folder / "model.onnx"
        if verify and not dest.is_file():
            raise FileNotFoundError(f"--verify: no ONNX file at {dest} (export it first, or give --out FILE)")
        if not verify:
            check_new_file(dest, "--out", overwrite, suffix=".onnx")
        model = models.load_model(path)
        config = read_run_config(run)
        name = data or config.get("data")
        if not name:
            raise ValueError(f"{target} names no dataset (no config.yaml in a run folder); give --data")
        info = datasets.info(name)
        x, y = datasets.load(name, "test", data_dir=data_dir or (config.get("data_dir") if data is None else None), n=n)
        if verify:
            check = check_onnx(dest, model, x, y, atol=ATOL, rtol=RTOL)
            used = read_metadata(dest).get("metaat.exporter", "unknown")
            console.print(
                f"{dest} matches the model ({used} exporter): max |Δlogit| {check.max_abs_diff:.2g} on {check.n} "
                f"test points of {name}, clean accuracy {100 * check.onnx_accuracy:.2f}% in both",
                highlight=False,
                soft_wrap=True,
            )
            return
        used = export_onnx(model, x[: min(8, len(x))], dest, exporter=exporter)
        try:
            check = check_onnx(dest, model, x, y, atol=ATOL, rtol=RTOL)
            result = {**check.to_dict(), "exporter": used}
            add_metadata(dest, _card(model, run, name, info, result))
        except BaseException:
            dest.unlink(missing_ok=True)  # never leave an unchecked file behind
            raise
    except (ValueError, TypeError, KeyError, FileNotFoundError, ExportError, models.CheckpointError) as err:
        fail(describe(err))
        return
    console.print(
        f"wrote {dest} ({used} exporter): ONNX Runtime vs PyTorch on {check.n} test points of {name}: "
        f"max |Δlogit| {check.max_abs_diff:.2g} (tolerance {ATOL:g} + {RTOL:g}·|logit|), clean accuracy "
        f"{100 * check.onnx_accuracy:.2f}% in both",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add ``metaat export`` to the CLI."""
    app.command("export")(guarded(export_cmd))
