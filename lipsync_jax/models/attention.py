"""The one attention function every model calls, with selectable backends.

Backends (the ``attention_backend`` field of the UNet, Whisper and VideoMAE modules; the VAE and
SyncNet always use "auto"):
  "auto"    the fused kernel of the platform the program is compiled for, XLA where there is none:
            ``resolve_backend("auto", platform, dtype)`` = "cudnn" on GPU in bfloat16/float16,
            "pallas" on TPU, "xla" elsewhere (CPU; float32 on GPU). The platform is that of the
            devices of the mesh the program is traced under (``jax.sharding.use_abstract_mesh``,
            as ``lipsync_jax.sharding.with_activation_sharding`` does for the train step), else
            ``jax.default_backend()``; see ``target_platform``. A program compiled ahead of time
            for another platform without such a mesh is traced inside
            ``lipsync_jax.aot.compile.tracing_for(platform)`` (``jax.default_backend()`` answers
            that platform), or sets the backend itself:
            ``module.clone(attention_backend=resolve_backend("auto", "gpu", jnp.bfloat16))``.
            On TPU "auto" takes the Pallas kernel only where it can be placed: under a mesh
            context, or in a process with one device; a multi-chip program traced without a mesh
            (its batch split by ``jit`` shardings alone) gets XLA, because XLA cannot partition a
            Mosaic kernel ("Mosaic kernels cannot be automatically partitioned").
  "cudnn"   cuDNN flash attention (``jax.nn.dot_product_attention(implementation="cudnn")``,
            forward and backward; keeps no logits) for every call ``fused_supported`` admits,
            XLA for the others. GPU only.
  "pallas"  the Pallas TPU splash-attention kernel (``jax.experimental.pallas.ops.tpu.
            splash_attention``, forward and backward) for every call ``fused_supported`` admits,
            XLA for the others. On TPU; elsewhere only inside
            ``jax.experimental.pallas.tpu.force_tpu_interpret_mode()`` (the tests).
  "xla"     ``jax.nn.dot_product_attention(implementation="xla")``: runs everywhere; keeps the
            float32 logits (b x heads x lq x lk) for the backward pass.
  "naive"   explicit einsum/softmax in float32: the reference for tests.
  "chunked" XLA attention over blocks of ``CHUNK_QUERIES`` queries (``lax.map``): the logits of
            one block at a time, so memory ~ lq/block times less than "xla" for long sequences
            (the 64x64 latents of 512 px); same result. Inference only (its backward keeps every
            block's logits). For platforms without a fused kernel (--max_vram).
  "chunked:N" the same over blocks of N queries (e.g. "chunked:256": the 32x32 latents of
            256 px in 4 blocks); the memory planner (pipeline/memory.py) chooses N.

Which calls run fused (``fused_supported``; the others run on XLA, same result):
  both kernels: no bias, q/k/v of one head size, at least ``MIN_FUSED_QUERIES`` queries (the motion
            modules' attention over 16 frames stays on XLA: its logits are no larger than its
            inputs, and a kernel's 64-128-query tiles would be mostly padding).
  cuDNN:    bfloat16/float16; head size a multiple of 8 and at most 128 (cuDNN's backward on
            Ampere/Ada and JAX's check on any host without a Hopper GPU, which includes ahead-of-time
            compiles; LatentSync's 1280-channel levels, 8 heads of 160 over 64 or 256 tokens, stay
            on XLA); any sequence lengths (the 50 audio tokens of cross-attention included).
  Pallas:   both sequence lengths multiples of 128 (the kernel's tiles) and at least
            ``PALLAS_MIN_KEYS`` keys; any head size. With fewer keys XLA's logits (about 6 bytes per
            query-key pair in training) are smaller than the kernel's own per-query residuals (a
            128-lane float32 log-sum-exp and q/out padded to 128 lanes: about 2 KiB per query and
            head; deviceless v5p compiles of forward + backward, 16 x 8 heads x 4096 queries: 50
            keys 0.17 GiB on XLA vs 1.01 GiB fused, 200 keys 0.59 vs 1.02, 4096 keys 12.0 vs 1.25).
            So LatentSync's cross-attention (50 audio tokens) and its 1280-channel levels (256 or
            64 tokens) stay on XLA on TPU.
Under a mesh the Pallas kernel runs per device (``jax.shard_map``) on the batch split given by
the logical rule ``activation_batch`` (all mesh axes without rules), cut to what divides the batch.
Without a mesh, an explicit "pallas" program must be one device's.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from lipsync_jax.sharding import ACTIVATION_BATCH

BACKENDS = ("auto", "xla", "cudnn", "pallas", "naive", "chunked")
FUSED_BACKENDS = ("cudnn", "pallas")
CHUNK_QUERIES = 1024  # queries per block of the "chunked" backend ("chunked:N": N)
MIN_FUSED_QUERIES = 64  # shorter query sequences run on XLA with every backend
CUDNN_MAX_HEAD_DIM = 128
PALLAS_TILE = 128  # the splash kernel's query/key tile (TPU lanes); sequences are multiples of it
PALLAS_MIN_KEYS = 512  # fewer keys: XLA's logits are smaller than the kernel's residuals (see above)
PALLAS_BLOCKS = (512, 256, 128)  # query/key block sizes tried, largest first
HALF_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


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


def resolve_backend(backend: str, platform: str, dtype) -> str:
    """The backend "auto" stands for on ``platform`` ("gpu"/"cuda", "tpu", "cpu", "rocm", ...) with
    compute ``dtype``: "cudnn" on CUDA GPUs in bfloat16/float16, "pallas" on TPU, else "xla".
    Any other valid backend string is returned unchanged."""
    name, _ = parse_backend(backend)
    if name != "auto":
        return backend
    platform = str(platform).lower()
    if platform in ("gpu", "cuda") and jnp.dtype(dtype) in HALF_DTYPES:
        return "cudnn"
    if platform == "tpu":
        return "pallas"
    return "xla"


def target_platform() -> str:
    """The platform the program being traced is for: that of the devices of the current mesh
    context (``jax.sharding.use_abstract_mesh`` / ``use_mesh``), else ``jax.default_backend()``."""
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.abstract_device is not None:
        return mesh.abstract_device.platform
    return jax.default_backend()


def fused_supported(backend: str, q_shape, k_shape, dtype, *, has_bias: bool = False) -> bool:
    """Whether the fused kernel of ``backend`` ("cudnn" or "pallas") takes an attention call with
    q of ``q_shape`` (b, lq, heads, d) and k, v of ``k_shape`` (b, lk, heads, d) in ``dtype``; the
    module docstring gives the rules. False for the other backends."""
    _, lq, _, head_dim = q_shape
    if has_bias or head_dim != k_shape[-1] or lq < MIN_FUSED_QUERIES:
        return False
    if backend == "cudnn":
        return jnp.dtype(dtype) in HALF_DTYPES and head_dim % 8 == 0 and head_dim <= CUDNN_MAX_HEAD_DIM
    if backend == "pallas":
        lk = k_shape[1]
        return lq % PALLAS_TILE == 0 and lk % PALLAS_TILE == 0 and lk >= PALLAS_MIN_KEYS
    return False


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


def _block(length: int) -> int:
    return next(b for b in PALLAS_BLOCKS if length % b == 0)


@functools.lru_cache(maxsize=64)
def _splash_kernel(heads: int, q_len: int, kv_len: int):
    """The splash-attention kernel for (heads, q_len, d) x (heads, kv_len, d) without a mask;
    "heads" here are batch x heads (one grid axis; no ``vmap``, which Pallas' TPU interpret mode
    cannot run). Built once per shape (its mask tables are numpy work) and kept between traces."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    head_mask = masks.FullMask((q_len, kv_len))
    bq, bkv = _block(q_len), _block(kv_len)
    blocks = splash.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq, block_kv_dkv=bkv,
                               block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)
    with jax.ensure_compile_time_eval():  # concrete mask tables, also when first built inside a trace
        return splash.make_splash_mha(masks.MultiHeadMask([head_mask] * heads), block_sizes=blocks,
                                      head_shards=1, q_seq_shards=1)


def _batch_mesh_axes(mesh, batch: int) -> tuple[str, ...]:
    """The mesh axes the batch dimension of an activation is split over: the logical rule
    ``activation_batch`` (every mesh axis when no rules are set), cut to the longest prefix whose
    size divides ``batch``."""
    rules = dict(nn.get_logical_axis_rules())
    axes = rules.get(ACTIVATION_BATCH) if rules else tuple(mesh.axis_names)
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes = tuple(a for a in axes if a in mesh.axis_names)
    while axes and batch % math.prod(mesh.shape[a] for a in axes):
        axes = axes[:-1]
    return axes


def _pallas(q, k, v, scale):
    """Splash attention: q (b, lq, h, d), k, v (b, lk, h, d); lq, lk multiples of ``PALLAS_TILE``."""
    b, lq, heads, _ = q.shape
    lk = k.shape[1]

    def run(q, k, v):  # one device's share of the batch
        n = q.shape[0]
        kernel = _splash_kernel(n * heads, lq, lk)
        q = (q.astype(jnp.float32) * scale).astype(q.dtype)  # the kernel applies no scale
        fold = lambda t: jnp.swapaxes(t, 1, 2).reshape((n * heads,) + t.shape[1:2] + t.shape[3:])  # noqa: E731
        out = kernel(fold(q), fold(k), fold(v))  # (n * h, lq, d)
        return jnp.swapaxes(out.reshape(n, heads, lq, out.shape[-1]), 1, 2)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return run(q, k, v)
    spec = P(_batch_mesh_axes(mesh, b) or None)
    return jax.shard_map(run, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, bias: jax.Array | None = None,
                          scale: float | None = None, backend: str = "auto") -> jax.Array:
    """Multi-head attention core. q: (b, lq, h, d); k, v: (b, lk, h, d) -> (b, lq, h, d).

    ``bias`` (broadcastable to (b, h, lq, lk)) is added to the logits; ``scale`` defaults to
    1/sqrt(d). Softmax is computed in float32 by every backend. ``backend``: see the module
    docstring ("auto" is resolved for ``target_platform()`` when traced).
    """
    name, block = parse_backend(backend)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if name == "auto":
        name = resolve_backend(name, target_platform(), q.dtype)
        if name == "pallas" and jax.sharding.get_abstract_mesh().empty and jax.device_count() != 1:
            name = "xla"  # a multi-device program without a mesh: the kernel could not be partitioned
    if name == "naive":
        return _naive(q, k, v, bias, scale)
    if name == "chunked":
        return _chunked(q, k, v, bias, scale, block)
    if name in FUSED_BACKENDS and fused_supported(name, q.shape, k.shape, q.dtype, has_bias=bias is not None):
        if name == "pallas":
            return _pallas(q, k, v, scale)
        return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")
    return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale, implementation="xla")
