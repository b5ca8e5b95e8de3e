"""What the terminal shows: our warnings and errors, not the libraries' start-up chatter.

    from lipsync_jax.quiet import configure_terminal
    configure_terminal(verbose=FLAGS.verbose)   # first thing in a CLI's main, before JAX starts

Silenced (each by the library's own control where it has one):

- JAX's "Unable to initialize backend 'tpu': ... libtpu.so" (an INFO record of the logger
  ``jax._src.xla_bridge``, shown because absl's ``app.run`` puts Python logging at INFO),
  orbax's INFO records (logger ``absl``) and Apache Beam's (``apache_beam``: a line per type hint
  and stage): these loggers are set to WARNING, so their warnings (e.g. "a GPU is present but no
  CUDA jaxlib") still show.
- Apache Beam's warnings on the root logger that say nothing to act on (``LIBRARY_NOISE``:
  "apitools not found" at import when the GCP extras are absent, and RunInference's "Resource
  module is not available" once per bundle when torch is absent): a filter on the root logger
  (``drop_library_noise()``; Beam worker processes install it themselves).
- XLA's C++ INFO lines: ``TF_CPP_MIN_LOG_LEVEL=1`` (read by jaxlib when its backend starts; set
  with ``setdefault``, so a user's own value wins; warnings and errors still show).
- MediaPipe's C++ lines (TFLite's "Created TensorFlow Lite XNNPACK delegate for CPU", absl's
  "All log messages before absl::InitializeLog() ...", ``inference_feedback_manager`` and
  ``landmark_projection_calculator`` warnings). MediaPipe 0.10.21 logs through a statically
  linked absl log that no environment variable or Python API reaches (GLOG_minloglevel,
  TF_CPP_MIN_LOG_LEVEL and ABSL_MIN_LOG_LEVEL change nothing; its module exports only
  PyInit), and it writes them while a graph starts and first finds a face. So
  ``native_log_filter()`` is entered around exactly those calls (face/landmarks.py): while it
  is active, file descriptor 2 goes through a pipe whose reader drops lines matching
  ``NATIVE_NOISE`` and passes everything else on unchanged.

``configure_terminal(verbose=True)`` sets none of this and turns the MediaPipe filter off.
Without any call (library use, tests) only the MediaPipe filter is on.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator

QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "1"}
QUIET_LOGGERS = ("jax._src.xla_bridge", "absl", "apache_beam", "httpx")  # httpx: the web app's per-request lines
# Root-logger warnings of a library that we drop (message prefixes).
LIBRARY_NOISE = ("apitools not found, and bigquery client libraries are not available",
                 "Resource module is not available for current platform")

# Lines a third-party C++ library writes straight to fd 2 (see the module docstring).
NATIVE_NOISE = re.compile(
    rb"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.[^\n]*\n?"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR[^\n]*\n?"
    rb"|[IW]\d{4} [\d:.]+ +\d+ (?:inference_feedback_manager|landmark_projection_calculator)\.cc:\d+\][^\n]*\n?")
# A partial line that may still become one of them (held until its end arrives).
_NOISE_START = re.compile(rb"(?:INFO: |WARNING: |[IW]\d{4} )")

_state = {"native_filter": True}


def configure_terminal(verbose: bool = False, environ=None) -> dict[str, str]:
    """Quiet the libraries (see the module docstring), or with ``verbose`` leave them as they
    are. Returns the environment variables it set. Call it before JAX's backend starts."""
    environ = os.environ if environ is None else environ
    _state["native_filter"] = not verbose
    level = logging.NOTSET if verbose else logging.WARNING
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(level)
    if verbose:
        for noise in [f for f in logging.getLogger().filters if isinstance(f, _LibraryNoise)]:
            logging.getLogger().removeFilter(noise)
        return {}
    drop_library_noise()
    added = {k: v for k, v in QUIET_ENV.items() if k not in environ}
    environ.update(added)
    return added


class _LibraryNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIBRARY_NOISE)


def drop_library_noise() -> None:
    """Drop the ``LIBRARY_NOISE`` warnings from the root logger (idempotent)."""
    root = logging.getLogger()
    if not any(isinstance(f, _LibraryNoise) for f in root.filters):
        root.addFilter(_LibraryNoise())


class _Fd2Filter:
    """fd 2 -> pipe -> a reader thread -> the original stderr minus ``NATIVE_NOISE`` lines.

    Installed while at least one ``native_log_filter()`` is active (any thread). The reader
    and the pipe stay for the life of the process: a child process started meanwhile keeps
    writing into the pipe, and its lines still reach the terminal."""

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._reader: threading.Thread | None = None
        self._pipe_write = -1
        self._original = -1  # a copy of the real stderr
        self._synced = threading.Condition()
        self._marks = 0

    def _start(self) -> None:
        read_end, self._pipe_write = os.pipe()
        self._original = os.dup(2)
        self._reader = threading.Thread(target=self._forward, args=(read_end,), name="fd2-filter", daemon=True)
        self._reader.start()
        atexit.register(self._at_exit)

    def _forward(self, read_end: int) -> None:
        pending = b""
        while True:
            try:
                data = os.read(read_end, 65536)
            except OSError:
                return
            if not data:
                return
            pending += data
            while True:
                mark = pending.find(b"\0fd2-sync\0")
                if mark < 0:
                    break
                self._write(NATIVE_NOISE.sub(b"", pending[:mark]))
                pending = pending[mark + len(b"\0fd2-sync\0"):]
                with self._synced:
                    self._marks += 1
                    self._synced.notify_all()
            cut = len(pending)
            start = _NOISE_START.search(pending[pending.rfind(b"\n") + 1:])
            if start:  # hold a partial line that may become noise
                cut = pending.rfind(b"\n") + 1 + start.start()
            kept, pending = NATIVE_NOISE.sub(b"", pending[:cut]), pending[cut:]
            self._write(kept)

    def _write(self, data: bytes) -> None:
        while data:
            data = data[os.write(self._original, data):]

    def acquire(self) -> None:
        with self._lock:
            if self._depth == 0:
                if self._reader is None:
                    self._start()
                sys.stderr.flush()
                os.dup2(self._pipe_write, 2)
            self._depth += 1

    def release(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                self._restore()

    def _at_exit(self) -> None:
        with self._lock:
            if self._depth > 0:
                self._depth = 0
                self._restore()

    def _restore(self) -> None:
        """fd 2 back to the real stderr, after everything written into the pipe so far is out."""
        if self._original < 0:
            return
        sys.stderr.flush()
        os.dup2(self._original, 2)
        with self._synced:
            target = self._marks + 1
            os.write(self._pipe_write, b"\0fd2-sync\0")
            self._synced.wait_for(lambda: self._marks >= target, timeout=2.0)


_FD2 = _Fd2Filter()


@contextlib.contextmanager
def native_log_filter() -> Iterator[None]:
    """Drop ``NATIVE_NOISE`` lines written to fd 2 inside this block (any thread); a no-op after
    ``configure_terminal(verbose=True)``."""
    if not _state["native_filter"]:
        yield
        return
    _FD2.acquire()
    try:
        yield
    finally:
        _FD2.release()
