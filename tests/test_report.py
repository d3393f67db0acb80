"""Reports: report.json / report.md / report.html rendered from one dict, parsed back with no drift;
flags shown; cost read from the run folder; the leaderboard of ``metaat compare``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import metaat.data as datasets
import metaat.models as models
from metaat.eval import CheckConfig, UnseenConfig, evaluate
from metaat.eval.compare import leaderboard, load_report, render_leaderboard_markdown
from metaat.eval.output import write_leaderboard, write_reports
from metaat.eval.report import build_report, fmt_pct, headline_rows, read_cost, unseen_rows

THREATS = ["linf:0.08", "l2:0.8", "l1:6"]
SMALL_UNSEEN = UnseenConfig(n=24, sweep_factors=(0.5, 2.0), sweep_steps=3, universal_steps=2, severities=(1, 5))
SMALL_CHECKS = CheckConfig(n=24, steps=5, square_queries=50)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Quantised(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 4) / 4)


def trained_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    x, y = datasets.load("synthetic", "train", n=1500, noise=0.5, image_size=16)
    net = models.create("mlp", num_classes=10, in_channels=1, image_size=16, hidden=32)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(2):
        for i in range(0, len(y), 100):
            loss = nn.functional.cross_entropy(net(x[i : i + 100]), y[i : i + 100])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def make_run(root: Path, name: str, passes: float, seconds: list[float]) -> Path:
    """A run folder shaped like the trainer's: config.yaml, metrics.jsonl, summary.json."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        "data: synthetic\ndefense: pgd\nmodel: mlp\nthreats: [linf:0.1]\nepochs: 2\nseed: 7\n"
    )
    cost = {"passes_per_example": passes, "attack_seconds": 3.0, "update_seconds": 1.0, "forward_examples": 10}
    lines = [json.dumps({"epoch": i + 1, "cost": cost, "epoch_seconds": s}) for i, s in enumerate(seconds)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run / "summary.json").write_text(
        json.dumps({"status": "finished", "epochs_completed": len(seconds), "cost": cost})
    )
    return run


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One evaluated, deliberately masked model (so flags exist), reported into a run folder."""
    root = tmp_path_factory.mktemp("runs")
    run = make_run(root, "masked", passes=1.0, seconds=[10.0, 12.0])
    model = Quantised(trained_mlp())
    x, y = datasets.load("synthetic", "test", n=24, noise=0.5, image_size=16)
    result = evaluate(
        model, x, y, THREATS, suite="quick", union_only=True, unseen=SMALL_UNSEEN, checks=SMALL_CHECKS, examples=2
    )
    report = build_report(
        result,
        model={"name": "mlp", "source": str(run / "checkpoint"), "parameters": 9546},
        dataset={"name": "synthetic", "split": "test"},
        run_dir=run,
    )
    write_reports(report, run)
    return run


class Cells(HTMLParser):
    """Collects ``data-key`` cells (key → (data-value, text)), and counts svg / img / script tags."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, tuple[str | None, str]] = {}
        self.tags: dict[str, int] = {}
        self._key: str | None = None
        self._value: str | None = None
        self._text: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        a = dict(attrs)
        for ref in (a.get("src"), a.get("href")):
            if ref and not ref.startswith(("data:", "#")):
                self.external.append(ref)
        if tag == "td" and "data-key" in a:
            self._key, self._value, self._text = a["data-key"], a.get("data-value"), []

    def handle_data(self, data: str) -> None:
        if self._key is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._key is not None:
            self.cells[self._key] = (self._value, "".join(self._text))
            self._key = None


def md_rows(text: str) -> dict[str, list[str]]:
    """First cell → remaining cells, for every markdown table row."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|:") and not line.startswith("|-"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows.setdefault(cells[0], cells[1:])
            rows[" / ".join(cells[:2])] = cells[2:]
    return rows


def test_json_markdown_and_html_show_the_same_numbers(report_dir: Path) -> None:
    report = json.loads((report_dir / "report.json").read_text())
    assert report["format"] == "metaat.report"
    md = md_rows((report_dir / "report.md").read_text())
    html = Cells()
    html.feed((report_dir / "report.html").read_text())

    rows = headline_rows(report)
    assert [r["label"] for r in rows] == ["clean", *THREATS, "union (all threats)"]
    for r in rows:
        shown = fmt_pct(r["value"], r["upper"])
        assert md[r["label"]][0] == shown
        value, text = html.cells[r["key"]]
        assert text == shown and value is not None and float(value) == r["value"]
    assert md["clean"][0] == f"{100 * report['clean']:.2f}"
    assert md["union (all threats)"][0] == f"{100 * report['union']:.2f}"
    for threat in THREATS[1:]:
        assert md[threat][0].startswith("≤ "), "union-only per-threat numbers are marked as upper bounds"

    unseen = unseen_rows(report)
    assert len(unseen) == 3 * 2 + 1 + 3 * 2 + 1 + 3 + 1
    for r in unseen:
        value, text = html.cells[r["key"]]
        assert float(value or "nan") == r["value"] and text == fmt_pct(r["value"])
        assert md[f"{r['section']} / {r['label']}"][0] == fmt_pct(r["value"])
    assert set(html.cells) == {r["key"] for r in rows} | {r["key"] for r in unseen}


def test_report_is_a_model_card(report_dir: Path) -> None:
    report = load_report(report_dir)
    for key in (
        "model",
        "dataset",
        "threats",
        "clean",
        "robust",
        "union",
        "unseen",
        "checks",
        "protocol",
        "cost",
        "seeds",
        "hardware",
        "timings",
        "training",
    ):
        assert key in report, key
    assert report["dataset"] == {"name": "synthetic", "split": "test", "n": 24}
    assert report["seeds"] == {"evaluation": 0, "training": 7}
    assert report["training"]["defense"] == "pgd"
    assert report["hardware"]["pyautoattack"] == "0.2.0" and report["hardware"]["torch"] == torch.__version__
    assert report["hardware"]["cpu"] and "cpu_capability" in report["hardware"]  # float kernels differ by CPU
    assert report["cost"]["passes_per_example"] == 1.0 and report["cost"]["seconds_per_epoch"] == 11.0
    assert report["protocol"]["union_only"] is True and report["protocol"]["suite"] == "quick"
    assert report["union"] <= min(report["robust"].values())


def test_flags_are_shown_never_hidden(report_dir: Path) -> None:
    report = load_report(report_dir)
    flagged = report["flagged"]
    assert {"gradients"} <= {c["name"] for c in flagged}
    md = (report_dir / "report.md").read_text()
    html = (report_dir / "report.html").read_text()
    assert f"{len(flagged)} of {len(report['checks'])} gradient-masking checks FLAGGED" in md
    assert 'class="banner bad"' in html and "FLAGGED" in html
    for c in flagged:
        assert c["explanation"] in md
        assert c["explanation"].replace("'", "&#x27;") in html
    assert html.count('class="status-flagged"') == len(flagged)


def test_html_is_self_contained_with_figures(report_dir: Path) -> None:
    html = Cells()
    html.feed((report_dir / "report.html").read_text())
    assert html.external == [], "no network or file references"
    assert html.tags.get("script", 0) == 0
    assert html.tags["svg"] >= 2, "bars and accuracy-vs-eps figures"
    report = load_report(report_dir)
    assert html.tags["img"] == 3 * len(report["examples"]) > 0


def test_read_cost_handles_missing_and_partial_runs(tmp_path: Path) -> None:
    assert read_cost(None) is None and read_cost(tmp_path) is None
    (tmp_path / "metrics.jsonl").write_text(
        '{"epoch": 1, "epoch_seconds": 4.0, "cost": {"passes_per_example": 2}}\nnot json\n'
    )
    cost = read_cost(tmp_path)
    assert cost == {"passes_per_example": 2, "seconds_per_epoch": 4.0, "train_seconds": 4.0, "epochs": 1}


def test_leaderboard_sorts_by_union_and_keeps_cost(report_dir: Path, tmp_path: Path) -> None:
    base = load_report(report_dir)
    paths = []
    for name, union, passes in (("weak", 0.1, 1.0), ("strong", 0.6, 6.0), ("middle", 0.4, 2.0)):
        run = make_run(tmp_path, name, passes=passes, seconds=[5.0])
        (run / "report.json").write_text(json.dumps({**base, "run": str(run), "union": union, "cost": read_cost(run)}))
        paths.append(run)
    board = leaderboard(paths)
    assert [r["run"] for r in board["rows"]] == ["strong", "middle", "weak"]
    assert board["rows"][0]["passes_per_example"] == 6.0 and board["warnings"] == []
    md = render_leaderboard_markdown(board)
    lines = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [line.split(" | ")[1] for line in lines] == ["strong", "middle", "weak"]
    assert " | 60.00 | " in lines[0]
    out = write_leaderboard(board, tmp_path)
    cells = Cells()
    cells.feed(out["html"].read_text())
    assert cells.cells["strong/union"] == ("0.6", "60.00")
    assert cells.tags["svg"] == 1, "cost against union robustness"

    other = make_run(tmp_path, "other-data", passes=1.0, seconds=[1.0])
    (other / "report.json").write_text(json.dumps({**base, "run": str(other), "dataset": {"name": "mnist", "n": 24}}))
    assert any("different datasets" in w for w in leaderboard([*paths, other])["warnings"])

    # `metaat compare runs/*`: earlier leaderboard files are ignored, unevaluated runs skipped and listed.
    (tmp_path / "pending").mkdir()
    board = leaderboard([*paths, out["md"], out["html"], tmp_path / "pending"])
    assert [r["run"] for r in board["rows"]] == ["strong", "middle", "weak"]
    assert len(board["skipped"]) == 1 and "pending" in board["skipped"][0]


def test_compare_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no report.json in .*; run `metaat eval"):
        leaderboard([tmp_path])
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(ValueError, match="not a metaat report"):
        leaderboard([tmp_path])
    with pytest.raises(ValueError, match="at least one run"):
        leaderboard([])
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        leaderboard([tmp_path / "nowhere"])


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"union": "abc"}, "union must be a fraction in"),
        ({"clean": 1.5}, "clean must be a fraction in"),
        ({"robust": None}, "robust must map each threat"),
        ({"robust": {"linf:0.1": "high"}}, "robust must map each threat"),
        ({"threats": "linf:0.1"}, "threats must be a list"),
        ({"dataset": {"name": "fashion-mnist"}}, "dataset must name the data"),
        ({"protocol": []}, "protocol must be an object"),
    ],
)
def test_compare_refuses_a_damaged_report_with_its_reason(
    report_dir: Path, tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    damaged = {**load_report(report_dir), **change}
    (tmp_path / "report.json").write_text(json.dumps(damaged))
    with pytest.raises(ValueError, match=f"a damaged metaat report \\({problem}"):
        leaderboard([tmp_path])


def _walk(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)
    else:
        yield value


def test_report_json_is_plain_json(report_dir: Path) -> None:
    report = load_report(report_dir)
    assert all(v is None or isinstance(v, str | int | float | bool) for v in _walk(report))
