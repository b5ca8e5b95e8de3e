"""Headless Chromium driven through its DevTools protocol (no browser download: Debian's chromium),
for the web app's and the live page's tests and bench/bench_stream.py --page.

    with Browser(url, width=1280, height=900) as page:
        page.eval("document.title")
        page.upload("#input_video input[type=file]", "/path/clip.mp4")
        state = page.wait_for("window.liveState", 240, until=lambda s: s.get("done") or s.get("error"))
        png = page.screenshot()
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--remote-debugging-port=0", "--autoplay-policy=no-user-gesture-required"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def require_chromium() -> None:
    """Skip the calling test without a chromium binary; fail under CI (.ci/run installs it)."""
    import pytest

    if chromium() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing under CI (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")


class Browser:
    """One page of a headless Chromium with its own profile folder (``profile``, else a temporary
    one removed on exit)."""

    def __init__(self, url: str, *, width: int = 1280, height: int = 900, profile: str | None = None,
                 timeout: float = 60.0):
        self.url, self.width, self.height, self.timeout = url, width, height, timeout
        self.own_profile = profile is None
        self.profile = tempfile.mkdtemp(prefix="chromium_profile_") if profile is None else profile
        self.proc = None
        self.ws = None
        self._ids = itertools.count(1)

    def __enter__(self) -> Browser:
        from websockets.sync.client import connect

        binary = chromium()
        if binary is None:
            raise RuntimeError("chromium is not installed (apt-get install chromium)")
        os.makedirs(self.profile, exist_ok=True)
        self.proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                                      f"--window-size={self.width},{self.height}", self.url],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self.ws = connect(self._page_socket(), max_size=None, open_timeout=30)
            self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                      deviceScaleFactor=1, mobile=False)
            self.call("Runtime.enable")
            self.call("DOM.enable")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None
        if self.own_profile:
            shutil.rmtree(self.profile, ignore_errors=True)

    def _page_socket(self) -> str:
        import httpx

        deadline = time.time() + self.timeout
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        while time.time() < deadline:
            if os.path.exists(port_file):
                lines = open(port_file).read().split()
                if lines:
                    pages = [t for t in httpx.get(f"http://127.0.0.1:{lines[0]}/json/list").json()
                             if t["type"] == "page"]
                    if pages:
                        return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.2)
        raise AssertionError("chromium's DevTools endpoint did not appear")

    def call(self, method: str, **params) -> dict:
        ident = next(self._ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=self.timeout))
            if reply.get("id") == ident:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def eval(self, expression: str):
        """The JSON value of a JavaScript expression (``await`` allowed; None when undefined)."""
        result = self.call("Runtime.evaluate", expression=f"(async () => JSON.stringify(await ({expression})))()",
                           awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        value = result["result"].get("value")
        return None if value is None else json.loads(value)

    def wait_for(self, expression: str, timeout: float = 60.0, *, until=bool, poll: float = 0.2):
        """Evaluate ``expression`` until ``until(value)`` holds for a value that is not None; returns it."""
        deadline = time.time() + timeout
        value = None
        while time.time() < deadline:
            value = self.eval(expression)
            if value is not None and until(value):
                return value
            time.sleep(poll)
        raise AssertionError(f"timed out after {timeout} s waiting for {expression}; last value: {value!r}")

    def upload(self, selector: str, path: str) -> None:
        """Set a file input's file (as a user picking it) and fire its change event."""
        root = self.call("DOM.getDocument", depth=-1, pierce=True)["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        if not node:
            raise AssertionError(f"no element {selector}")
        self.call("DOM.setFileInputFiles", nodeId=node, files=[os.path.abspath(path)])

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
