"""Headless Chromium driven through its DevTools protocol (the live page's tests and
bench/bench_stream.py --page): open a URL, evaluate JavaScript, wait for a state, screenshot.

    with HeadlessPage(url, profile_dir) as page:
        state = page.wait_for("window.liveState", lambda s: s.get("done") or s.get("error"), timeout=120)
        png = page.screenshot()
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class HeadlessPage:
    def __init__(self, url: str, profile: str, *, size: tuple[int, int] = (900, 760)):
        self.url, self.profile, self.size = url, profile, size
        self.proc = None
        self.cdp = None
        self._ids = itertools.count(1)

    def __enter__(self) -> HeadlessPage:
        from websockets.sync.client import connect

        browser = chromium()
        if browser is None:
            raise RuntimeError("chromium is not installed (apt-get install chromium)")
        self.proc = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
             "--autoplay-policy=no-user-gesture-required", f"--window-size={self.size[0]},{self.size[1]}", self.url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self.cdp = connect(self._page_socket(), max_size=None, open_timeout=30)
        except BaseException:
            self.close()
            raise
        return self

    def _page_socket(self, timeout: float = 60.0) -> str:
        import httpx

        deadline = time.time() + timeout
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
        self.cdp.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            reply = json.loads(self.cdp.recv(timeout=60))
            if reply.get("id") == ident:
                return reply["result"]

    def evaluate(self, expression: str):
        """The JSON value of ``expression`` in the page (None when undefined)."""
        value = self.call("Runtime.evaluate", expression=f"JSON.stringify({expression})")
        text = value["result"].get("value")
        return None if text is None else json.loads(text)

    def wait_for(self, expression: str, done, timeout: float = 240.0, poll: float = 0.5):
        """Evaluate ``expression`` until ``done(value)`` or the timeout; returns the last value."""
        deadline = time.time() + timeout
        value = None
        while time.time() < deadline:
            value = self.evaluate(expression)
            if value is not None and done(value):
                break
            time.sleep(poll)
        return value

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        if self.cdp is not None:
            self.cdp.close()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)

    def __exit__(self, *exc):
        self.close()
