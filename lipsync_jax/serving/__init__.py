"""Serving: the one front door (``service.LipsyncService``) and the doors in front of it, each
parsing its input into the job description (pipeline/job.py) with shared code:

- ``infer_cli.py``: infer.py (one job, ``--batch``, ``--avatar_cache``, ``--list_faces``);
- ``batch.py``: many jobs from a CSV/JSONL table (``python -m lipsync_jax.batch``);
- ``webapp.py``: the Gradio web page and HTTP API (app.py);
- ``live_server.py``: live mode's WebSocket server and page;
- ``flags.py`` / ``cli.py``: the shared flags, stop signals and one-line errors.

Modules are imported directly (``from lipsync_jax.serving.service import LipsyncService``): this
package imports nothing at start, so a CLI can configure the GPU allocator before JAX loads.
"""
