"""The report in a real browser: headless Chromium opens report/index.html, the page renders
(its title, its first section), every image loads at its PNG's size, nothing is logged as an
error, and a screenshot is saved next to the report (report/screenshot.png).

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON
messages ending in NUL, read by Chromium on fd 3 and written on fd 4): no driver, no port and
no client library. `make test` installs Debian's chromium when run as root; without a browser
these tests skip, saying so.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hpsearch.analysis import load_run, write_report
from hpsearch.analysis.report import ANSWER_TITLE

# (the Makefile's `browser` step looks for the same names before it installs chromium)
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",  # root, and containers without user namespaces
    "--disable-gpu",
    "--disable-dev-shm-usage",  # a container's /dev/shm is small
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",  # the tests run offline
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
)
WIDTH, HEIGHT = 1280, 900
# Moves the two pipe ends onto fds 3 and 4, then becomes Chromium (no preexec_fn: pytest's
# process may have threads, Ray's among them).
LAUNCH = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
    "os.execv(sys.argv[3], sys.argv[3:])"
)
# What the page shows, once every image has decoded (or failed to).
INSPECT = """
Promise.all([...document.images].map(i => i.decode().catch(() => null))).then(() => ({
  title: document.title,
  h1: document.querySelector('h1')?.textContent ?? null,
  first_section: document.querySelector('section')?.id ?? null,
  first_h2: document.querySelector('section h2')?.textContent ?? null,
  images: [...document.images].map(i => ({
    alt: i.alt, src: i.src.slice(0, 40), complete: i.complete, width: i.naturalWidth
  })),
  height: document.documentElement.scrollHeight,
}))
"""


def find_browser() -> str | None:
    """$CHROMIUM, else the first of BROWSERS on PATH."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


class Browser:
    """One headless Chromium; `open(path)` loads a page in a fresh tab and returns what it
    shows, the errors it logged and its screenshot."""

    def __init__(self, exe: str, profile: Path, log: Path) -> None:
        cmd_read, self._cmd = os.pipe()  # we write commands, Chromium reads fd 3
        self._events, evt_write = os.pipe()  # Chromium writes fd 4, we read
        # above 4, so that moving them onto 3 and 4 cannot overwrite one another
        child = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (cmd_read, evt_write)]
        for fd in (cmd_read, evt_write):
            os.close(fd)
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", LAUNCH, *map(str, child), exe, *FLAGS]
                + [f"--user-data-dir={profile}", "about:blank"],
                pass_fds=child,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        for fd in child:
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._events], [], [], max(left, 0))
            if not ready:
                raise TimeoutError(f"Chromium did not answer; its log: {self.log.read_text()}")
            chunk = os.read(self._events, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited; its log: {self.log.read_text()}")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60) -> dict[str, Any]:  # fmt: skip
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._cmd, data) :]
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float = 60) -> None:
        seen = lambda e: e.get("method") == method and e.get("sessionId") == session  # noqa: E731
        deadline = time.monotonic() + timeout
        while not any(seen(e) for e in self.events):
            self.events.append(self._read(deadline))

    def open(self, path: Path) -> tuple[dict[str, Any], list[str], bytes]:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=session)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        self.call("Emulation.setScrollbarsHidden", {"hidden": True}, session)  # full width
        start = len(self.events)
        self.call("Page.navigate", {"url": path.resolve().as_uri()}, session)
        self.wait_for("Page.loadEventFired", session)
        shown = self.call(
            "Runtime.evaluate",
            {"expression": INSPECT, "awaitPromise": True, "returnByValue": True},
            session,
        )
        if "exceptionDetails" in shown:
            raise RuntimeError(f"inspecting the page failed: {shown['exceptionDetails']}")
        size = self.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.call(
            "Page.captureScreenshot",
            {"format": "png", "clip": clip, "captureBeyondViewport": True},
            session,
        )
        errors = page_errors([e for e in self.events[start:] if e.get("sessionId") == session])
        self.call("Target.closeTarget", {"targetId": target})
        return shown["result"]["value"], errors, base64.b64decode(shot["data"])

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        finally:
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            os.close(self._cmd)
            os.close(self._events)


def page_errors(events: list[dict[str, Any]]) -> list[str]:
    """Console errors, uncaught exceptions and failed loads among a page's DevTools events."""
    errors = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
            errors.append(f"console.{p['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = p["exceptionDetails"]
            errors.append(f"uncaught: {details.get('exception', {}).get('description', details)}")
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            entry = p["entry"]
            errors.append(f"log ({entry['source']}): {entry['text']} {entry.get('url', '')}")
        elif method == "Network.loadingFailed" and not p.get("canceled"):
            errors.append(f"load failed: {p.get('errorText')} ({p.get('type')})")
    return errors


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = find_browser()
    if exe is None:
        looked = (
            f"$CHROMIUM={os.environ['CHROMIUM']} is not found"
            if os.environ.get("CHROMIUM")
            else f"none of {', '.join(BROWSERS)} is on PATH"
        )
        pytest.skip(
            f"no Chromium to open the report in: {looked}; install Debian's: apt-get install "
            "chromium (`make test` does this itself when run as root)"
        )
    root = tmp_path_factory.mktemp("chromium")
    b = Browser(exe, root / "profile", root / "chromium.log")
    yield b
    b.close()


def test_the_report_renders_in_chromium_with_every_image_and_no_error(browser, make_run_dir):
    run = make_run_dir("browser-run")
    result = write_report(run, window=10)
    assert result.index_html == run / "report" / "index.html" and result.plots

    shown, errors, shot = browser.open(result.index_html)

    assert errors == []
    name = load_run(run).name
    assert shown["title"] == shown["h1"] == f"hpsearch report: {name}"
    assert (shown["first_section"], shown["first_h2"]) == ("answer", ANSWER_TITLE)
    images = {i["alt"]: i for i in shown["images"]}
    assert set(images) == set(result.plots) and len(shown["images"]) == len(result.plots)
    for title, png in result.plots.items():
        img = images[title]
        assert img["complete"] and img["width"] > 0, img
        assert img["width"] == png_size(png.read_bytes())[0], title  # the embedded PNG itself

    screenshot = result.out_dir / "screenshot.png"
    screenshot.write_bytes(shot)
    width, height = png_size(shot)
    assert width == WIDTH and height >= shown["height"] > HEIGHT  # the whole page, not a screen
    from PIL import Image

    with Image.open(screenshot) as im:  # something drawn, not a blank page
        low, high = zip(*im.convert("RGB").getextrema(), strict=True)
        assert min(low) < 64 and max(high) > 192


def test_the_check_catches_a_broken_page(browser, tmp_path):
    """The same check on a page with a missing image, a console error and an uncaught
    exception: each is reported, so a broken report cannot pass."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!doctype html><html><head><title>broken</title></head><body><h1>broken</h1>"
        "<img alt='missing' src='missing.png'>"
        "<script>console.error('boom'); throw new Error('uncaught here');</script>"
        "</body></html>"
    )
    shown, errors, _ = browser.open(page)
    (img,) = shown["images"]
    assert img["width"] == 0  # what the report test's image check rejects
    text = "\n".join(errors)
    assert "console.error: boom" in text
    assert "uncaught here" in text
    assert "ERR_FILE_NOT_FOUND" in text, errors
