"""The ONE front door: models loaded once, one engine, jobs one at a time.

Plain ``infer.py``, ``infer.py --batch`` / ``--avatar_cache``, the batch CLI, the web app, Cog's
predictor and the live server all run through ``LipsyncService``:

    service = LipsyncService.from_config(config, unet_checkpoint=..., run=RunOptions(max_vram_gb=8))
    request = service.parse("in.mp4", "speech.wav", "out.mp4", {"steps": "20", "seed": "1"})
    result = service.run(request)

- The engine is built here, once, from the ``RunOptions`` (memory budget, fsdp, chunk batch,
  devices) and the config's default sampling (``JobDefaults``); ``describe()`` says what the
  memory planner chose (infer.py and the servers log it, the app's ``/stats`` returns it).
- ``parse`` turns an edge's raw values into a ``Request`` with the config's defaults
  (pipeline/job.py: one message per bad value, whatever the door) and applies the service's
  ``ServiceLimits`` (the web app bounds what a client can make it compile).
- ``run`` checks the inputs (outside the lock: bad files fail at once), then takes the lock: one
  device job at a time. With ``avatar_cache=DIR`` the face track of each video (and its faces' VAE
  moments) is stored on the first job and replayed by later jobs on the same video and settings,
  which skip landmarks, alignment and the VAE encoder (pipeline/avatar_cache.py, moments.py).
- ``monitor`` counts XLA compilations (a second request with the same settings compiles nothing).
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from lipsync_jax import config_utils
from lipsync_jax.distilled import student_scheduler
from lipsync_jax.pipeline.avatar_cache import AvatarCache, AvatarCacheMiss, CachedFacePass, RecordingFacePass
from lipsync_jax.pipeline.compile_cache import CompileMonitor, configure_compile_cache
from lipsync_jax.pipeline.engine import LipsyncEngine, check_runs_here
from lipsync_jax.pipeline.inputs import check_inputs
from lipsync_jax.pipeline.job import (
    InferenceResult,
    JobDefaults,
    OptionError,
    Request,
    RunOptions,
    Sampling,
    parse_float,
    parse_int,
    parse_request,
)
from lipsync_jax.pipeline.job_runner import JobHooks
from lipsync_jax.pipeline.models import LipsyncModels, build_models
from lipsync_jax.pipeline.moments import add_moments, track_moments, vae_fingerprint
from lipsync_jax.pipeline.placement import check_fsdp

RANDOM_WEIGHTS_WARNING = ("WARNING: random weights (--random_init): the UNet, VAE and Whisper are untrained; every "
                          "output video is meaningless (use it only for smoke tests and benchmarks).")


@dataclasses.dataclass(frozen=True)
class ServiceLimits:
    """What a request may ask of a shared server (None: no limit). Each distinct (steps, guidance,
    sampler) setting compiles a device program, so a server bounds them: ``steps`` and ``guidance``
    ranges, ``guidance_decimals``, the largest DeepCache interval and overlap; ``max_seconds``:
    longer audio is cut to it (said in the result)."""

    steps: tuple[int, int] | None = None
    guidance: tuple[float, float] | None = None
    guidance_decimals: int | None = None
    max_deepcache_interval: int | None = None
    max_overlap: int | None = None
    max_seconds: float | None = None

    def check(self, request: Request) -> Request:
        """``request`` within the limits (``OptionError`` naming the value and the limit), with
        ``max_seconds`` cut to the server's."""
        s = request.sampling
        if self.steps is not None:
            parse_int("steps", s.steps, low=self.steps[0], high=self.steps[1])
        if self.guidance is not None or self.guidance_decimals is not None:
            low, high = self.guidance or (None, None)
            parse_float("guidance", s.guidance, low=low, high=high, decimals=self.guidance_decimals)
        if self.max_deepcache_interval is not None:
            parse_int("deepcache_interval", s.deepcache_interval, low=0, high=self.max_deepcache_interval)
        if self.max_overlap is not None:
            parse_int("overlap", s.overlap, low=0, high=self.max_overlap)
        job = request.job
        if self.max_seconds is not None and (job.max_seconds is None or job.max_seconds > self.max_seconds):
            job = dataclasses.replace(job, max_seconds=self.max_seconds)
        return dataclasses.replace(request, job=job)


@dataclasses.dataclass(frozen=True)
class ServiceResult:
    request: Request
    result: InferenceResult
    seconds: float  # wall time, the wait for the device lock excluded
    avatar: str  # "off" | "hit" | "stored" | "not stored"
    compiles: int  # XLA compilations during this job

    @property
    def output_path(self) -> str:
        return self.result.output_path

    @property
    def num_frames(self) -> int:
        return self.result.num_frames

    def summary(self) -> str:
        """One line for logs and the web page."""
        r, s = self.result, self.request.sampling
        return (f"{r.num_frames} frames, {r.duration:.2f} s of audio, {self.seconds:.1f} s; "
                f"seed {self.request.job.seed}, "
                f"guidance {s.guidance:g}, {s.steps} steps ({s.solver}); compiled {self.compiles} programs; "
                f"avatar cache {self.avatar}")


def check_devices(run: RunOptions) -> None:
    """``run.devices`` / ``run.fsdp`` against the local devices (``OptionError`` / ``MeshError``)."""
    local = len(jax.local_devices())
    if run.devices is not None and run.devices > local:
        raise OptionError(f"devices {run.devices}: only {local} local device(s) are available")
    if run.fsdp is not None:
        check_fsdp(run.fsdp, run.devices or local)


def default_dtype(name: str | None) -> Any:
    """``RunOptions.dtype``, or bfloat16 on GPU/TPU and float32 on CPU."""
    return jnp.dtype(name or ("float32" if jax.default_backend() == "cpu" else "bfloat16"))


class LipsyncService:
    def __init__(self, models: LipsyncModels, defaults: JobDefaults, run: RunOptions | None = None, *,
                 avatar_cache: str | None = None, limits: ServiceLimits = ServiceLimits(),
                 log: Callable[[str], None] | None = None):
        self.monitor = CompileMonitor()
        self.defaults, self.limits = defaults, limits
        # a student UNet samples with its own LCMScheduler (its metadata's boundary condition and origin steps)
        models = dataclasses.replace(models, scheduler=student_scheduler(models.scheduler, defaults.student))
        self._warned: set[str] = set()
        self.run_options = run = run or RunOptions()
        if run.max_vram_gb is None and defaults.max_vram_gb is not None:
            self.run_options = run = dataclasses.replace(run, max_vram_gb=defaults.max_vram_gb)
        self.log = log
        if defaults.note:
            self.announce(defaults.sampling)
        self.engine = LipsyncEngine(models, run, sampling=defaults.sampling, log=log)
        self.avatar_cache = AvatarCache(avatar_cache) if avatar_cache else None
        self._vae_fingerprint: str | None = None
        self._lock = threading.Lock()
        self.jobs_done = 0

    @classmethod
    def from_config(cls, config, *, unet_checkpoint: str = "", vae_checkpoint: str = "", whisper_checkpoint: str = "",
                    random_init: bool = False, run: RunOptions | None = None, overrides=(), **kwargs) -> LipsyncService:
        """Models from ``config`` (a loaded config or a config file path, with ``overrides``) and the
        three checkpoints (or random weights); the compile cache set up first, as ``run`` says."""
        run = run or RunOptions()
        if isinstance(config, str):
            config = config_utils.load_config(config, overrides=list(overrides))
        check_runs_here(run)  # one line before the models are loaded
        check_devices(run)
        configure_compile_cache(run.compile_cache)
        defaults = JobDefaults.from_config(config, unet_checkpoint=unet_checkpoint, random_init=random_init)
        models = build_models(config, unet_checkpoint=unet_checkpoint, vae_checkpoint=vae_checkpoint,
                              whisper_checkpoint=whisper_checkpoint, dtype=default_dtype(run.dtype),
                              random_init=random_init, seed=defaults.seed)
        return cls(models, defaults, run, **kwargs)

    # ------------------------------------------------------------------ facts
    @property
    def models(self) -> LipsyncModels:
        return self.engine.models

    @property
    def random_weights(self) -> bool:
        return bool(self.models.random_init)

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def describe(self) -> str:
        """One line: where it runs and what the memory planner chose."""
        return self.engine.describe() + f", {self.models.dtype.name}"

    def stats(self) -> dict[str, Any]:
        compiles = self.monitor.snapshot()
        plan = self.engine.memory_plan
        return {"jobs_done": self.jobs_done, "busy": self.busy, "compiles": compiles["compiles"],
                "compile_seconds": round(compiles["compile_seconds"], 1), "engine": self.describe(),
                "memory_plan": None if plan is None else {
                    "chunk_batch": plan.chunk_batch, "vae_frames": plan.vae_frames,
                    "attention_backend": plan.attention_backend, "whisper_on_host": plan.whisper_on_host,
                    "estimated_gb": round(plan.device_bytes / 2 ** 30, 3), "estimate": plan.source,
                    "whisper_gb": round(plan.whisper_bytes / 2 ** 30, 3),
                    "budget_gb": None if plan.budget_bytes is None else round(plan.budget_bytes / 2 ** 30, 3)},
                "random_weights": self.random_weights,
                "avatar_cache": self.avatar_cache.root if self.avatar_cache else None}

    # ------------------------------------------------------------------ requests
    def parse(self, video: str, audio: str, output: str, values: Mapping[str, Any]) -> Request:
        """A ``Request`` from an edge's raw values (None / "" = the config's default), within limits."""
        return self.limits.check(parse_request(video, audio, output, values, self.defaults))

    def announce(self, sampling: Sampling) -> None:
        """Say once what the UNet checkpoint decided for ``sampling``: a student's settings (to
        ``log``) or scheduler lcm without a student (a warning on stderr)."""
        student = self.defaults.student is not None
        line = self.defaults.note if student else self.defaults.lcm_warning(sampling)
        if line is None or line in self._warned:
            return
        self._warned.add(line)
        if line.startswith("WARNING"):
            print(line, file=sys.stderr, flush=True)
        elif self.log is not None:
            self.log(line)

    def compile(self, sampling: Sampling | None = None) -> None:
        """Compile (or load from the persistent cache) a program now (server warm-up)."""
        self.engine.compile(sampling or self.defaults.sampling)

    def run(self, request: Request, *, progress: bool = False, on_chunk=None, on_progress=None,
            timer=None) -> ServiceResult:
        """Check, then lip-sync one request (waits for the device lock). Raises ``InputError``,
        ``OptionError`` and friends, each one line naming the file or value. ``on_progress(stage, done,
        total)``: the job's progress ("finding faces", "lip sync"; from worker threads)."""
        request = self.limits.check(request)
        self.announce(request.sampling)
        job = request.job
        checked = check_inputs(job.video, job.audio, job.output)  # outside the lock: bad files fail at once
        if self.avatar_cache is not None and job.several_faces:
            raise OptionError("the avatar cache keeps one face per video: not with face 'all' / face_audio")
        with self._lock:
            before = self.monitor.snapshot()["compiles"]
            begin = time.perf_counter()
            hooks = JobHooks(on_chunk=on_chunk, on_progress=on_progress)
            if self.jobs_done and self.log is not None and not self.engine.has_program(request.sampling):
                s = request.sampling
                self.log(f"new setting ({s.steps} steps, guidance {s.guidance:g}, {s.solver}"
                         + (f", DeepCache {s.deepcache_interval}" if s.deepcache_interval else "")
                         + (f", overlap {s.overlap}" if s.overlap else "") + "): compiling its device program")
            if self.avatar_cache is None:
                result, avatar = self.engine.run(job, request.sampling, hooks=hooks, progress=progress,
                                                 checked=checked, timer=timer), "off"
            else:
                result, avatar = self._run_with_avatar(request, checked, hooks, progress, timer)
            self.jobs_done += 1
            return ServiceResult(request=request, result=result, seconds=time.perf_counter() - begin, avatar=avatar,
                                 compiles=self.monitor.snapshot()["compiles"] - before)

    def vae_fingerprint(self) -> str:
        if self._vae_fingerprint is None:
            self._vae_fingerprint = vae_fingerprint(self.models)
        return self._vae_fingerprint

    def _run_with_avatar(self, request: Request, checked, hooks: JobHooks, progress: bool, timer):
        """Replay the video's cached face track (and VAE moments) when it covers the job, else run
        with the job's own face pass recorded into the cache."""
        job, sampling, models, cache = request.job, request.sampling, self.models, self.avatar_cache
        fps = float(models.fps)
        key = cache.key(job.video, resolution=models.resolution, fps=fps, backend=self.run_options.face_backend,
                        face=job.face)
        track = cache.load(key)
        total = checked.video.frame_count_at(fps)
        seconds = checked.audio_duration if job.max_seconds is None else min(checked.audio_duration, job.max_seconds)
        needed = min(total, int(round(seconds * fps)))  # a short guess raises AvatarCacheMiss
        if track is not None and track.covers(needed):
            moments = track_moments(models, track, self.vae_fingerprint())
            replay = dataclasses.replace(
                hooks, face_pass=lambda resolution, backend, source: CachedFacePass(track, source), moments=moments)
            try:
                result = self.engine.run(job, sampling, hooks=replay, progress=progress, checked=checked, timer=timer)
            except AvatarCacheMiss:
                pass
            else:
                if moments is None:  # an entry made by another VAE: add this one's moments
                    cache.store(key, add_moments(models, track))
                return result, "hit"
        recorders: list[RecordingFacePass] = []

        def record(face_pass):
            recorders.append(RecordingFacePass(face_pass, cache, key, expected_frames=total,
                                               on_store=lambda stored: add_moments(models, stored)))
            return recorders[-1]

        result = self.engine.run(job, sampling, hooks=dataclasses.replace(hooks, record_face_pass=record),
                                 progress=progress, checked=checked, timer=timer)
        return result, "stored" if recorders and recorders[-1].store() else "not stored"

    def close(self) -> None:
        self.engine.close()
        self.monitor.close()
