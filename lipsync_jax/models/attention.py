"""The one attention function every model calls, with selectable backends.

Backends:
  "xla"    ``jax.nn.dot_product_attention(implementation="xla")``: runs everywhere.
  "cudnn"  cuDNN flash attention (GPU only, bfloat16/float16, head dim <= 128).
  "auto"   cuDNN when on GPU with a half-precision dtype and a supported head size, else XLA.
  "naive"  explicit einsum/softmax in float32: the reference for tests.
  "chunked" XLA attention over blocks of ``CHUNK_QUERIES`` queries (``lax.map``): the logits of
           one block at a time, so memory ~ lq/block times less than "xla" for long sequences
           (the 64x64 latents of 512 px); same result. For platforms without cuDNN (--max_vram).
  "chunked:N" the same over blocks of N queries (e.g. "chunked:256": the 32x32 latents of
           256 px in 4 blocks); the memory planner (pipeline/memory.py) chooses N.
A TPU Pallas (splash) kernel can be added here later behind the same signature.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BACKENDS = ("auto", "xla", "cudnn", "naive", "chunked")
CHUNK_QUERIES = 1024  # queries per block of the "chunked" backend ("chunked:N": N)


def parse_backend(backend: str) -> tuple[str, int | None]:
    """(name, query block) of a backend string: "chunked:256" -> ("chunked", 256), "chunked" ->
    ("chunked", CHUNK_QUERIES), "xla" -> ("xla", None). Raises ValueError for unknown names."""
    name, _, block = str(backend).partition(":")
    if name not in BACKENDS or (block and name != "chunked"):
        raise ValueError(f"unknown attention backend {backend!r}; choose from {BACKENDS} or 'chunked:N'")
    if name != "chunked":
        return name, None
    try:
        size = int(block) if block else CHUNK_QUERIES
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"attention backend {backend!r}: the query block must be a positive integer")
    return name, size


def chunked_backend(block: int) -> str:
    """The backend string of XLA attention over blocks of ``block`` queries."""
    return "chunked" if int(block) == CHUNK_QUERIES else f"chunked:{int(block)}"


def _naive(q, k, v, bias, scale):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32)) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v.astype(jnp.float32)).astype(q.dtype)


def _chunked(q, k, v, bias, scale, block: int = CHUNK_QUERIES):
    b, lq, h, d = q.shape
    if bias is not None or lq <= block or lq % block:
        return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale, implementation="xla")
    blocks = jnp.moveaxis(q.reshape(b, lq // block, block, h, d), 1, 0)  # (n, b, block, h, d)
    out = jax.lax.map(lambda qb: jax.nn.dot_product_attention(qb, k, v, scale=scale, implementation="xla"), blocks)
    return jnp.moveaxis(out, 0, 1).reshape(b, lq, h, d)


def _cudnn_ok(q: jax.Array, k: jax.Array) -> bool:
    return (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
            and q.shape[-1] <= 128 and q.shape[-1] % 8 == 0 and q.shape[-1] == k.shape[-1])


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, bias: jax.Array | None = None,
                          scale: float | None = None, backend: str = "auto") -> jax.Array:
    """Multi-head attention core. q: (b, lq, h, d); k, v: (b, lk, h, d) -> (b, lq, h, d).

    ``bias`` (broadcastable to (b, h, lq, lk)) is added to the logits; ``scale`` defaults to
    1/sqrt(d). Softmax is computed in float32 by every backend.
    """
    backend, block = parse_backend(backend)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if backend == "naive":
        return _naive(q, k, v, bias, scale)
    if backend == "chunked":
        return _chunked(q, k, v, bias, scale, block)
    if backend == "auto":
        backend = "cudnn" if _cudnn_ok(q, k) and bias is None else "xla"
    return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale, implementation=backend)
