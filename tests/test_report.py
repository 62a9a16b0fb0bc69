"""The report a person reads: report.html in a real headless Chromium (driven over the DevTools protocol), and the
console table at 80 and 200 columns, both from one real tiny run (digits, two devices, an accuracy-aware export).

Chromium comes from Debian (`apt-get install -y chromium`; .ci/run installs it). Without it the browser test
fails and says how to install it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time

import pytest
from rich.console import Console

import edgepress
from edgepress.console import name_prefix, print_report
from edgepress.plots import _pareto
from edgepress.report import Report
from edgepress.report_html import margin, render_tune
from edgepress.text import drop_text

TINY = {
    "name": "tiny_report",
    "model": {"zoo": "seed_cnn", "train_epochs": 1},
    "data": {"dataset": "digits", "train_size": 240, "test_size": 100, "calibration_samples": 20,
             "check_samples": 20},
    "steps": [{"type": "prune", "target_sparsity": 0.5, "fine_tune_epochs": 1}],
    "exports": [
        {"format": "tflite", "precision": "fp32"},
        {"format": "onnx", "precision": "fp32"},
        # A budget of 0: full int8 misses it unless no test sample changes, and then the search tries one layer.
        {"format": "tflite", "quantize": {"precision": "int8", "max_accuracy_drop": 0.0, "max_float_layers": 1}},
    ],
    "targets": ["x86-host", {"name": "x86-host", "label": "host-2t", "threads": 2}],
    "measure": {"runs": 8, "warmup": 2},
    "gates": {"max_accuracy_drop": "5%", "max_p50_ms": 50},
}
INSTALL = "apt-get update && apt-get install -y chromium"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Report:
    return edgepress.run(edgepress.Recipe.from_dict(TINY), tmp_path_factory.mktemp("run"))


# -- words ------------------------------------------------------------------------------------------------------

def test_a_gain_reads_as_a_gain():
    assert drop_text(0.005) == "0.50 pt"
    assert drop_text(-0.0028) == "+0.28 pt gain"
    assert drop_text(-1e-12) == "0.00 pt" and drop_text(None) == "-"


def test_gate_margins_say_to_spare_or_over():
    assert margin("max_p50_ms", {"limit": 2.0, "value": 1.5, "passed": True}) == "0.500 ms (25%) to spare"
    assert margin("max_bytes", {"limit": 1000, "value": 1500, "passed": False}) == "500 bytes (50%) over"
    assert margin("max_accuracy_drop", {"limit": 0.01, "value": -0.02, "passed": True}) == "3.00 pt to spare"


def test_pareto_front_keeps_what_nothing_beats():
    points = [(1.0, 90.0), (2.0, 95.0), (1.5, 89.0), (3.0, 94.0), (0.5, 80.0)]
    assert _pareto(points) == [(0.5, 80.0), (1.0, 90.0), (2.0, 95.0)]


def test_a_tune_report_has_a_plot_per_device_and_marks_the_recommendation():
    def row(trial, artifact, device, accuracy, p50, size, passed):
        return {"trial": trial, "artifact": artifact, "device": device, "format": "tflite", "precision": "int8",
                "accuracy": accuracy, "p50_ms": p50, "bytes": size, "passed": passed}

    fast, slow = row(3, "t003_int8.tflite", "x86-host", 0.97, 0.05, 9000, True), row(1, "t001_int8.tflite",
                                                                                         "rpi4", 0.90, 4.0, 9000, False)
    tune = {"budgets": {"max_accuracy_drop": 0.01, "max_p50_ms": 2.0, "max_bytes": None}, "duration_s": 12.0,
            "trials": [{"rows": [fast, row(2, "t002_fp32.tflite", "x86-host", 0.96, 0.2, 90000, True)]},
                       {"rows": [slow]}],
            "source": {"accuracy": 0.975, "rows": []}, "pareto": {"x86-host": [fast], "rpi4": [slow]},
            "best": {"x86-host": {**fast, "recipe": "best-x86-host.yaml"}, "rpi4": None},
            "closest": {"rpi4": {**slow, "misses": {"max_p50_ms": 1.0}}}}
    page = render_tune(tune)
    assert page.count("<svg") == 2 and "t003_int8.tflite ★" in page and "best-x86-host.yaml" in page
    assert "the closest: trial 1, t001_int8.tflite" in page


def test_common_prefix_stops_at_an_underscore():
    assert name_prefix(["demo_fp32.tflite", "demo_fp16.tflite"]) == "demo_"
    assert name_prefix(["demo_int8.tflite"]) == "demo_"
    assert name_prefix(["a_fp32.onnx", "b_fp32.onnx"]) == ""


# -- the console table ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("width", "terminal"), [(80, False), (80, True), (200, False), (200, True)])
def test_console_table_shows_every_name_whole(run, width, terminal):
    out = io.StringIO()
    print_report(run, Console(file=out, width=width, force_terminal=terminal, color_system="standard" if terminal
                              else None))
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())
    prefix = name_prefix([a["name"] for a in run.artifacts])
    assert prefix == "tiny_report_"
    lines = text.splitlines()
    for a in run.artifacts:
        short = a["name"][len(prefix):]
        rows = [line for line in lines if re.search(rf"(?<![\w.]){re.escape(short)}(?![\w.])", line)]
        assert len(rows) == 2, f"{short}: one row per device expected in\n{text}"  # two devices
    assert "…" not in text
    assert max(len(line) for line in lines) <= width, text
    if terminal:
        assert "\x1b[" in out.getvalue()  # colour on a terminal
    else:  # a CI log: no escape codes, no box drawing
        assert "\x1b[" not in out.getvalue() and not re.search("[\u2500-\u257f]", text)
    if width == 200:
        assert "Not shown at this width" not in text
        for column in ("format", "precision", "float layers", "bytes", "speed-up"):
            assert column in text
    else:
        assert "Not shown at this width:" in text  # what did not fit is named


# -- report.html in a real browser ------------------------------------------------------------------------------------

class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: fd 3 in, fd 4 out,
    JSON messages ending in NUL), so a test can load a page, run script in it, click and take screenshots."""

    def __init__(self, binary: str, profile) -> None:
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()

        def fds():  # the browser reads commands on fd 3 and writes answers on fd 4
            a, b = os.dup(to_browser), os.dup(from_browser)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
             f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=fds, pass_fds=(3, 4),
        )
        os.close(to_browser)
        os.close(from_browser)
        self._messages: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self._next = 0
        threading.Thread(target=self._pump, daemon=True).start()
        self.session = None

    def _pump(self) -> None:
        buffer = b""
        while chunk := os.read(self._read, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._messages.put(json.loads(message))

    def send(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        self._next += 1
        message = {"id": self._next, "method": method, "params": params or {}}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._messages.get(timeout=max(deadline - time.monotonic(), 0.01))
            if reply.get("id") == self._next:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, event: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for seen in self.events:
            if seen.get("method") == event:
                self.events.remove(seen)
                return seen
        while True:
            message = self._messages.get(timeout=max(deadline - time.monotonic(), 0.01))
            if message.get("method") == event:
                return message
            self.events.append(message)

    def open(self, url: str, width: int, height: int) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        self.send("Page.navigate", {"url": url})
        self.wait_for("Page.loadEventFired")

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) at the middle of the element, as a person would."""
        box = self.js(f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
                      "el.scrollIntoView({block: 'center'}); const r = el.getBoundingClientRect();"
                      "return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box["x"], "y": box["y"], "button": "left",
                                                   "clickCount": 1})

    def screenshot(self, path, full_page: bool = False) -> None:
        params = {"format": "png", "captureBeyondViewport": full_page}
        if full_page:
            size = self.js("({w: document.documentElement.scrollWidth, h: document.documentElement.scrollHeight})")
            params["clip"] = {"x": 0, "y": 0, "width": size["w"], "height": size["h"], "scale": 1}
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", params)["data"]))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (queue.Empty, AssertionError, OSError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._write)


@pytest.fixture
def browser(tmp_path):
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail(f"the report test needs a real browser and finds no chromium on PATH: install it with `{INSTALL}` "
                    "(.ci/run does)")
    chrome = Chromium(binary, tmp_path / "profile")
    yield chrome
    chrome.close()


def _rows(browser) -> list[dict]:
    return browser.js("Array.from(document.querySelectorAll('#artifact-table tbody tr')).map(r => ({"
                      "device: r.dataset.device, name: r.dataset.name,"
                      "p50: r.querySelector('td:nth-child(' + (1 + [...document.querySelectorAll("
                      "'#artifact-table thead th')].findIndex(h => h.dataset.key === 'p50-ms')) + ')')"
                      ".dataset.sort}))")


def test_report_html_in_a_real_browser(run, browser, tmp_path):
    # Alone in another folder: a self-contained page needs nothing beside it.
    page = tmp_path / "elsewhere" / "report.html"
    page.parent.mkdir()
    shutil.copy(run.run_dir / "report.html", page)
    browser.open(page.as_uri(), 1366, 768)  # a laptop screen
    browser.screenshot(tmp_path / "first-screen.png")
    browser.screenshot(tmp_path / "report.png", full_page=True)

    fetched = [m["params"]["request"]["url"] for m in browser.events if m.get("method") == "Network.requestWillBeSent"]
    assert [u for u in fetched if not u.startswith(("file:", "data:"))] == [], "the page fetched from the network"

    # The recommendation, and why, is on the first screen.
    cards = browser.js("Array.from(document.querySelectorAll('#summary .card')).map(c => ({text: c.innerText,"
                       "bottom: c.querySelector('p').getBoundingClientRect().bottom}))")
    assert len(cards) == 2
    for card, device in zip(cards, run.results["best"], strict=True):
        assert card["text"].startswith(device) and card["bottom"] <= 768
        best = run.results["best"][device]
        if best:
            assert best[len("tiny_report_"):] in card["text"] and "Fastest" in card["text"]
            assert "to spare" in card["text"]

    # Every plot drew: an SVG with shapes and a real size on the page; no image is broken.
    plots = browser.js("Array.from(document.querySelectorAll('svg.plot')).map(s => {"
                       "const r = s.getBoundingClientRect(); return {w: r.width, h: r.height,"
                       "shapes: s.querySelectorAll('path, use').length, label: s.getAttribute('aria-label')}})")
    # Per device: accuracy, size and latency against p50, and where the time goes; then steps, sensitivity.
    expected = 4 * len(run.results["devices"]) + 1 + len(run.results["quantize"])
    assert len(plots) == expected, plots
    assert sum("time per op type" in p["label"] for p in plots) == len(run.results["devices"])
    assert all(p["w"] > 300 and p["h"] > 100 and p["shapes"] > 20 for p in plots), plots
    assert any("sensitivity" in p["label"] for p in plots)
    assert browser.js("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length") == 0

    # One row per artifact and device; every accuracy-aware try is a row, with its float layers.
    rows = _rows(browser)
    assert sorted((r["device"], r["name"]) for r in rows) == sorted((a["device"], a["name"]) for a in run.artifacts)
    trials = [t for q in run.results["quantize"] for t in q["trials"]]
    assert len([a for a in run.artifacts if a.get("accuracy_aware")]) == len(trials) * len(run.results["devices"])
    cells = browser.js("(() => { const i = [...document.querySelectorAll('#artifact-table thead th')]"
                       ".findIndex(h => h.dataset.key === 'float-layers');"
                       "return Array.from(document.querySelectorAll('#artifact-table tbody tr')).map(r => "
                       "[r.dataset.name, r.cells[i].innerText]); })()")
    for trial in trials:
        layers = ", ".join(row["layer"] for row in trial["float_layers"]) or "none"
        assert [text for name, text in cells if name == trial["artifact"]] == [layers] * len(run.results["devices"])

    # Sorting: a real click on the p50 header sorts ascending; a second click, descending.
    browser.click("#artifact-table th[data-key='p50-ms']")
    p50s = [float(r["p50"]) for r in _rows(browser)]
    assert p50s == sorted(p50s)
    assert browser.js("document.querySelector(\"th[data-key='p50-ms']\").getAttribute('aria-sort')") == "ascending"
    browser.click("#artifact-table th[data-key='p50-ms']")
    assert [float(r["p50"]) for r in _rows(browser)] == sorted(p50s, reverse=True)
    browser.screenshot(tmp_path / "sorted.png")

    # The words the table uses are defined on the page itself.
    legend = browser.js("document.querySelector('#legend').innerText")
    for word in ("agreement", "drop", "speed-up vs fp32", "+0.28 pt gain"):
        assert word in legend

    # Printable: the browser lays it out as PDF pages.
    pdf = base64.b64decode(browser.send("Page.printToPDF", {"printBackground": False})["data"])
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf)) >= 2
    (tmp_path / "report.pdf").write_bytes(pdf)
    keep = os.environ.get("EDGEPRESS_KEEP_SCREENSHOTS")
    if keep:  # for a person to look at: EDGEPRESS_KEEP_SCREENSHOTS=DIR pytest tests/test_report.py
        for name in ("first-screen.png", "report.png", "sorted.png", "report.pdf"):
            shutil.copy(tmp_path / name, os.path.join(keep, name))
