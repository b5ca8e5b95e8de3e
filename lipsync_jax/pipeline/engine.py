"""The inference engine: weights placed and programs compiled once, then any number of jobs.

    engine = LipsyncEngine(models, RunOptions(chunk_batch=2, max_vram_gb=8))
    result = engine.run(SyncJob("in.mp4", "speech.wav", "out.mp4", seed=1), Sampling(steps=20))

- Placement (``RunOptions``): a ``(data, fsdp)`` mesh of the local devices (the first
  ``devices`` of them; pipeline/placement.py). Chunk batches are split over ``data``; the weights
  are replicated (fsdp 1), or split over ``fsdp`` devices when ``fsdp`` asks for it or, left None,
  when they do not fit the per-device budget (``max_vram_gb``, else the device's own memory limit
  when the backend reports one). With ``max_vram_gb`` the memory planner (pipeline/memory.py)
  picks chunk batch, VAE slices, attention backend and Whisper's place before any weights are
  placed; ``memory_plan`` says what it chose.
- Programs: one compiled ``ChunkProgram`` per sampling setting (steps, guidance, solver, DeepCache,
  overlap), owned by the engine: jobs with the same setting reuse it (the seed's start noise, the
  VAE keys and an avatar's cached VAE moments are program inputs); at most ``max_programs`` are
  kept (the least recently used is dropped: a shared server cannot be made to hold unbounded
  compiled programs; the persistent compile cache reloads a dropped one quickly). Overlapping windows
  run on one device: on a multi-device engine their program is compiled for the first device and
  uses that device's copy of the replicated weights (no second copy; not with fsdp > 1).
- ``engine.run(job, sampling, ...)``: one video + audio -> output file, streamed
  (pipeline/job_runner.py): decode + face pass, device program per batch of ``engine.batch`` chunks,
  restore + H.264 encode, overlapped in threads with bounded queues.
- ``engine.landmarkers``: warm face backends lent to the jobs' face passes (closed by ``close``).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from lipsync_jax.models import unet3d
from lipsync_jax.pipeline.face_choice import LandmarkerPool
from lipsync_jax.pipeline.job import InferenceResult, OptionError, RunOptions, Sampling, SyncJob
from lipsync_jax.pipeline.job_runner import JobHooks, run_job
from lipsync_jax.pipeline.memory import (
    FootprintSource,
    MemoryBudgetError,
    MemoryPlan,
    move_whisper_to_host,
    plan_memory,
    with_attention_backend,
)
from lipsync_jax.pipeline.models import LipsyncModels
from lipsync_jax.pipeline.placement import (
    DATA_AXIS,
    FSDP_AXIS,
    axis_size,
    choose_fsdp,
    default_chunk_batch,
    device_memory_bytes,
    engine_mesh,
    fsdp_choices,
    place_weights,
    sharded_weight_bytes,
    weight_bytes,
)
from lipsync_jax.pipeline.program import ChunkProgram, start_noise
from lipsync_jax.pipeline.timing import StageTimer


def check_runs_here(run: RunOptions) -> None:
    """``OptionError`` for options that only plan (``--plan_only``, ``--plan_for``: serving/plan.py
    prints the plan): nothing is built or run with them."""
    if run.plans_only:
        what = f"plan_for {run.plan_for}" if run.plan_for else "plan_only"
        raise OptionError(f"{what}: the memory plan is printed (serving.plan.print_plan); nothing runs with it")


def fit_memory(models: LipsyncModels, run: RunOptions, sampling: Sampling, *, device_count: int, fsdp: int,
               chunk_batch: int, device=None, footprints: FootprintSource | None = None,
               whisper_windows: int | None = None, log: Callable[[str], None] | None = None
               ) -> tuple[MemoryPlan, int]:
    """(memory plan within ``run.max_vram_gb``, fsdp) for ``device_count`` devices: the planner with
    the weights' fsdp share taken off; an automatic fsdp (``run.fsdp`` None) grows from ``fsdp``
    over the divisors of the device count until a plan fits; the last one's error otherwise.
    ``footprints``: where the footprints come from (default: ``device``'s own compile);
    ``whisper_windows``: Whisper's windows per call (default: an offline job's batch)."""
    choices = [fsdp] if run.fsdp is not None else [d for d in fsdp_choices(device_count) if d >= fsdp]
    for i, size in enumerate(choices):
        saved = weight_bytes(models) - sharded_weight_bytes(models, size, device_count)  # not held per device
        try:
            plan = plan_memory(models, run.max_vram_gb, chunk_batch=chunk_batch, num_steps=sampling.steps,
                               guidance_scale=sampling.guidance, sampler_options=sampling.sampler_options(),
                               device=device, queue_batches=run.queue_batches, weight_bytes_saved=saved,
                               footprints=footprints, whisper_windows=whisper_windows, log=log)
            return plan, size
        except MemoryBudgetError:
            if i == len(choices) - 1:
                raise
    raise AssertionError("unreachable: fsdp_choices is never empty")


class LipsyncEngine:
    def __init__(self, models: LipsyncModels, run: RunOptions | None = None, *,
                 sampling: Sampling | None = None, log: Callable[[str], None] | None = None, max_programs: int = 8):
        """``sampling``: the setting the memory plan is made for (default: LatentSync's loop)."""
        self.max_programs = int(max_programs)
        self.run_options = run = run or RunOptions()
        check_runs_here(run)
        self.models = models
        self.log = log
        local = jax.local_devices()
        if run.devices is not None and run.devices > len(local):
            raise OptionError(f"devices {run.devices}: only {len(local)} local device(s) are available")
        self.devices = local[:run.devices] if run.devices else local
        self.chunk_batch = int(run.chunk_batch or default_chunk_batch(self.devices[0].platform))
        self.vae_frames = run.vae_frames
        self.memory_plan: MemoryPlan | None = None
        self._logical = None  # the UNet's logical axis names (traced once, for fsdp placement)
        self.fsdp = self._initial_fsdp(models)
        self.mesh = engine_mesh(self.devices, self.fsdp)
        if run.max_vram_gb is not None:  # before any weights are placed
            self.models = models = self._fit_memory(models, sampling or Sampling())
        self.unet_params, self.vae_params = place_weights(models, self.mesh, logical=self._logical_axes())
        self.landmarkers = LandmarkerPool()
        self._programs: dict[tuple, Any] = {}
        self._one_device: tuple[Mesh, Any, Any] | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ placement and memory
    def _logical_axes(self):
        if self.fsdp > 1 and self._logical is None:
            self._logical = unet3d.logical_axes(self.models.unet_apply.module)
        return self._logical

    def _initial_fsdp(self, models: LipsyncModels) -> int:
        """``run.fsdp`` (checked against the devices by ``engine_mesh``); else 1 with a ``max_vram_gb``
        budget (``_fit_memory`` grows it) and otherwise the smallest fsdp whose weight share fits the
        device's memory when the backend reports it (``placement.choose_fsdp``)."""
        n = len(self.devices)
        if self.run_options.fsdp is not None:
            return int(self.run_options.fsdp)
        if n == 1 or self.run_options.max_vram_gb is not None:
            return 1
        return choose_fsdp(models, device_memory_bytes(self.devices[0]), n)

    def _fit_memory(self, models: LipsyncModels, sampling: Sampling) -> LipsyncModels:
        """The memory plan (``fit_memory``) applied: mesh, chunk batch, VAE slices, Whisper's place."""
        plan, fsdp = fit_memory(models, self.run_options, sampling, device_count=len(self.devices), fsdp=self.fsdp,
                                chunk_batch=self.chunk_batch, device=self.devices[0])
        if fsdp != self.fsdp:
            self.fsdp, self.mesh = fsdp, engine_mesh(self.devices, fsdp)
        self.memory_plan, self.chunk_batch, self.vae_frames = plan, plan.chunk_batch, plan.vae_frames
        if self.log is not None:
            self.log(plan.describe() + (f", fsdp {fsdp}" if fsdp > 1 else ""))
        if plan.whisper_on_host:
            move_whisper_to_host(models)
        return with_attention_backend(models, plan.attention_backend)

    def set_unet_params(self, unet_params: Any) -> None:
        """New UNet weights of the same shapes (e.g. training's periodic validation): placed like the
        old ones; the compiled programs stay valid."""
        self.models = dataclasses.replace(self.models, unet_params=unet_params)
        self.unet_params, _ = place_weights(self.models, self.mesh, logical=self._logical_axes())
        self._one_device = None

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

    @property
    def restore_threads(self) -> int:
        if self.run_options.restore_threads:
            return int(self.run_options.restore_threads)
        return max(1, min(8, (os.cpu_count() or 2) // 2))

    def describe(self) -> str:
        """One line: devices, mesh, chunk batch, memory plan."""
        platform = self.devices[0].platform
        mesh = f"{self.data_shards} x fsdp {self.fsdp}" if self.fsdp > 1 else f"{self.num_devices}"
        plan = f"; {self.memory_plan.describe()}" if self.memory_plan is not None else ""
        return f"engine: {mesh} {platform} device(s), chunk_batch {self.chunk_batch}{plan}"

    # ------------------------------------------------------------------ programs
    def _one_device_weights(self) -> tuple[Mesh, Any, Any]:
        """(one-device mesh, UNet, VAE weights) for programs that run on the first device."""
        if self.mesh.size == 1:
            return self.mesh, self.unet_params, self.vae_params
        if axis_size(self.mesh, FSDP_AXIS) > 1:
            raise OptionError(f"overlapping windows run on one device: not with fsdp {self.fsdp}")
        if self._one_device is None:
            device = self.devices[0]
            local = lambda x: next(s.data for s in x.addressable_shards if s.device == device)  # noqa: E731
            self._one_device = (engine_mesh([device], 1), jax.tree.map(local, self.unet_params),
                                jax.tree.map(local, self.vae_params))
        return self._one_device

    def program(self, sampling: Sampling) -> ChunkProgram:
        """The (lazily compiled) device program for this sampling setting, shared by all jobs."""
        key = sampling.program_key
        with self._lock:
            if key in self._programs:
                self._programs[key] = self._programs.pop(key)  # most recently used last
                return self._programs[key]
            mesh = self._one_device_weights()[0] if sampling.overlap else self.mesh
            program = self._programs[key] = ChunkProgram(
                self.models, mesh, num_steps=sampling.steps, guidance_scale=sampling.guidance,
                chunks_per_device=self.chunk_batch, sampler_options=sampling.sampler_options(),
                vae_frames=self.vae_frames, overlap=sampling.overlap)
            while len(self._programs) > self.max_programs:
                self._programs.pop(next(iter(self._programs)))
            return program

    def has_program(self, sampling: Sampling) -> bool:
        """Whether this setting's program is compiled already (else the next job compiles it)."""
        program = self._programs.get(sampling.program_key)
        return program is not None and program.compiled

    def weights_for(self, program) -> tuple[Any, Any]:
        """(UNet, VAE) weights placed for ``program``'s mesh."""
        if program.mesh is self.mesh:
            return self.unet_params, self.vae_params
        _, unet, vae = self._one_device_weights()
        return unet, vae

    def compile(self, sampling: Sampling) -> ChunkProgram:
        """Compile (or load from the persistent cache) the program now, e.g. at server start."""
        program = self.program(sampling)
        program.compile(*self.weights_for(program))
        return program

    def generate(self, faces: np.ndarray, audio: np.ndarray, chunk_indices: np.ndarray, *, seed: int,
                 sampling: Sampling) -> jax.Array:
        """``engine.batch`` chunks: faces (B, f, R, R, 3) uint8, audio (B, f, T, D), chunk_indices (B,)
        -> generated faces (B, f, R, R, 3) float32 (a device array; not waited for)."""
        program = self.program(sampling)
        noise, key_data = start_noise(self.models, seed)
        return program(*self.weights_for(program), faces, audio, chunk_indices, noise, key_data)

    # ------------------------------------------------------------------ jobs
    def run(self, job: SyncJob, sampling: Sampling | None = None, *, hooks: JobHooks = JobHooks(),
            progress: bool = False, checked=None, timer: StageTimer | None = None) -> InferenceResult:
        """Lip-sync ``job.video`` to ``job.audio`` into ``job.output`` (job_runner.py)."""
        return run_job(self, job, sampling or Sampling(), checked=checked, timer=timer, hooks=hooks,
                       progress=progress)

    def close(self) -> None:
        """Close the warm face backends (the weights go with the engine)."""
        self.landmarkers.close()
