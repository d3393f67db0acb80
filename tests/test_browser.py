"""report.html in a real headless Chromium (Debian's ``chromium`` package): it loads with no console
error, no failed resource and no exception, every image decodes, and every plot is visibly drawn
(pixel variance of its screenshot region).

Chromium is driven over the DevTools protocol on ``--remote-debugging-pipe`` (NUL-separated JSON
on file descriptors 3 and 4), so the test needs only the standard library. It is skipped, with the
reason, only when no Chromium binary is installed (``apt-get install -y chromium``).
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest
import torch
from conftest import tiny_mlp

import metaat.data as datasets
from metaat.eval import CheckConfig, UnseenConfig, evaluate
from metaat.eval.compare import leaderboard
from metaat.eval.output import write_leaderboard, write_reports
from metaat.eval.report import build_report

CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found; install it with: apt-get install -y chromium"),
]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--enable-logging=stderr",
    "--v=0",
    "--remote-debugging-pipe",
]
TIMEOUT = 60.0


class Chromium:
    """A headless Chromium with one page, driven over the DevTools pipe."""

    def __init__(self, binary: str, profile: Path, log: Path) -> None:
        to_r, self._to = os.pipe()  # we write commands; Chromium reads them on fd 3
        self._from, from_w = os.pipe()  # Chromium writes replies and events on fd 4
        # Park the child's ends above 10 so that moving them onto 3 and 4 cannot clobber each other.
        child_r, child_w = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)
        os.close(to_r)
        os.close(from_w)

        def onto_3_and_4() -> None:
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            preexec_fn=onto_3_and_4,
            pass_fds=(3, 4),  # noqa: PLW1509 (single-threaded test process)
        )
        os.close(child_r)
        os.close(child_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise TimeoutError("Chromium did not answer over the DevTools pipe")
            ready, _, _ = select.select([self._from], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self._from, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)  # type: ignore[no-any-return]

    def send(self, method: str, params: dict[str, Any] | None = None, session: bool = False) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})  # type: ignore[no-any-return]
            self.events.append(reply)

    def wait_for(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read_message(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def page(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.send(method, params, session=True)

    def evaluate(self, expression: str) -> Any:
        result = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result["result"].get("value")

    def open(self, url: str, width: int = 1200, height: int = 900) -> None:
        for domain in ("Page", "Runtime", "Log"):
            self.page(f"{domain}.enable")
        self.page(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        self.page("Page.navigate", {"url": url})
        self.wait_for("Page.loadEventFired")
        self.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")

    def screenshot(self, x: float, y: float, width: float, height: float) -> np.ndarray:
        clip = {"x": x, "y": y, "width": width, "height": height, "scale": 1}
        data = self.page("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True})
        return matplotlib.image.imread(io.BytesIO(base64.b64decode(data["data"])), format="png")

    def problems(self) -> list[str]:
        """Console errors/warnings, uncaught exceptions and failed loads seen so far."""
        out = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif method == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:300])
            elif method == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
                out.append(f"log ({p['entry'].get('source')}): {p['entry'].get('text')}")
        return out

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to)
        os.close(self._from)
        self._log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    assert CHROMIUM is not None
    root = tmp_path_factory.mktemp("chromium")
    chrome = Chromium(CHROMIUM, root / "profile", root / "chromium.log")
    try:
        yield chrome
    finally:
        chrome.close()


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real report: a tiny trained model, every section (unseen, checks, examples) filled in."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = tiny_mlp(image_size=16)
        xt, yt = datasets.load("synthetic", "test", n=24, noise=0.5, image_size=16)
        unseen = UnseenConfig(n=24, sweep_factors=(0.5, 1.0, 2.0), sweep_steps=3, universal_steps=2, severities=(1, 5))
        result = evaluate(
            net.eval(),
            xt,
            yt,
            ["linf:0.08", "l2:0.8"],
            suite="quick",
            unseen=unseen,
            checks=CheckConfig(n=24, steps=5, square_queries=50),
            examples=2,
        )
    finally:
        torch.set_num_threads(before)
    report = build_report(
        result,
        model={"name": "mlp", "source": "memory", "parameters": 0},
        dataset={"name": "synthetic", "split": "test"},
    )
    out = tmp_path_factory.mktemp("report")
    return write_reports(report, out)["html"]


def test_report_renders_without_errors_and_shows_its_plots(browser: Chromium, report_html: Path) -> None:
    browser.events.clear()
    browser.open(report_html.resolve().as_uri())
    assert browser.evaluate("document.title").startswith("metaat report")
    assert browser.problems() == []
    images = browser.evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
    assert images and all(images), "every example image decodes"
    boxes = browser.evaluate(
        "[...document.querySelectorAll('svg.figure')].map(e => { const r = e.getBoundingClientRect();"
        " return [r.left + scrollX, r.top + scrollY, r.width, r.height]; })"
    )
    assert len(boxes) == 2, "per-threat bars and accuracy against eps"
    for left, top, width, height in boxes:
        assert width > 200 and height > 100
        pixels = browser.screenshot(left, top, width, height)[..., :3]
        assert float(pixels.std()) > 0.05, "the plot region is not blank"
        assert float((pixels.mean(axis=2) < 0.9).mean()) > 0.01, "the plot draws visible marks"
    page_height = browser.evaluate("document.documentElement.scrollHeight")
    whole = browser.screenshot(0, 0, 1200, page_height)[..., :3]
    assert float(whole.std()) > 0.05
    assert browser.problems() == []


def test_leaderboard_renders_with_its_plot(browser: Chromium, report_html: Path, tmp_path: Path) -> None:
    base = json.loads(report_html.with_name("report.json").read_text())
    runs = []
    for name, union, passes in (("alpha", 0.3, 2.0), ("beta", 0.5, 6.0)):
        run = tmp_path / name
        run.mkdir()
        cost = {"passes_per_example": passes, "seconds_per_epoch": 10 * passes}
        (run / "report.json").write_text(json.dumps({**base, "run": str(run), "union": union, "cost": cost}))
        runs.append(run)
    page = write_leaderboard(leaderboard(runs), tmp_path)["html"]
    browser.events.clear()
    browser.open(page.resolve().as_uri())
    assert browser.problems() == []
    assert browser.evaluate("[...document.querySelectorAll('#leaderboard tr')].length") == 3
    box = browser.evaluate(
        "(() => { const r = document.querySelector('svg.figure').getBoundingClientRect();"
        " return [r.left + scrollX, r.top + scrollY, r.width, r.height]; })()"
    )
    pixels = browser.screenshot(*box)[..., :3]
    assert float(pixels.std()) > 0.05


def test_the_error_detector_itself_works(browser: Chromium, tmp_path: Path) -> None:
    """Control: a page with a console error, an exception and a missing image must be caught."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><body><img src="missing.png">'
        '<script>console.error("boom"); undefined_function();</script></body></html>'
    )
    browser.events.clear()
    browser.open(bad.resolve().as_uri())
    time.sleep(0.2)
    browser.evaluate("1")
    found = " | ".join(browser.problems())
    assert "boom" in found and "exception" in found and "ERR_FILE_NOT_FOUND" in found, found
