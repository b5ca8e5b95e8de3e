"""The persistent XLA compilation cache: a second run loads the programs it compiled before.

``enable_compile_cache(path)`` points JAX's persistent cache at ``path`` and caches every
compiled program (no minimum compile time or entry size), so a warm start compiles nothing it
compiled before. ``compile_cache_stats()`` counts this process's persistent-cache requests and
hits (from ``jax.monitoring`` events) for the time-to-first-frame report.
"""

from __future__ import annotations

import os
import threading

import jax

ENV_VAR = "JAX_COMPILATION_CACHE_DIR"
_stats = {"requests": 0, "hits": 0}
_lock = threading.Lock()
_listening = False


def default_compile_cache_dir() -> str:
    """``$JAX_COMPILATION_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/lipsync_jax/xla`` (~/.cache/...)."""
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lipsync_jax", "xla")


def _on_event(name: str, **_kwargs) -> None:
    with _lock:
        if name == "/jax/compilation_cache/compile_requests_use_cache":
            _stats["requests"] += 1
        elif name == "/jax/compilation_cache/cache_hits":
            _stats["hits"] += 1


def enable_compile_cache(path: str | None = None) -> str:
    """Use (and create) ``path`` (default ``default_compile_cache_dir()``) as the persistent cache."""
    global _listening
    path = os.path.abspath(os.path.expanduser(path or default_compile_cache_dir()))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    if not _listening:
        jax.monitoring.register_event_listener(_on_event)
        _listening = True
    return path


def disable_compile_cache() -> None:
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_enable_compilation_cache", False)


def compile_cache_stats() -> dict[str, int]:
    """{"requests": programs compiled through the persistent cache, "hits": loaded from it}."""
    with _lock:
        return dict(_stats)
