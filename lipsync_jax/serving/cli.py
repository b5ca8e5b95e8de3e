"""What every command-line door does the same way: stop signals, one-line errors, exit codes.

- The command's body runs in a worker thread; the main thread only waits, so a stop signal is
  handled at once even while the body sits in a device call or an XLA compile (Python runs signal
  handlers in the main thread, between bytecodes).
- Stop: the first SIGTERM / Ctrl-C kills the registered child processes and deletes the registered
  temp paths (lipsync_jax/cleanup.py), calls the command's ``on_stop`` (e.g. the batch summary),
  prints one line and exits with 143 (SIGTERM) or 130 (Ctrl-C) within a second, abandoning the
  in-flight work (its result is discarded anyway); later signals are ignored so they cannot cut
  the clean-up short.
- Errors: our errors (and ``OSError`` / ``ValueError``) print their own message on one line;
  anything else prints its type and message and a hint to rerun with ``--traceback``; exit 1.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable

from lipsync_jax import cleanup

EXIT_ERROR = 1
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so every clean-up (temp files, ffmpeg) runs."""


def refuse_extra_arguments(argv: list[str]) -> None:
    """An absl ``main``'s leftover arguments (a typo'd flag value, a stray path): one line, exit 2."""
    if len(argv) > 1:
        print(f"error: unexpected arguments: {' '.join(argv[1:])}", file=sys.stderr)
        sys.exit(2)


def _on_stop_signal(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def install_stop_signals() -> None:
    """SIGTERM and Ctrl-C stop the run (see the module docstring); a background job that ignores
    Ctrl-C keeps ignoring it (the Unix convention)."""
    signal.signal(signal.SIGTERM, _on_stop_signal)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_stop_signal)


def is_known(error: BaseException) -> bool:
    return type(error).__module__.startswith(("lipsync_jax", "data_prep")) or isinstance(error, (OSError, ValueError))


def error_line(error: BaseException) -> str:
    """One line for a failed job: our errors carry their own message naming the file or value."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if is_known(error) else f"{type(error).__name__}: {text}"


def stop_code(stop: BaseException) -> tuple[str, int]:
    return ("SIGTERM", EXIT_SIGTERM) if isinstance(stop, Terminated) else ("Ctrl-C", EXIT_SIGINT)


def run_command(body: Callable[[], int | None], *, show_traceback: Callable[[], bool] = lambda: False,
                stopped_message: str = "stopped, temp files deleted, no output written",
                on_stop: Callable[[], None] | None = None) -> None:
    """Run a command's body (see the module docstring); never returns (``os._exit``: worker threads
    may sit in device calls or XLA compilations, which the interpreter's exit would wait on)."""
    outcome: dict = {}

    def target():
        try:
            outcome["code"] = body() or 0
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = error

    install_stop_signals()
    worker = threading.Thread(target=target, name="command", daemon=True)
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
    except (KeyboardInterrupt, Terminated) as stop:
        name, code = stop_code(stop)
        cleanup.release_all()
        if on_stop is not None:
            on_stop()
        print(f"interrupted ({name}): {stopped_message}", file=sys.stderr, flush=True)
        _exit(code)
    error = outcome.get("error")
    code = outcome.get("code", EXIT_ERROR)
    if isinstance(error, (KeyboardInterrupt, Terminated)):  # raised inside the body: the same stop
        cleanup.release_all()
        name, code = stop_code(error)
        print(f"interrupted ({name}): {stopped_message}", file=sys.stderr, flush=True)
    elif isinstance(error, SystemExit):
        code = error.code if isinstance(error.code, int) else EXIT_ERROR
    elif error is not None:
        if show_traceback():
            traceback.print_exception(error)
        message = error_line(error)
        hint = "" if is_known(error) else " (rerun with --traceback for details)"
        print(f"error: {message}{hint}", file=sys.stderr, flush=True)
        code = EXIT_ERROR
    _exit(code)


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))
