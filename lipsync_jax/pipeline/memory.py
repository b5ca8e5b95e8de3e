"""Device-memory footprint of the inference program, and fitting it into a budget (``--max_vram``).

Where the numbers come from: XLA's COMPILED memory analysis of the actual chunk program
(``ChunkProgram``: VAE encode, the whole DDIM scan, VAE decode, paste-back), compiled from
abstract shapes (``jax.ShapeDtypeStruct``: no weights, no device memory) for the device the
engine will run on. ``Footprint`` holds its parts (arguments = weights + one call's inputs,
outputs, temporaries, generated code); it is not a calibrated formula. Compiling the full UNet
costs minutes on a CPU and tens of seconds on a GPU, so each estimate is cached in
``memory_estimates.json`` in the compile cache folder (``default_compile_cache_dir()``), keyed by
everything the program depends on (model configs, dtypes, parameter shapes, resolution, chunk
batch, VAE slice, attention backend, sampler settings, jax version and device kind).

The engine's whole-device estimate (``MemoryPlan.device_bytes``) adds to the program's total what
lives beside it: Whisper's encoder (unless moved to the host), its compiled footprint too (weights,
mels, output and working set: 1.01 GiB at 8 windows per call on a GPU, of which 0.03 GiB weights),
counted as live beside the chunk program (an upper bound for an offline job, which encodes the
audio before sampling; the live mode runs both at once), and the chunk batches queued between the
host stages (``queue_batches`` x one call's inputs + outputs).

Where the footprints come from is a ``FootprintSource``: by default the first local device's own
compile (``local_footprints``); for a named accelerator that is not here (``--plan_for``) XLA's
GPU/TPU compiler for it, ``lipsync_jax.aot.target_footprints``, which falls back to the CPU model
below when that compiler is not installed. ``MemoryPlan.describe()`` names the source.

``plan_memory(models, budget_gb, ...)`` picks, before any work, the fastest setting that fits:
the largest ``chunk_batch`` (from the default down to 1), then the largest VAE encode/decode
slice (frames per ``lax.map`` step, from the chunk's 16 down to 1), the attention backends in
order of preference ("auto": on GPU in bf16 cuDNN flash attention, whose memory is linear in the
tokens, else XLA; then "chunked": XLA over blocks of 1024 queries, the logits of one block at a
time), and, only when that is what makes it fit, Whisper
on the host (its weights and working set off the device: it runs once per job, before sampling). If nothing fits:
``MemoryBudgetError`` naming the budget and the smallest footprint.

Estimates on CPU model a device with native bfloat16 (``estimate="native_bf16"``, the default):
the CPU backend has no bf16 dot/convolution kernels, so it upcasts their operands to float32, and
by default its while-loop-invariant code motion hoists the float32 copies of ALL the UNet's weights
out of the DDIM ``lax.scan`` (4.7 GiB for v1.5, live for the whole loop) and its concurrency-
optimised scheduler runs the conversions early. A GPU (native bf16 GEMMs and convolutions) makes
none of these copies. So on CPU the estimate compiles the same program with
``CPU_NATIVE_BF16_OPTIONS`` (no loop-invariant code motion, memory-optimised scheduling): the
upcasts stay next to their dots, at most a layer's worth of float32 weights at a time (an upper
bound for the native device). ``estimate="raw"`` is the CPU backend's default compile (what a
CPU run really allocates). On a GPU both are the plain compile; a GPU run compiles and caches its
own. The program that runs is never changed by these options.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lipsync_jax.diffusion import ModuleApply
from lipsync_jax.models.attention import chunked_backend, fused_supported, parse_backend, resolve_backend
from lipsync_jax.pipeline.compile_cache import default_compile_cache_dir
from lipsync_jax.pipeline.errors import InferenceError
from lipsync_jax.pipeline.placement import default_chunk_batch
from lipsync_jax.pipeline.program import ChunkProgram, data_mesh

GB = 1024 ** 3
ESTIMATES_FILE = "memory_estimates.json"
ESTIMATE_MODES = ("native_bf16", "raw")
# XLA CPU options of the "native_bf16" estimate (module doc): the float32 upcasts of the bf16 weights
# stay inside the scan body, next to their dots, instead of all being hoisted out of the loop
CPU_NATIVE_BF16_OPTIONS = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion",
                           "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
_file_lock = threading.Lock()  # estimate writes of this process's threads (the file itself is replaced atomically)


class MemoryBudgetError(InferenceError, ValueError):
    """No setting of the program fits the memory budget."""


@dataclasses.dataclass(frozen=True)
class Footprint:
    """XLA's compiled memory analysis of one program (bytes, one device)."""

    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    code_bytes: int = 0
    alias_bytes: int = 0
    compile_seconds: float | None = None  # None: read from the estimate cache
    estimate: str = "raw"  # "raw": the backend's default compile; "native_bf16": see the module doc

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes + self.temp_bytes + self.code_bytes - self.alias_bytes

    def as_dict(self) -> dict:
        return {"argument_bytes": self.argument_bytes, "output_bytes": self.output_bytes,
                "temp_bytes": self.temp_bytes, "code_bytes": self.code_bytes, "alias_bytes": self.alias_bytes,
                "estimate": self.estimate}


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    chunk_batch: int  # chunks per device per program call
    vae_frames: int  # frames per VAE encode/decode step
    attention_backend: str  # the UNet's attention backend
    whisper_on_host: bool  # Whisper moved off the device (it runs before sampling)
    footprint: Footprint  # the chosen program's compiled analysis
    device_bytes: int  # the whole estimate: program + Whisper (if on device) + queued batches
    budget_bytes: int | None = None
    whisper_bytes: int = 0  # Whisper's compiled footprint (weights + working set), on the device or not
    source: str = ""  # how the footprints were made (``FootprintSource.label``)
    target: str | None = None  # the named accelerator planned for (None: a local device)

    def describe(self) -> str:
        """One line: the setting, the estimate, the budget and which estimate it is."""
        parts = [f"chunk_batch {self.chunk_batch}", f"VAE slices of {self.vae_frames} frames",
                 f"attention {self.attention_backend}"]
        if self.whisper_on_host:
            parts.append("Whisper on the host")
        budget = f" of {self.budget_bytes / GB:.2f} GB" if self.budget_bytes else " (no budget)"
        where = f" for {self.target}" if self.target else ""
        how = f" ({self.source})" if self.source else ""
        return f"memory plan{where}: {', '.join(parts)}: {self.device_bytes / GB:.2f} GB estimated{budget}{how}"


@dataclasses.dataclass(frozen=True)
class FootprintSource:
    """Where the planner's footprints come from. ``program(models, chunk_batch=, vae_frames=,
    attention_backend=, num_steps=, guidance_scale=, sampler_options=)`` and ``whisper(models,
    windows)`` return ``Footprint`` s for ONE device; ``platform``: the platform whose compile they
    are (it decides what attention "auto" is there, so which settings cannot fit, and the default
    chunk batch); ``label``: how they are made, in words; ``target``: the named accelerator
    (lipsync_jax/accelerators) they are for, None for a local device."""

    platform: str
    program: Callable[..., Footprint]
    whisper: Callable[[Any, int], Footprint]
    label: str
    target: str | None = None


def local_footprints(device=None, *, cache_dir: str | None = None, estimate: str = "native_bf16",
                     use_cache: bool = True) -> FootprintSource:
    """Footprints compiled for ``device`` (default: the first local one) on this host (module doc)."""
    device = device or jax.local_devices()[0]
    modelled = bool(estimate_compiler_options(device.platform, estimate))
    label = ("CPU compile modelling a native-bf16 device" if modelled else "CPU compile" if device.platform == "cpu"
             else f"XLA compile for this {device.platform} ({getattr(device, 'device_kind', '')})")
    kw = dict(device=device, cache_dir=cache_dir, use_cache=use_cache)
    return FootprintSource(  # the module's functions looked up at each call (tests put stand-ins there)
        platform=device.platform, label=label,
        program=lambda models, **settings: program_footprint(models, estimate=estimate, **kw, **settings),
        whisper=lambda models, windows: whisper_footprint(models, windows, **kw))


def tree_bytes(tree: Any) -> int:
    return int(sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def with_attention_backend(models, backend: str):
    """``models`` with the UNet's attention backend set to ``backend`` (same parameters)."""
    module = models.unet_apply.module
    if getattr(module, "attention_backend", backend) == backend:
        return models
    return dataclasses.replace(models, unet_apply=ModuleApply(module.clone(attention_backend=backend)))


# ------------------------------------------------------------------------------------ footprints
def _estimate_key(models, device, **settings) -> str:
    signature = lambda tree: [(tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(tree)]  # noqa: E731
    module = models.unet_apply.module
    parts = {
        "unet": repr(getattr(module, "config", module)),
        "unet_dtype": str(jnp.dtype(getattr(module, "dtype", "float32"))),
        "vae": repr(models.vae.config), "vae_dtype": str(jnp.dtype(models.vae.dtype)),
        "audio": repr(models.audio.config), "resolution": models.resolution, "frames": models.num_frames,
        "feat": list(models.audio_feat_length), "unet_params": signature(models.unet_params),
        "vae_params": signature(models.vae_params), "jax": jax.__version__, "platform": device.platform,
        "device_kind": getattr(device, "device_kind", ""),
        **{k: (sorted((str(a), str(b)) for a, b in v.items()) if isinstance(v, Mapping) else v)
           for k, v in settings.items()}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def program_inputs(models, chunk_batch: int) -> list:
    """The chunk program's inputs ``[name, shape, dtype]`` for ``chunk_batch`` chunks on one device:
    part of every estimate's key (a program that takes another input is another program)."""
    cpu = jax.local_devices(backend="cpu")[:1]  # only the shapes are read: any device will do
    program = ChunkProgram(models, data_mesh(cpu), num_steps=1, guidance_scale=1.0, chunks_per_device=chunk_batch)
    return sorted([name, list(shape), np.dtype(dtype).name] for name, (shape, dtype) in program.input_shapes().items())


def _read_estimates(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write_estimate(path: str, key: str, value: dict) -> None:
    with _file_lock:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            table = _read_estimates(path)
            table[key] = value
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(table, f, indent=0, sort_keys=True)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache folder: estimate again next time


def estimates_path(cache_dir: str | None = None) -> str:
    """``cache_dir``, else JAX's persistent compile cache folder (``enable_compile_cache``), else the default one."""
    folder = cache_dir or jax.config.jax_compilation_cache_dir or default_compile_cache_dir()
    return os.path.join(os.path.expanduser(folder), ESTIMATES_FILE)


def estimate_compiler_options(platform: str, estimate: str = "native_bf16") -> dict:
    """XLA compiler options of an estimate (module doc): ``CPU_NATIVE_BF16_OPTIONS`` for a
    "native_bf16" estimate on CPU, else none (the plain compile)."""
    if estimate not in ESTIMATE_MODES:
        raise ValueError(f"unknown estimate {estimate!r}; choose from {ESTIMATE_MODES}")
    return dict(CPU_NATIVE_BF16_OPTIONS) if (estimate == "native_bf16" and platform == "cpu") else {}


def program_footprint(models, *, chunk_batch: int, vae_frames: int | None = None, attention_backend: str = "auto",
                      num_steps: int = 20, guidance_scale: float = 1.5,
                      sampler_options: Mapping[str, Any] | None = None, device=None,
                      cache_dir: str | None = None, use_cache: bool = True, estimate: str = "native_bf16") -> Footprint:
    """XLA's compiled memory analysis of the chunk program for ONE device (``device``, default the
    first local one) with these settings. ``models``' parameters may be arrays or
    ``ShapeDtypeStruct``s (``abstract_models``); cached in ``estimates_path(cache_dir)``.
    ``estimate``: "native_bf16" (on CPU: modelled native-bf16 device, module doc) or "raw"."""
    device = device or jax.local_devices()[0]
    vae_frames = int(vae_frames or models.num_frames)
    models = with_attention_backend(models, attention_backend)
    sampler_options = dict(sampler_options or {})
    options = estimate_compiler_options(device.platform, estimate)
    mode = "native_bf16" if options else "raw"
    extra = {"compiler_options": options} if options else {}  # raw: the keys of earlier (raw) estimates
    key = _estimate_key(models, device, chunk_batch=int(chunk_batch), vae_frames=vae_frames,
                        attention=attention_backend, num_steps=int(num_steps), cfg=float(guidance_scale) > 1.0,
                        sampler=sampler_options, inputs=program_inputs(models, int(chunk_batch)), **extra)
    path = estimates_path(cache_dir)
    if use_cache:
        cached = _read_estimates(path).get(key)
        if cached:
            return Footprint(**{"estimate": mode, **cached})
    program = ChunkProgram(models, data_mesh([device]), num_steps=num_steps, guidance_scale=guidance_scale,
                           chunks_per_device=chunk_batch, sampler_options=sampler_options, vae_frames=vae_frames)
    footprint = _compiled_footprint(program.lower(models.unet_params, models.vae_params), options, mode)
    if use_cache:
        _write_estimate(path, key, footprint.as_dict())
    return footprint


def _compiled_footprint(lowered, options: dict, estimate: str) -> Footprint:
    begin = time.perf_counter()
    stats = (lowered.compile(compiler_options=options) if options else lowered.compile()).memory_analysis()
    return Footprint(argument_bytes=int(stats.argument_size_in_bytes), output_bytes=int(stats.output_size_in_bytes),
                     temp_bytes=int(stats.temp_size_in_bytes),
                     code_bytes=int(getattr(stats, "generated_code_size_in_bytes", 0) or 0),
                     alias_bytes=int(getattr(stats, "alias_size_in_bytes", 0) or 0),
                     compile_seconds=time.perf_counter() - begin, estimate=estimate)


def whisper_footprint(models, windows: int, *, device=None, cache_dir: str | None = None,
                      use_cache: bool = True) -> Footprint:
    """XLA's compiled memory analysis of the Whisper encoder over ``windows`` 30 s mel windows per
    call on ONE device (``device``, default the first local one): arguments = its weights + the
    mels, temporaries = its working set. Float32, so a CPU compile needs no modelling. Cached with
    the chunk-program estimates."""
    device = device or jax.local_devices()[0]
    audio = models.audio
    windows = int(windows)
    key = hashlib.sha256(json.dumps({"kind": "whisper", "audio": repr(audio.config), "dtype": str(audio.model.dtype),
                                     "windows": windows, "jax": jax.__version__, "platform": device.platform,
                                     "device_kind": getattr(device, "device_kind", "")},
                                    sort_keys=True).encode()).hexdigest()[:24]
    path = estimates_path(cache_dir)
    if use_cache:
        cached = _read_estimates(path).get(key)
        if cached:
            return Footprint(**cached)
    on_device = jax.sharding.SingleDeviceSharding(device)
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on_device), audio.params)
    mels = jax.ShapeDtypeStruct((windows, audio.config.n_frames, audio.config.n_mels), jnp.float32, sharding=on_device)
    lowered = jax.jit(lambda p, mel: audio.model.apply({"params": p}, mel)[0]).lower(params, mels)
    footprint = _compiled_footprint(lowered, {}, "raw")
    if use_cache:
        _write_estimate(path, key, footprint.as_dict())
    return footprint


def queued_bytes(models, chunk_batch: int, queue_batches: int) -> int:
    """Device bytes of the batches queued beside the running one: inputs (uint8 faces, float32
    audio windows) and float32 outputs of ``queue_batches`` program calls."""
    f, res = models.num_frames, models.resolution
    rows = 2 * (models.audio_feat_length[0] + models.audio_feat_length[1] + 1)
    audio = f * rows * (models.audio.config.n_audio_layer + 1) * models.audio.config.n_audio_state * 4
    per_chunk = f * res * res * 3 * (1 + 4) + audio
    return int(queue_batches * chunk_batch * per_chunk)


def vae_slice_candidates(num_frames: int) -> list[int]:
    """Frames per VAE step, largest first: num_frames, then halving down to 1."""
    sizes, n = [], int(num_frames)
    while n >= 1:
        sizes.append(n)
        n //= 2
    return sizes


QUERY_BLOCKS = (1024, 256)  # query blocks of the "chunked" backends the planner tries, largest first


def attention_candidates(platform: str, dtype: Any, tokens: int | None = None) -> list[str]:
    """UNet attention backends in order of preference: "auto", then XLA attention over blocks of
    ``QUERY_BLOCKS`` queries, each only when the longest attention (``tokens`` = latent positions per
    frame) splits into more than one block (else it is plain XLA): at 256 px (1024 tokens)
    "chunked:256", at 512 px (4096) "chunked" (1024) and "chunked:256"."""
    # auto = the platform's fused kernel where it applies (memory linear in the tokens), else XLA
    # whose float32 logits (b*f x heads x tokens^2) are the largest buffer; chunked:N holds those of
    # N queries at a time (models/attention.py): less memory, a bit slower
    blocks = [b for b in QUERY_BLOCKS if tokens is None or (tokens > b and tokens % b == 0)]
    return ["auto"] + [chunked_backend(b) for b in blocks]


def attention_logits_bytes(models, chunk_batch: int, backend: str, *, guidance_scale: float = 1.5,
                           platform: str = "cpu") -> int:
    """A LOWER bound of the program's temporaries, computed without compiling: the float32 logits
    one XLA self-attention call holds at once in the UNet's largest attention (CFG batch x frames x
    heads x queries per block x tokens x 4 bytes; 1 GiB at 256 px, 16 GiB at 512 px for one chunk
    with CFG). A level whose self-attention runs in a fused kernel (cuDNN on GPU in half precision,
    Pallas on TPU: models/attention.py's ``fused_supported``) holds no logits. The planner skips
    compiling settings whose weights + this bound already exceed the budget."""
    name, block = parse_backend(backend)
    config = getattr(models.unet_apply.module, "config", None)
    if config is None:
        return 0
    kernel = resolve_backend(name, platform, models.dtype)
    batch = (2 if float(guidance_scale) > 1.0 else 1) * int(chunk_batch) * models.num_frames
    largest = 0
    for i, kind in enumerate(config.down_block_types):
        if "CrossAttn" in kind:
            tokens = (models.latent_size // 2 ** i) ** 2
            heads = int(config.attention_head_dim[i])
            shape = (batch, tokens, heads, int(config.block_out_channels[i]) // heads)
            if fused_supported(kernel, shape, shape, models.dtype):
                continue
            queries = min(tokens, block) if (block and tokens > block and tokens % block == 0) else tokens
            largest = max(largest, heads * queries * tokens)
    return batch * largest * 4


def plan_memory(models, budget_gb: float | None, *, chunk_batch: int | None = None, num_steps: int = 20,
                guidance_scale: float = 1.5, sampler_options: Mapping[str, Any] | None = None, device=None,
                queue_batches: int = 2, cache_dir: str | None = None,
                chunk_batches: Sequence[int] | None = None, log=None, estimate: str = "native_bf16",
                weight_bytes_saved: int = 0, footprints: FootprintSource | None = None,
                whisper_windows: int | None = None) -> MemoryPlan:
    """The fastest setting whose estimated device memory fits ``budget_gb`` (GiB; None: no limit, the
    default setting). ``chunk_batch``: the largest to try (default ``default_chunk_batch()`` of the
    footprints' platform); ``footprints``: where the footprints come from (default
    ``local_footprints(device, cache_dir=, estimate=)``: ``estimate`` is how CPU estimates are
    compiled, module doc); ``whisper_windows``: Whisper's windows per call (default its
    ``max_batch``, an offline job's; the live mode: 1); ``weight_bytes_saved``: bytes of the
    UNet/VAE weights each device does NOT hold (the engine's fsdp shards, pipeline/placement.py),
    taken off the one-device estimate."""
    source = footprints or local_footprints(device, cache_dir=cache_dir, estimate=estimate)
    platform = source.platform
    largest = int(chunk_batch or default_chunk_batch(platform))
    batches = list(chunk_batches or range(largest, 0, -1))
    whisper = 0
    if models.audio.params is not None:  # its weights, mels, output and working set
        whisper = source.whisper(models, int(whisper_windows or models.audio.max_batch)).total_bytes
    slices = vae_slice_candidates(models.num_frames)
    backends = attention_candidates(platform, models.dtype, models.latent_size ** 2)
    budget = None if budget_gb is None else int(float(budget_gb) * GB)
    kw = dict(num_steps=num_steps, guidance_scale=guidance_scale, sampler_options=sampler_options)
    smallest: tuple[int, MemoryPlan] | None = None

    weights = tree_bytes(models.unet_params) + tree_bytes(models.vae_params) - int(weight_bytes_saved)

    def hopeless(cb: int, backend: str) -> bool:  # certainly over budget: no need to compile it
        floor = weights + attention_logits_bytes(models, cb, backend, guidance_scale=guidance_scale,
                                                 platform=platform)
        if budget is not None and floor > budget:
            if log:
                log(f"skipped: chunk_batch {cb}, attention {backend}: weights + attention logits alone are "
                    f"{floor / GB:.2f} GB")
            return True
        return False

    def candidate(cb: int, frames: int, backend: str) -> MemoryPlan | None:
        nonlocal smallest
        fp = source.program(models, chunk_batch=cb, vae_frames=frames, attention_backend=backend, **kw)
        base = fp.total_bytes + queued_bytes(models, cb, queue_batches) - int(weight_bytes_saved)
        if log:
            log(f"estimate: chunk_batch {cb}, VAE slices of {frames}, attention {backend}: "
                f"{(base + whisper) / GB:.2f} GB")
        for on_host in (False, True):
            total = base + (0 if on_host else whisper)
            plan = MemoryPlan(cb, frames, backend, on_host, fp, total, budget, whisper_bytes=whisper,
                              source=source.label, target=source.target)
            if smallest is None or total < smallest[0]:
                smallest = (total, plan)
            if budget is None or total <= budget:
                return plan
        return None

    for cb in batches:
        for backend in backends:
            if hopeless(cb, backend):
                continue
            plan = candidate(cb, slices[0], backend)
            if plan is not None:
                return plan
            if len(slices) == 1 or candidate(cb, slices[-1], backend) is None:
                continue  # not even the smallest VAE slice fits this chunk batch
            lo, hi = 0, len(slices) - 1  # slices[hi] fits, slices[lo] does not: bisect
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if candidate(cb, slices[mid], backend) is not None:
                    hi = mid
                else:
                    lo = mid
            return candidate(cb, slices[hi], backend)
    if smallest is None:  # every setting skipped: compile the least hopeless one for the message
        candidate(batches[-1], slices[-1], backends[-1])
    assert smallest is not None
    least = smallest[1]
    where = f" for {source.target}" if source.target else ""
    raise MemoryBudgetError(
        f"--max_vram {budget_gb:g} GB is too small{where}: the smallest footprint of this model at "
        f"{models.resolution} px is {smallest[0] / GB:.2f} GB (chunk_batch {least.chunk_batch}, VAE slices of "
        f"{least.vae_frames} frames, attention {least.attention_backend}, Whisper on the host; "
        f"weights {least.footprint.argument_bytes / GB:.2f} GB)")


def move_whisper_to_host(models) -> None:
    """Whisper's weights to the host CPU (it then runs there: once per job, before sampling)."""
    cpu = jax.local_devices(backend="cpu")[0]
    models.audio.params = jax.device_put(models.audio.params, cpu)
