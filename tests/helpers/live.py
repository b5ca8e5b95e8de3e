"""Shared by the live server tests: a loopback uvicorn server in a thread, a WebSocket exchange."""

from __future__ import annotations

import json
import threading
import time

import numpy as np

from tests.helpers.net import free_port


class Server:
    """create_app(...) served by uvicorn in a thread on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        port = free_port()
        self.app, self.url, self.ws = app, f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    ws="websockets-sansio"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        assert self.server.started

    def status(self) -> dict:
        import httpx

        return httpx.get(self.url + "/status").json()

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


def exchange(url, messages, timeout=30.0):
    """Send ``messages`` (str / bytes), then read until the server closes: (text messages, number
    of frames, close code)."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    texts, frames = [], 0
    with connect(url, open_timeout=30) as ws:
        try:
            for message in messages:
                ws.send(message)
            deadline = time.time() + timeout
            while time.time() < deadline:
                reply = ws.recv(timeout=max(0.1, deadline - time.time()))
                if isinstance(reply, bytes):
                    frames += 1
                else:
                    texts.append(json.loads(reply))
        except ConnectionClosed:
            pass
        code = ws.close_code
    return texts, frames, code


def pcm(samples) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
