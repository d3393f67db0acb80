"""Figures for the HTML reports, drawn with matplotlib's Agg/SVG backends from the report dict.

Every function returns an inline ``<svg>`` string (no XML prolog, deterministic ids via
``svg.hashsalt``, no date) or a base64 PNG; nothing touches a display or the network.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from metaat.registry import load_domains  # noqa: E402

NORM_LABELS = {"linf": "L∞", "l2": "L2", "l1": "L1"}
COLOURS = {"clean": "#4c72b0", "union": "#c44e52", "threat": "#55a868", "upper": "#a6a6a6"}


def image_png_base64(image: torch.Tensor) -> str:
    """A (C, H, W) image in [0, 1] as base64 PNG (grey for one channel, RGB for three)."""
    arr = image.detach().to("cpu", torch.float32).clamp(0, 1).numpy()
    buf = io.BytesIO()
    if arr.shape[0] == 1:
        plt.imsave(buf, arr[0], cmap="gray", vmin=0.0, vmax=1.0, format="png")
    else:
        plt.imsave(buf, np.transpose(arr[:3], (1, 2, 0)), format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def signal_png_base64(clean: torch.Tensor, other: torch.Tensor | None = None, title: str = "") -> str:
    """A (C, T) signal as a base64 PNG, one panel row per channel; ``other`` is drawn over it in red."""
    arr = clean.detach().to("cpu", torch.float32).numpy()
    over = other.detach().to("cpu", torch.float32).numpy() if other is not None else None
    channels = arr.shape[0]
    fig, axes = plt.subplots(channels, 1, figsize=(3.2, 0.45 * channels + 0.3), sharex=True, squeeze=False)
    for c in range(channels):
        ax = axes[c, 0]
        ax.plot(arr[c], color="#1f4e79", linewidth=0.8)
        if over is not None:
            ax.plot(over[c], color="#c0392b", linewidth=0.8)
        ax.set_yticks([])
        ax.tick_params(labelsize=5)
    if title:
        axes[0, 0].set_title(title, fontsize=6)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


EXAMPLE_VIEWS: dict[int, Callable[[torch.Tensor, torch.Tensor], dict[str, Any]]] = {}
"""How a domain shows one example, by the example's rank (0: token ids ``(L,)``): a function
``(x, x_adv) -> {"tokens_clean": [str, ...], "tokens_adversarial": [str, ...]}`` registered by the
domain; reports show the two texts with the changed tokens marked."""


def example_pngs(x: torch.Tensor, x_adv: torch.Tensor, scale: float) -> dict[str, Any]:
    """The report's view of one example: clean, adversarial and perturbation pictures. Images are
    drawn as images; signals ``(C, T)`` as one trace per channel (adversarial in red over clean); a
    rank with a registered :data:`EXAMPLE_VIEWS` entry (text) by that view."""
    load_domains()  # the built-in domains register their views on import
    if x.dim() - 1 in EXAMPLE_VIEWS:
        return EXAMPLE_VIEWS[x.dim() - 1](x, x_adv)
    delta = x_adv - x
    if x.dim() == 2:
        return {
            "clean_png": signal_png_base64(x, title="clean"),
            "adversarial_png": signal_png_base64(x, x_adv, title="clean (blue) vs adversarial (red)"),
            "perturbation_png": signal_png_base64(delta, title="perturbation"),
        }
    return {
        "clean_png": image_png_base64(x),
        "adversarial_png": image_png_base64(x_adv),
        "perturbation_png": image_png_base64(0.5 + delta / (2 * scale)),
    }


def _svg(fig: Any, salt: str) -> str:
    buf = io.StringIO()
    with plt.rc_context({"svg.hashsalt": salt, "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    svg = text[text.find("<svg") :]
    # Natural size, shrunk to the page width when narrower (CSS max-width + height:auto on .figure).
    return svg.replace("<svg ", f'<svg class="figure" id="fig-{salt}" ', 1)


def accuracy_vs_eps(report: dict[str, Any]) -> str | None:
    """Robust accuracy against eps, one panel per norm (eps sweep plus the evaluated threats)."""
    curves: dict[str, list[dict[str, Any]]] = {}
    sweep = (report.get("unseen") or {}).get("eps_sweep")
    for norm, points in (sweep or {}).get("curves", {}).items():
        curves[norm] = sorted(points, key=lambda p: p["eps"])
    evaluated: dict[str, list[tuple[float, float]]] = {}
    for threat, acc in report["robust"].items():
        norm, eps = threat.split(":")
        if norm in ("linf", "l2", "l1"):  # a domain threat (spike:5,2) has no single radius to plot
            evaluated.setdefault(norm, []).append((float(eps), acc))
    norms = [n for n in ("linf", "l2", "l1") if n in curves or n in evaluated]
    if not norms:
        return None
    fig, axes = plt.subplots(1, len(norms), figsize=(3.6 * len(norms), 3.0), squeeze=False)
    for ax, norm in zip(axes[0], norms, strict=True):
        if norm in curves:
            eps = [p["eps"] for p in curves[norm]]
            acc = [100 * p["accuracy"] for p in curves[norm]]
            ax.plot([0.0, *eps], [100 * report["clean"], *acc], "o-", color=COLOURS["threat"], label="PGD sweep")
        for e, a in evaluated.get(norm, []):
            ax.plot([e], [100 * a], "D", color=COLOURS["union"], markersize=7, label="reported")
        ax.set_title(NORM_LABELS.get(norm, norm))
        ax.set_xlabel("eps")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("robust accuracy (%)")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    if unique:
        axes[0][-1].legend(unique.values(), unique.keys(), fontsize=8, loc="upper right")
    fig.tight_layout()
    return _svg(fig, "accuracy-vs-eps")


def threat_bars(report: dict[str, Any]) -> str:
    """Clean, each threat and union accuracy as bars (upper bounds greyed)."""
    labels = ["clean", *report["robust"], "union"]
    values = [report["clean"], *report["robust"].values(), report["union"]]
    upper = report.get("robust_upper_bound", {})
    colours = [COLOURS["clean"]]
    colours += [COLOURS["upper"] if upper.get(t) else COLOURS["threat"] for t in report["robust"]]
    colours += [COLOURS["union"]]
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 1.5, 3.0))
    bars = ax.bar(range(len(labels)), [100 * v for v in values], color=colours)
    for bar, v, label in zip(bars, values, labels, strict=True):
        prefix = "≤" if upper.get(label) else ""
        ax.text(bar.get_x() + bar.get_width() / 2, 100 * v + 1.5, f"{prefix}{100 * v:.1f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_ylabel("accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _svg(fig, "threat-bars")


def cost_vs_union(rows: list[dict[str, Any]]) -> str | None:
    """Leaderboard scatter: training cost (passes per example, else s/epoch) against union accuracy."""
    key = "passes_per_example" if any(r.get("passes_per_example") is not None for r in rows) else "seconds_per_epoch"
    pts = [(r[key], r["union"], r["run"]) for r in rows if r.get(key) is not None and r.get("union") is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    for cost, union, name in pts:
        ax.scatter([cost], [100 * union], color=COLOURS["union"])
        ax.annotate(name, (cost, 100 * union), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("passes per example" if key == "passes_per_example" else "seconds per epoch")
    ax.set_ylabel("union robust accuracy (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _svg(fig, "cost-vs-union")
