"""How JAX may use GPU memory, set before JAX's GPU backend starts (imports nothing heavy).

JAX's default on a GPU is to PREALLOCATE 75% of the card's memory at the first operation, which
surprises anyone sharing the card and hides what the program really needs. ``infer.py`` and
``app.py`` (and the console scripts) call ``configure_gpu_memory()`` at startup, before any device is
used (XLA reads these variables when its GPU backend starts, not when ``jax`` is imported): unless the
user chose otherwise (any of ``XLA_PYTHON_CLIENT_PREALLOCATE``, ``XLA_PYTHON_CLIENT_MEM_FRACTION``
or ``XLA_PYTHON_CLIENT_ALLOCATOR`` already set), it sets ``XLA_PYTHON_CLIENT_PREALLOCATE=false``:
the allocator grows on demand (BFC, freed blocks are reused, the memory stays with the process)
up to the card's size. To reserve a fixed share instead, set e.g.
``XLA_PYTHON_CLIENT_MEM_FRACTION=0.5`` yourself; ``--max_vram`` (pipeline/memory.py) chooses the
program's settings to fit a budget either way.
"""

from __future__ import annotations

import os

USER_SETTINGS = ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_ALLOCATOR")


def configure_gpu_memory(environ=None) -> dict[str, str]:
    """Set ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` unless the user set any allocator variable;
    returns what it set. Has no effect on a JAX backend that is already running."""
    environ = os.environ if environ is None else environ
    if any(name in environ for name in USER_SETTINGS):
        return {}
    environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    return {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}

