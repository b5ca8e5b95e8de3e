"""The persistent XLA compilation cache, and counting what this process compiles.

``enable_compile_cache(path)`` points JAX's persistent cache at ``path`` and caches every
compiled program (no minimum compile time or entry size), so a warm start compiles nothing it
compiled before. ``CompileMonitor`` counts XLA compilations (and their seconds) and
persistent-cache requests and hits from ``jax.monitoring`` events while it is open: a service
keeps one for its whole life (the web app's ``/stats``, "this request compiled nothing"), a CLI
run for its time-to-first-frame report.
"""

from __future__ import annotations

import os
import threading

import jax

ENV_VAR = "JAX_COMPILATION_CACHE_DIR"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_REQUEST_EVENT = "/jax/compilation_cache/compile_requests_use_cache"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


def default_compile_cache_dir() -> str:
    """``$JAX_COMPILATION_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/lipsync_jax/xla`` (~/.cache/...)."""
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lipsync_jax", "xla")


def enable_compile_cache(path: str | None = None) -> str:
    """Use (and create) ``path`` (default ``default_compile_cache_dir()``) as the persistent cache."""
    path = os.path.abspath(os.path.expanduser(path or default_compile_cache_dir()))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path


def disable_compile_cache() -> None:
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_enable_compilation_cache", False)


def configure_compile_cache(path: str | None) -> str | None:
    """``RunOptions.compile_cache``: None -> the default folder, "" -> off. Returns the folder used."""
    if path == "":
        disable_compile_cache()
        return None
    return enable_compile_cache(path)


class CompileMonitor:
    """XLA compilations and persistent-cache hits in this process since it was opened.

    ``compiles``: backend compilations (a program loaded from the persistent cache is not one);
    ``compile_seconds``; ``cache_requests`` / ``cache_hits``. ``close()`` stops counting."""

    def __init__(self):
        self._lock = threading.Lock()
        self.compiles = 0
        self.compile_seconds = 0.0
        self.cache_requests = 0
        self.cache_hits = 0
        self._open = True
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        jax.monitoring.register_event_listener(self._on_event)

    def _on_duration(self, name: str, seconds: float, **_kwargs) -> None:
        if name == COMPILE_EVENT:
            with self._lock:
                self.compiles += 1
                self.compile_seconds += float(seconds)

    def _on_event(self, name: str, **_kwargs) -> None:
        with self._lock:
            if name == CACHE_REQUEST_EVENT:
                self.cache_requests += 1
            elif name == CACHE_HIT_EVENT:
                self.cache_hits += 1

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {"compiles": self.compiles, "compile_seconds": self.compile_seconds,
                    "cache_requests": self.cache_requests, "cache_hits": self.cache_hits}

    def close(self) -> None:
        if self._open:
            self._open = False
            jax.monitoring.unregister_event_duration_listener(self._on_duration)
            jax.monitoring.unregister_event_listener(self._on_event)
