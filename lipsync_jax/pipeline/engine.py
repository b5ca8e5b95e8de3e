"""The inference engine: models loaded and programs compiled once, then any number of jobs.

    engine = LipsyncEngine(models, EngineOptions(chunk_batch=2))
    result = engine.run(InferenceJob(video_path, audio_path, output_path, seed=1, num_steps=20))

- ``LipsyncEngine(models, options=EngineOptions(), face_pass_factory=None)``:
  places the weights on a ``(data, fsdp)`` mesh of the local devices (``options.devices``;
  pipeline/placement.py): chunk batches are split over ``data``; the weights are replicated
  (fsdp 1), or split over ``fsdp`` devices when ``options.fsdp`` asks for it or, left None, when
  they do not fit the per-device budget (``max_vram_gb``, else the device's own memory limit when
  the backend reports one). It keeps one compiled ``ChunkProgram`` per (num_steps,
  guidance_scale): jobs with the same settings reuse it (per-job seed: the start noise and VAE
  keys are program inputs).
- ``engine.run(job, *, checked=None, timer=None) -> InferenceResult``: one video + audio ->
  output file, streamed (``pipeline/stream.py``): decode + face pass, device program per batch of
  ``engine.batch`` chunks, restore + H.264 encode, overlapped in threads with bounded queues.
- ``engine.program(num_steps, guidance_scale)`` / ``engine.generate(...)``: the per-chunk-batch
  device program for callers that bring their own faces (streaming, batch services).
- The face pass is one replaceable step: ``face_pass_factory(resolution, backend, source)``
  returns an object with ``__call__(frame) -> AlignedFace | None`` (per frame, in order),
  ``check_found()`` (raise ``NoFaceError`` if no frame had a face) and ``close()``. By default
  (None) each job's ``face`` / ``face_audio`` choose it (``pipeline/face_choice.py``): a
  detection pre-pass finds the face tracks, then the chosen person is followed (today's
  ``FaceTracker`` when the video has one face), or several people are generated as lanes of
  the same chunk batches. A custom factory gives one face per frame and ignores ``face`` (or
  returns None for the job's own).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any, Callable, Mapping, Protocol, Sequence

import jax
import numpy as np

from lipsync_jax.face import AlignedFace, FaceTracker
from lipsync_jax.pipeline.models import LipsyncModels
from lipsync_jax.pipeline.program import ChunkProgram, start_noise
from lipsync_jax.pipeline.placement import (DATA_AXIS, axis_size, choose_fsdp, device_memory_bytes, engine_mesh,
                                           fsdp_choices, place_weights, sharded_weight_bytes, weight_bytes)


class FacePass(Protocol):
    def __call__(self, frame: np.ndarray) -> AlignedFace | None: ...

    def check_found(self) -> None: ...

    def close(self) -> None: ...


FacePassFactory = Callable[[int, str, str], FacePass]


def default_face_pass(resolution: int, backend: str, source: str) -> FacePass:
    """LatentSync's single-face tracker (landmarks -> anchors -> smoothed similarity alignment)."""
    return FaceTracker(resolution, backend=backend, source=source)


def default_chunk_batch(backend: str | None = None) -> int:
    """Chunks per device per program call: 1 on CPU (no gain from batching there); 2 on GPU/TPU
    until the GPU suite (bench/gpu_suite.sh) has measured the best value."""
    backend = backend or jax.default_backend()
    return 1 if backend == "cpu" else 2


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    chunk_batch: int | None = None  # chunks per device per device-program call (None: default_chunk_batch())
    devices: Sequence[Any] | None = None  # default: all local devices
    sampler_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # extra sample_chunk kwargs
    restore_threads: int | None = None  # threads pasting faces into frames (None: half the CPUs, 1..8)
    queue_batches: int = 2  # chunk batches queued between host stages (memory bound)
    # device-memory budget in GiB (--max_vram): chunk_batch (at most the one above), VAE slices,
    # attention backend and Whisper's place are chosen to fit it (pipeline/memory.py); None: no limit
    max_vram_gb: float | None = None
    vae_frames: int | None = None  # frames per VAE encode/decode step (None: the chunk's 16, or the plan's)
    # devices the weights are split over (the mesh's fsdp axis; chunk batches go over data = devices / fsdp);
    # None: 1 (replicated) unless the weights do not fit the budget above or the device's memory
    fsdp: int | None = None


@dataclasses.dataclass(frozen=True)
class InferenceJob:
    """One lip-sync job. ``on_chunk(chunk_index, first_output_frame, faces)`` (optional) sees each
    generated chunk's faces ((k, R, R, 3) float32 in [-1, 1], k real frames) before restore
    (with several faces: once per face, in lane order)."""

    video_path: str
    audio_path: str
    output_path: str
    num_steps: int = 20
    guidance_scale: float = 1.5
    seed: int = 1247
    face_backend: str = "mediapipe"
    fps: float = 25.0
    max_seconds: float | None = None  # use only the first seconds of the audio (previews, tests)
    crf: int = 18
    preset: str = "medium"
    progress: bool = True
    on_chunk: Callable[[int, int, np.ndarray], None] | None = None
    # who to lip-sync (pipeline/face_choice.py): "largest" | "left" | "right" | track id (one person),
    # "all" | "ID,ID" (several, all to audio_path), None (no pre-pass: the plain single-face tracker)
    face: str | int | None = "largest"
    # {face choice: audio path}: each listed person their own audio (audio_path = the soundtrack)
    face_audio: Mapping[str, str] | None = None
    # frames shared by consecutive 16-frame windows (stride 16 - overlap; 0 = LatentSync's disjoint
    # chunks): one face only, on a one-device engine (program.py, stream.py)
    overlap: int = 0


@dataclasses.dataclass(frozen=True)
class InferenceResult:
    output_path: str
    num_frames: int  # frames written
    num_source_frames: int  # video frames read (at ``fps``)
    looped: bool  # the video was looped ping-pong to cover the audio
    frames_kept: int  # output frames written unchanged (no face found there)
    duration: float  # seconds of audio in the output
    time_to_first_frame: float | None = None  # seconds from the start of run() to the first frame encoded
    seconds: float | None = None  # wall time of run()
    chunk_batches: int = 0  # device-program calls
    store_bytes: int = 0  # bytes of the compressed frame store (ping-pong loops)
    face_tracks: tuple[int, ...] = ()  # face track ids lip-synced, in lane order (empty: no pre-pass ran)


class LipsyncEngine:
    def __init__(self, models: LipsyncModels, options: EngineOptions | None = None, *,
                 face_pass_factory: FacePassFactory | None = None):
        self.models = models
        self.options = options or EngineOptions()
        self.face_pass_factory = face_pass_factory  # None: chosen per job (job.face, job.face_audio)
        self.devices = list(jax.local_devices() if self.options.devices is None else self.options.devices)
        self.chunk_batch = int(self.options.chunk_batch or default_chunk_batch())
        if self.chunk_batch < 1:
            raise ValueError(f"chunk_batch must be >= 1, got {self.chunk_batch}")
        self.vae_frames = self.options.vae_frames
        self.memory_plan = None
        self.fsdp = self._initial_fsdp(models)
        self.mesh = engine_mesh(self.devices, self.fsdp)
        if self.options.max_vram_gb is not None:  # before any weights are placed (pipeline/memory.py)
            self.models = models = self._fit_memory(models)
        self.unet_params, self.vae_params = place_weights(models, self.mesh)
        self._programs: dict[tuple[int, float, int], ChunkProgram] = {}
        self._lock = threading.Lock()

    @property
    def restore_threads(self) -> int:
        if self.options.restore_threads:
            return int(self.options.restore_threads)
        return max(1, min(8, (os.cpu_count() or 2) // 2))

    def _initial_fsdp(self, models: LipsyncModels) -> int:
        """``options.fsdp`` (checked against the devices by ``engine_mesh``); else 1 with a
        ``max_vram_gb`` budget (``_fit_memory`` grows it) and otherwise the smallest fsdp whose weight
        share fits the device's memory when the backend reports it (``sharding.choose_fsdp``)."""
        n = len(self.devices)
        if self.options.fsdp is not None:
            return int(self.options.fsdp)  # engine_mesh: one error unless it divides the device count
        if n == 1 or self.options.max_vram_gb is not None:
            return 1  # with a budget the memory plan grows it (_fit_memory)
        return choose_fsdp(models, device_memory_bytes(self.devices[0]), n)

    def _fit_memory(self, models: LipsyncModels) -> LipsyncModels:
        """The memory plan (pipeline/memory.py) with the weights' fsdp share: an automatic fsdp grows
        (divisors of the device count) until a plan fits; the last one's error otherwise."""
        from lipsync_jax.pipeline import memory

        n = len(self.devices)
        choices = [self.fsdp] if self.options.fsdp is not None else [d for d in fsdp_choices(n) if d >= self.fsdp]
        for i, fsdp in enumerate(choices):
            saved = weight_bytes(models) - sharded_weight_bytes(models, fsdp, n)  # not held per device
            try:
                plan = memory.plan_memory(models, self.options.max_vram_gb, chunk_batch=self.chunk_batch,
                                          sampler_options=self.options.sampler_options, device=self.devices[0],
                                          queue_batches=self.options.queue_batches,
                                          **({"weight_bytes_saved": saved} if saved else {}))
                break
            except memory.MemoryBudgetError:
                if i == len(choices) - 1:
                    raise
        if fsdp != self.fsdp:
            self.fsdp, self.mesh = fsdp, engine_mesh(self.devices, fsdp)
        self.memory_plan, self.chunk_batch, self.vae_frames = plan, plan.chunk_batch, plan.vae_frames
        if plan.whisper_on_host:
            memory.move_whisper_to_host(models)
        return memory.with_attention_backend(models, plan.attention_backend)

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    @property
    def data_shards(self) -> int:
        """Groups of devices that hold different chunks (the mesh's ``data`` axis: devices / fsdp)."""
        return axis_size(self.mesh, DATA_AXIS)

    @property
    def batch(self) -> int:
        """Chunks per device-program call (all devices; each fsdp group holds ``chunk_batch``)."""
        return self.chunk_batch * self.data_shards

    def program(self, num_steps: int, guidance_scale: float, overlap: int = 0) -> ChunkProgram:
        """The (lazily compiled) device program for these sampler settings, shared by all jobs
        (``overlap`` > 0: consecutive windows, one device; see program.py)."""
        key = (int(num_steps), float(guidance_scale), int(overlap))
        with self._lock:
            if key not in self._programs:
                self._programs[key] = ChunkProgram(
                    self.models, self.mesh, num_steps=key[0], guidance_scale=key[1],
                    chunks_per_device=self.chunk_batch, sampler_options=self.options.sampler_options,
                    vae_frames=self.vae_frames, **({"overlap": key[2]} if key[2] else {}))
            return self._programs[key]

    def compile(self, num_steps: int, guidance_scale: float, overlap: int = 0) -> ChunkProgram:
        """Compile (or load from the persistent cache) the program now, e.g. at server start."""
        program = self.program(num_steps, guidance_scale, overlap)
        program.compile(self.unet_params, self.vae_params)
        return program

    def generate(self, faces: np.ndarray, audio: np.ndarray, chunk_indices: np.ndarray, *, seed: int,
                 num_steps: int, guidance_scale: float) -> jax.Array:
        """``engine.batch`` chunks: faces (B, f, R, R, 3) uint8, audio (B, f, T, D), chunk_indices (B,)
        -> generated faces (B, f, R, R, 3) float32 (a device array; not waited for)."""
        program = self.program(num_steps, guidance_scale)
        noise, key_data = start_noise(self.models, seed)
        return program(self.unet_params, self.vae_params, faces, audio, chunk_indices, noise, key_data)

    def run(self, job: InferenceJob, *, checked=None, timer=None) -> InferenceResult:
        """Lip-sync ``job.video_path`` to ``job.audio_path`` into ``job.output_path``."""
        from lipsync_jax.pipeline.stream import run_job

        return run_job(self, job, checked=checked, timer=timer)
